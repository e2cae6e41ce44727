"""Model specs -> livekit-agents components: each spec parsed by ``contract.models`` is built here, with a
fallback to the agent's default (and, in ``local`` only, the offline test model). A fallback chain's entries are
built alike and served by livekit-agents' ``FallbackAdapter`` of their kind.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from contract.metadata import ModelKind, chain_entries
from contract.models import (
    CHAIN_SEPARATOR,
    LOCAL_DEFAULTS,
    PROVIDERS,
    NormalizedSpec,
    SpecError,
    chain_label,
    constructor,
    is_offline,
    offline_refusal,
    parse_spec,
)


class SpecUnavailable(RuntimeError):
    """A known spec that cannot be built here (plugin not installed, credential missing, bad params)."""


def availability(norm: NormalizedSpec, env: Mapping[str, str] | None = None) -> str | None:
    """``None`` if this process can build ``norm``, else why not (plugin missing, credential missing)."""
    env = os.environ if env is None else env
    entry = PROVIDERS[norm.kind][norm.provider]
    if entry.offline:
        if norm.kind == "tts" and shutil.which("espeak-ng") is None:
            return "espeak-ng binary not found"
        return None
    try:
        found = importlib.util.find_spec(entry.module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        return f"plugin {entry.module} not installed (install {entry.package})"
    if entry.env and not any(env.get(k) for k in entry.env):
        return f"credential missing: set {' or '.join(entry.env)} in the worker's environment"
    return None


def build(norm: NormalizedSpec) -> Any:
    """Construct the livekit-agents component for ``norm``; raises ``SpecUnavailable``."""
    reason = availability(norm)
    if reason:
        raise SpecUnavailable(reason)
    entry = PROVIDERS[norm.kind][norm.provider]
    kwargs: dict[str, Any] = dict(norm.params)
    model = norm.model or entry.default_model
    if model and not entry.offline:
        kwargs[entry.model_param] = model
    variant_param = entry.variant_for(norm.kind)
    if norm.variant and variant_param:
        kwargs[variant_param] = norm.variant
    try:
        return constructor(entry)(**kwargs)
    except Exception as err:  # a bad parameter or a plugin error must never take the call down
        raise SpecUnavailable(f"{norm.label}: {type(err).__name__}: {str(err)[:200]}") from err


@dataclass(frozen=True)
class Resolved:
    """A built component and how it was chosen."""

    kind: ModelKind
    component: Any
    label: str  # label of the spec actually used (a chain's: the labels of the entries built, in order)
    requested: str | None  # label (or "invalid") of the spec asked for
    fallback_reason: str | None = None
    entries: tuple[tuple[str, Any], ...] = ()  # a chain: (label, component the FallbackAdapter holds) per entry


def _watched(norm: NormalizedSpec, component: Any, timeout: float) -> Any:
    """A provider's streaming STT in its watchdog (``worker.models.hearing.Hearing``: a stream that goes quiet while
    the caller speaks fails); anything else as built. A non-streaming STT's requests are bounded by their timeout, and
    the offline ``local/silent`` hears nothing by design."""
    if norm.kind != "stt" or PROVIDERS[norm.kind][norm.provider].offline or not component.capabilities.streaming:
        return component
    from worker.models.hearing import Hearing

    return Hearing(component, timeout)


def fallback_adapter(kind: ModelKind, components: list[Any], vad: Any, timeout: float) -> Any:
    """livekit-agents' ``FallbackAdapter`` of ``kind`` over ``components``, tried in order, each entry once for
    ``timeout`` seconds (``worker.models.bounds``; a TTS entry's comes from the session's options). A non-streaming
    STT is wrapped in ``stt.StreamAdapter`` with ``vad`` here (the adapter's own wrapping would hide which entry
    reports)."""
    if kind == "llm":
        from livekit.agents import llm

        return llm.FallbackAdapter(components, attempt_timeout=timeout, max_retry_per_llm=0)
    if kind == "stt":
        from livekit.agents import stt

        if any(not c.capabilities.streaming for c in components) and vad is None:
            raise SpecUnavailable("a non-streaming STT in a chain needs a VAD to stream")
        wrapped = [c if c.capabilities.streaming else stt.StreamAdapter(stt=c, vad=vad) for c in components]
        return stt.FallbackAdapter(wrapped, attempt_timeout=timeout, max_retry_per_stt=0)
    from worker.models.bounds import FirstAudioBound

    return FirstAudioBound(components, max_retry_per_tts=0)


def _chain(
    kind: ModelKind, built: list[tuple[str, Any]], vad: Any, timeout: float
) -> tuple[Any, tuple[tuple[str, Any], ...]]:
    """The component serving ``built`` entries: the one built (an LLM), or the kind's ``FallbackAdapter`` over them
    (an STT or a TTS always: ``worker.models.bounds`` says why); and the entries as the adapter holds them (a wrapped
    STT in its ``StreamAdapter``)."""
    if len(built) == 1 and kind == "llm":
        return built[0][1], tuple(built)
    adapter = fallback_adapter(kind, [c for _, c in built], vad, timeout)
    held = getattr(adapter, f"_{kind}_instances", [c for _, c in built])  # the instances its events name
    return adapter, tuple((label, c) for (label, _), c in zip(built, held, strict=True))


def resolve(
    kind: ModelKind, spec: object, default: object, *, offline: bool, timeout: float, vad: Any = None
) -> Resolved:
    """Build ``spec``; if it is unknown or unavailable, build ``default``. With ``offline`` (the ``local``
    environment), the offline test model is the last resort; without it, offline models are never built and
    ``SpecUnavailable`` says why nothing could be. ``fallback_reason`` says why a fallback happened (log it).

    A fallback chain (``spec`` or ``default`` a list) is built entry by entry; an entry that cannot be built is
    skipped (the reason says which and why); two or more built entries are served by the kind's ``FallbackAdapter``
    (``fallback_adapter``; ``vad`` streams a non-streaming STT, ``timeout`` bounds each attempt), one alone as
    itself (an STT or a TTS behind its adapter too); none: the next candidate."""
    reasons: list[str] = []
    requested: str | None = None
    candidates = [spec, default, LOCAL_DEFAULTS[kind] if offline else None]
    for candidate in candidates:
        if candidate is None:
            continue
        entries = chain_entries(candidate)  # type: ignore[arg-type]
        requested = requested or chain_label(kind, entries) or "invalid"
        built: list[tuple[str, Any]] = []
        for entry in entries:
            prefix = f"{kind} chain entry " if len(entries) > 1 else ""
            try:
                norm = parse_spec(kind, entry)
            except SpecError as err:
                reasons.append(f"{prefix}{err}")
                continue
            prefix += f"{norm.label}: " if prefix else ""
            if is_offline(norm) and not offline:
                reasons.append(prefix + offline_refusal(norm))
                continue
            try:
                built.append((norm.label, _watched(norm, build(norm), timeout)))
            except SpecUnavailable as err:
                reasons.append(prefix + str(err).removeprefix(f"{norm.label}: ") if prefix else str(err))
        if not built:
            continue
        try:
            component, held = _chain(kind, built, vad, timeout)
        except (SpecUnavailable, ValueError) as err:  # FallbackAdapter refused them together (channels, VAD)
            reasons.append(f"{kind} chain {CHAIN_SEPARATOR.join(label for label, _ in built)}: {err}")
            continue
        label = CHAIN_SEPARATOR.join(label for label, _ in built)
        return Resolved(kind, component, label, requested, "; ".join(reasons) or None, held)
    raise SpecUnavailable(f"no {kind} can be built: {'; '.join(reasons) or 'none is configured'}")


def watch_serving(resolved: Resolved, report: Callable[[str], None]) -> Callable[[], None]:
    """For a chain served by a ``FallbackAdapter``: each time the entry that serves changes (the adapter's
    ``<kind>_availability_changed`` event: the first entry it holds available serves), call ``report`` with that
    entry's label (``"none"`` when every entry is down: the adapter then retries them all, in order). Returns what
    stops watching; one component alone is not watched."""
    if len(resolved.entries) < 2:
        return lambda: None
    available = [True] * len(resolved.entries)
    serving = [resolved.entries[0][0]]

    def changed(ev: Any) -> None:
        for i, (_, component) in enumerate(resolved.entries):
            if component is getattr(ev, resolved.kind, None):
                available[i] = bool(ev.available)
        now = next((label for (label, _), up in zip(resolved.entries, available, strict=True) if up), "none")
        if now != serving[0]:
            serving[0] = now
            report(now)

    event = f"{resolved.kind}_availability_changed"
    resolved.component.on(event, changed)
    return lambda: resolved.component.off(event, changed)
