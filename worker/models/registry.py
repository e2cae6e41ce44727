"""Model specs -> livekit-agents components: each spec parsed by ``contract.models`` is built here, with a
fallback to the agent's default (and, in ``local`` only, the offline test model).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from contract.metadata import ModelKind
from contract.models import (
    LOCAL_DEFAULTS,
    PROVIDERS,
    NormalizedSpec,
    SpecError,
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
    label: str  # label of the spec actually used
    requested: str | None  # label (or "invalid") of the spec asked for
    fallback_reason: str | None = None


def resolve(kind: ModelKind, spec: object, default: object, *, offline: bool) -> Resolved:
    """Build ``spec``; if it is unknown or unavailable, build ``default``. With ``offline`` (the ``local``
    environment), the offline test model is the last resort; without it, offline models are never built and
    ``SpecUnavailable`` says why nothing could be. ``fallback_reason`` says why a fallback happened (log it)."""
    reasons: list[str] = []
    requested: str | None = None
    candidates = [spec, default, LOCAL_DEFAULTS[kind] if offline else None]
    for i, candidate in enumerate(candidates):
        if candidate is None:
            continue
        try:
            norm = parse_spec(kind, candidate)
        except SpecError as err:
            requested = requested or "invalid"
            reasons.append(str(err))
            continue
        requested = requested or norm.label
        if is_offline(norm) and not offline:
            reasons.append(offline_refusal(norm))
            continue
        try:
            component = build(norm)
        except SpecUnavailable as err:
            reasons.append(str(err))
            continue
        return Resolved(kind, component, norm.label, requested, "; ".join(reasons) if i and reasons else None)
    raise SpecUnavailable(f"no {kind} can be built: {'; '.join(reasons) or 'none is configured'}")
