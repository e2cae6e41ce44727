"""The merge rule: configuration layers, SIP participant facts, and the resolved per-call configuration.

Layers, lowest first:

1. **worker defaults**: the worker's environment (``contract.settings.WorkerSettings``), else ``BUILTIN_DEFAULTS``
   (its instructions; its offline models only in the ``local`` environment: elsewhere a worker must be given its
   models);
2. **route**: ``agent_config`` of the job metadata (the dispatch rule's agent metadata, or the outbound
   dispatch's metadata);
3. **call**: ``overrides`` of the job metadata, the layer the SIP participant's attributes select from the route's
   ``attribute_overrides`` (stack-declared layers), then the SIP participant's ``siphon.overrides`` attribute (JSON),
   the attribute winning.

Trust follows where a layer came from (README, "Trust"): the defaults and the route layer come from the stack file,
``overrides`` and ``attribute_overrides`` from the stack file or from code, all trusted. The ``siphon.overrides``
attribute is the caller's (a participant attribute; validate refuses mapping a SIP header to it, but whoever can set
a participant's attributes can write it): ``caller_layer`` drops every provider parameter that decides where traffic
or a key goes (``contract.models.ROUTING_PARAMS``), and every field the route's ``allowed_overrides`` does not allow
(default: all of them), each with a warning (``CALLER_DROP_CODES``) that the worker logs and counts.

Merge rule (``merge_layers``), per field of ``AgentConfig``, SIPHON's truthy-wins, whole values:

- a higher layer's value replaces the lower one only if it is *set*: ``None``/absent, ``""`` and
  whitespace-only strings are **not set** and inherit from below (SIPHON treats every falsy value so;
  an explicit empty instruction therefore cannot blank out a default);
- booleans (``send_greeting``) are set when not ``None``: an explicit ``false`` wins (the one way to switch
  a default off);
- model specs are replaced **whole**: a provider dict is not merged key by key with the layer below;
  parameters it leaves out take the plugin's defaults, not the lower layer's. A fallback chain
  (``contract.metadata.ModelChain``) is one value too: a higher layer's spec or chain replaces a lower layer's
  spec or chain whole, never entry by entry.

Direction, numbers and trunk come from the SIP participant's attributes when one is in the room
(``sip.phoneNumber``, ``sip.trunkPhoneNumber``, ``sip.trunkID``, ``sip.callStatus``), else from metadata.

``resolve_call`` applies it to one call: the worker answers with it and ``verify`` predicts the worker with it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from contract import turns
from contract.metadata import (
    INSTRUCTION_FIELDS,
    MODEL_KINDS,
    SCHEMA_VERSION,
    AgentConfig,
    AllowedOverrides,
    CallMetadata,
    Direction,
    MetadataWarning,
    ModelKind,
    ModelSpec,
    parse_agent_config,
)
from contract.models import (
    LOCAL_DEFAULTS,
    SpecError,
    chain_label,
    parse_spec,
    routing_params,
    without_routing_params,
)
from contract.wire import (
    OVERRIDES_ATTRIBUTE,
    SIP_ATTRIBUTE_PREFIX,
    SIP_CALL_ID,
    SIP_CALL_STATUS,
    SIP_PHONE_NUMBER,
    SIP_RULE_ID,
    SIP_TRUNK_ID,
    SIP_TRUNK_PHONE_NUMBER,
    siphon_attribute,
)

LayerName = Literal["default", "route", "call"]
CALLER_DROP_CODES = frozenset({"secret_param", "routing_param", "not_allowed"})
"""Warning codes of what ``caller_layer`` (and the lenient reader before it) drops from a caller-sourced layer."""

BUILTIN_DEFAULTS = AgentConfig.model_validate({
    **LOCAL_DEFAULTS,
    "system_instructions": "You are a helpful voice assistant on a phone call. Keep answers short.",
    "greeting_instructions": "Greet the caller and introduce yourself briefly.",
    "resume_message": "Sorry, the line dropped for a moment. Could you repeat what you just said?",
    "send_greeting": True,
})  # fmt: skip
"""What a worker uses for a field its environment leaves unset (the offline models only in ``local``)."""


def worker_defaults(layer: AgentConfig, *, offline: bool) -> AgentConfig:
    """The default layer a worker runs with when its environment sets ``layer`` (``defaults_env(layer)``):
    ``layer`` over ``BUILTIN_DEFAULTS``, by the merge rule; without ``offline`` (outside ``local``), a model kind
    ``layer`` leaves unset stays unset (the worker then refuses to start). ``verify`` predicts the worker with this."""
    builtin = BUILTIN_DEFAULTS if offline else BUILTIN_DEFAULTS.model_copy(update=dict.fromkeys(MODEL_KINDS))
    return merge_layers(("default", builtin), ("default", layer)).config


END_CALL_DEFAULT = True
"""Whether the agent has the end-call tool when no layer says (SIPHON's ``HANGUP_CALL`` default is true too)."""


def end_call_enabled(cfg: AgentConfig) -> bool:
    """Whether the merged configuration gives the agent the end-call tool."""
    return END_CALL_DEFAULT if cfg.end_call is None else cfg.end_call


def is_set(value: object) -> bool:
    """The merge rule's notion of a set value (see module docstring)."""
    if value is None:
        return False
    if isinstance(value, str):
        return bool(value.strip())
    return True


@dataclass(frozen=True)
class MergedConfig:
    """The merged configuration and which layer each field came from."""

    config: AgentConfig
    sources: dict[str, LayerName]


def merge_layers(*layers: tuple[LayerName, AgentConfig | None]) -> MergedConfig:
    """Merge configuration layers, lowest first, by the rule in the module docstring."""
    values: dict[str, object] = {}
    sources: dict[str, LayerName] = {}
    for name, layer in layers:
        if layer is None:
            continue
        for key in AgentConfig.model_fields:
            value = getattr(layer, key)
            if is_set(value):
                values[key], sources[key] = value, name
    return MergedConfig(AgentConfig.model_validate(values), sources)


def attribute_layer(
    overrides: Mapping[str, Mapping[str, AgentConfig]] | None, attributes: Mapping[str, str]
) -> AgentConfig | None:
    """The per-call layer the SIP participant's attributes select from a route's ``attribute_overrides``.

    Each attribute whose value has an entry contributes its layer, in the route's order (later wins).
    """
    chosen: list[tuple[LayerName, AgentConfig | None]] = [
        ("call", table[attributes[name]]) for name, table in (overrides or {}).items() if attributes.get(name) in table
    ]
    return merge_layers(*chosen).config if chosen else None


def _caller_value(
    kind: ModelKind,
    value: ModelSpec | list[ModelSpec],
    allowed: AllowedOverrides,
    where: str,
    warnings: list[MetadataWarning],
) -> ModelSpec | list[ModelSpec] | None:
    """What a caller-sourced model kind keeps: one spec as ``_caller_spec`` chooses it; a chain's entries each
    chosen so (at ``where.<i>``), those not allowed dropped, in order and once each; None when nothing is left."""
    if not isinstance(value, list):
        return _caller_spec(kind, value, allowed, where, warnings)
    kept: list[ModelSpec] = []
    for i, spec in enumerate(value):
        choice = _caller_spec(kind, spec, allowed, f"{where}.{i}", warnings, in_chain=True)
        if choice is not None and choice not in kept:
            kept.append(choice)
    return kept if len(kept) > 1 else (kept[0] if kept else None)


def _caller_spec(
    kind: ModelKind,
    spec: ModelSpec,
    allowed: AllowedOverrides,
    where: str,
    warnings: list[MetadataWarning],
    *,
    in_chain: bool = False,
) -> ModelSpec | None:
    """The spec a caller-sourced ``spec`` chooses among ``allowed`` (by label: the listed spec, whole), or None."""
    if dropped := routing_params(spec):
        warnings.append(MetadataWarning("routing_param", where, "dropped (caller-sourced): " + ", ".join(dropped)))
        spec = without_routing_params(spec)
    choices = allowed.specs(kind)
    try:
        label = parse_spec(kind, spec).label
    except SpecError:
        label = None
    for choice in choices:
        try:
            if label is not None and parse_spec(kind, choice).label == label:
                return choice
        except SpecError:
            continue
    listed = ", ".join(parse_spec(kind, c).label for c in choices if c is not None and _parses(kind, c))
    why = f"not among the route's allowed_overrides.{kind} ({listed})" if listed else (
        f"the route's allowed_overrides.{kind} lists nothing a caller may choose")  # fmt: skip
    then = "dropped from the caller's chain" if in_chain else f"the lower layers' {kind} applies"
    warnings.append(MetadataWarning("not_allowed", where, f"{why}; {then}"))
    return None


def _parses(kind: ModelKind, spec: object) -> bool:
    try:
        parse_spec(kind, spec)
    except SpecError:
        return False
    return True


def caller_layer(
    layer: AgentConfig, allowed: AllowedOverrides | None, *, path: str = OVERRIDES_ATTRIBUTE
) -> tuple[AgentConfig | None, tuple[MetadataWarning, ...]]:
    """What a caller-sourced ``layer`` may set: each model spec it names (each entry of a fallback chain alike) without
    its ``ROUTING_PARAMS``, and only when its label is one of ``allowed`` (the listed spec then applies, whole); its
    instructions only when ``allowed`` says so; nothing else. Whatever is dropped is warned about (codes in
    ``CALLER_DROP_CODES``, never the value)."""
    allowed = allowed or AllowedOverrides()
    warnings: list[MetadataWarning] = []
    kept: dict[str, object] = {}
    for name in AgentConfig.model_fields:
        value = getattr(layer, name)
        if not is_set(value):
            continue
        where = f"{path}.{name}"
        if name in MODEL_KINDS:
            kind: ModelKind = name  # type: ignore[assignment]
            if (choice := _caller_value(kind, value, allowed, where, warnings)) is not None:
                kept[name] = choice
        elif name in INSTRUCTION_FIELDS and allowed.instructions:
            kept[name] = value
        elif name in INSTRUCTION_FIELDS:
            warnings.append(MetadataWarning("not_allowed", where, "the route's allowed_overrides.instructions is off"))
        else:
            why = "a caller-sourced layer may set only llm, stt, tts and instructions"
            warnings.append(MetadataWarning("not_allowed", where, why))
    return (AgentConfig.model_validate(kept) if kept else None), tuple(warnings)


def is_caller_drop(warning: MetadataWarning) -> bool:
    """True for a parameter or field dropped from the caller-sourced layer."""
    return warning.code in CALLER_DROP_CODES and warning.field.startswith(OVERRIDES_ATTRIBUTE)


def caller_drops(warnings: Iterable[MetadataWarning]) -> int:
    """How many of ``warnings`` are parameters or fields dropped from the caller-sourced layer."""
    return sum(1 for w in warnings if is_caller_drop(w))


def call_layers(
    defaults: AgentConfig, meta: CallMetadata, attributes: Mapping[str, str] | None
) -> tuple[MergedConfig, tuple[MetadataWarning, ...]]:
    """The configuration of one call, lowest layer first: the worker's defaults, the route's ``agent_config``, the
    call's ``overrides``, the layer the SIP participant's ``attributes`` select from the route's
    ``attribute_overrides``, and what the route's ``allowed_overrides`` let its ``siphon.overrides`` attribute set
    (``caller_layer``); plus what was dropped from that attribute."""
    attributes = attributes or {}
    attr_layer: AgentConfig | None = None
    warnings: tuple[MetadataWarning, ...] = ()
    if OVERRIDES_ATTRIBUTE in attributes:
        raw, read = parse_agent_config(attributes[OVERRIDES_ATTRIBUTE], path=OVERRIDES_ATTRIBUTE)
        attr_layer, dropped = caller_layer(raw, meta.allowed_overrides)
        warnings = read + dropped
    selected = attribute_layer(meta.attribute_overrides, attributes)
    merged = merge_layers(
        ("default", defaults), ("route", meta.agent_config), ("call", meta.overrides), ("call", selected),
        ("call", attr_layer),
    )  # fmt: skip
    return merged, warnings


SIP_ATTRIBUTES = {
    "call_status": SIP_CALL_STATUS,
    "phone_number": SIP_PHONE_NUMBER,
    "trunk_phone_number": SIP_TRUNK_PHONE_NUMBER,
    "trunk_id": SIP_TRUNK_ID,
    "call_id": SIP_CALL_ID,
    "rule_id": SIP_RULE_ID,
}
"""``SipFacts`` field -> the participant attribute livekit-sip sets it in."""


@dataclass(frozen=True)
class SipFacts:
    """What the SIP participant's attributes say about the call (livekit-sip sets them)."""

    identity: str
    call_status: str | None = None
    phone_number: str | None = None  # remote party: caller inbound, callee outbound
    trunk_phone_number: str | None = None  # our side: called number inbound, caller id outbound
    trunk_id: str | None = None
    call_id: str | None = None
    rule_id: str | None = None

    @classmethod
    def from_attributes(cls, identity: str, attributes: Mapping[str, str]) -> SipFacts:
        """Read ``sip.*`` attributes (missing ones stay ``None``)."""
        return cls(identity, **{name: attributes.get(attribute) or None for name, attribute in SIP_ATTRIBUTES.items()})

    def as_attributes(self) -> dict[str, str]:
        """The ``sip.*`` attributes livekit-sip sets for these facts (``None`` ones left out)."""
        return {attribute: value for name, attribute in SIP_ATTRIBUTES.items() if (value := getattr(self, name))}

    @staticmethod
    def looks_like_sip(attributes: Mapping[str, str]) -> bool:
        """True if the attributes are a SIP participant's (any ``sip.`` attribute)."""
        return any(k.startswith(SIP_ATTRIBUTE_PREFIX) for k in attributes)


@dataclass(frozen=True)
class CallFacts:
    """Direction, numbers and trunk of one call, and where each came from."""

    direction: Direction | None
    caller_number: str | None
    called_number: str | None
    trunk_id: str | None
    sources: dict[str, str] = field(default_factory=dict)


def call_facts(meta: CallMetadata, sip: SipFacts | None, *, dialled: bool = False) -> CallFacts:
    """Combine metadata (already normalised by ``parse_metadata``) with the SIP participant's attributes.

    Direction: explicit metadata (or what its trunk ids / callee imply); else, if a SIP participant is in the
    room that this worker did not dial, inbound. Numbers and trunk: the SIP attributes when present (what
    the bridge really did), else the metadata.
    """
    sources: dict[str, str] = {}
    direction = meta.direction
    if direction is not None:
        sources["direction"] = "metadata"
    elif sip is not None:
        direction = "outbound" if dialled else "inbound"
        sources["direction"] = "sip"
    caller, called = meta.caller_number, meta.called_number
    trunk = meta.outbound_trunk_id if direction == "outbound" else meta.inbound_trunk_id
    for key, value in (("caller_number", caller), ("called_number", called), ("trunk_id", trunk)):
        if value:
            sources[key] = "metadata"
    if sip is not None:
        remote, ours = sip.phone_number, sip.trunk_phone_number
        sip_caller, sip_called = (ours, remote) if direction == "outbound" else (remote, ours)
        for key, value in (("caller_number", sip_caller), ("called_number", sip_called), ("trunk_id", sip.trunk_id)):
            if value:
                sources[key] = "sip"
        caller, called, trunk = sip_caller or caller, sip_called or called, sip.trunk_id or trunk
    return CallFacts(direction, caller, called, trunk, sources)


def config_hash(payload: Mapping[str, object]) -> str:
    """Short stable hash of a non-secret configuration description."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ResolvedCall:
    """Everything the agent needs for one call, secret-free (safe to log and to publish as attributes)."""

    agent_name: str
    route: str | None
    facts: CallFacts
    merged: MergedConfig
    models: dict[ModelKind, str]  # label actually used per kind
    fallbacks: dict[ModelKind, str]  # kind -> reason, when the requested spec could not be used
    warnings: tuple[MetadataWarning, ...] = ()
    resumed: bool = False  # this agent took over a call whose agent process died (not part of the hash)

    def describe(self) -> dict[str, object]:
        """The resolved configuration (instructions summarised by length and hash)."""
        cfg = self.merged.config
        return {
            "schema_version": SCHEMA_VERSION,
            "agent_name": self.agent_name,
            "route": self.route,
            "direction": self.facts.direction,
            "caller_number": self.facts.caller_number,
            "called_number": self.facts.called_number,
            "trunk_id": self.facts.trunk_id,
            "models": dict(self.models),
            "system_instructions_sha": text_sha(cfg.system_instructions),
            "greeting_instructions_sha": text_sha(cfg.greeting_instructions),
            "send_greeting": cfg.send_greeting,
            "sources": dict(self.merged.sources),
            "fact_sources": dict(self.facts.sources),
            "fallbacks": sorted(self.fallbacks),
            "warnings": len(self.warnings),
        }

    @property
    def hash(self) -> str:
        """Hash of the configuration that answers the call (models, instructions, route, direction)."""
        d = self.describe()
        keep = ("route", "direction", "models", "system_instructions_sha", "greeting_instructions_sha", "send_greeting")
        return config_hash({k: d[k] for k in keep})

    def attributes(self) -> dict[str, str]:
        """Participant attributes published by the agent (all ``siphon.``-prefixed strings)."""
        cfg = self.merged.config
        attrs = {
            "schema_version": str(SCHEMA_VERSION),
            "agent_name": self.agent_name,
            "route": self.route or "",
            "direction": self.facts.direction or "unknown",
            "caller_number": self.facts.caller_number or "",
            "called_number": self.facts.called_number or "",
            "trunk_id": self.facts.trunk_id or "",
            "config_hash": self.hash,
            "send_greeting": str(bool(cfg.send_greeting)).lower(),
            "sources": ",".join(f"{k}={v}" for k, v in sorted(self.merged.sources.items())),
            "fallbacks": ",".join(sorted(self.fallbacks)),
            "warnings": str(len(self.warnings)),
            "system_instructions_sha": text_sha(cfg.system_instructions) or "",
            "greeting_instructions_sha": text_sha(cfg.greeting_instructions) or "",
            "resume_message_sha": text_sha(cfg.resume_message) or "",
            "resumed": str(self.resumed).lower(),
        }
        attrs.update({kind: self.models.get(kind, "") for kind in MODEL_KINDS})
        attrs.update(turns.attributes(cfg), end_call=str(end_call_enabled(cfg)).lower())
        return {siphon_attribute(k): v for k, v in attrs.items()}


def text_sha(text: str | None) -> str | None:
    """Short hash of an instruction text, as published in ``siphon.*_instructions_sha`` attributes."""
    return hashlib.sha256(text.encode()).hexdigest()[:12] if text else None


def requested_models(config: AgentConfig) -> dict[ModelKind, str]:
    """The label of each model kind a merged configuration asks for (a chain's: its entries' labels in order,
    ``contract.models.chain_label``; kinds it leaves unset, or sets to specs none of which parses, are left out: the
    worker then falls back, and says why)."""
    labels: dict[ModelKind, str] = {}
    for kind in MODEL_KINDS:
        value = getattr(config, kind)
        if value is not None and (label := chain_label(kind, value)):
            labels[kind] = label
    return labels


def resolve_call(
    metadata: CallMetadata,
    sip_attributes: Mapping[str, str] | None,
    defaults: AgentConfig,
    *,
    agent_name: str,
    identity: str = "",
    dialled: bool = False,
) -> ResolvedCall:
    """One call's configuration, as the agent ``agent_name`` answers it: its ``defaults`` (``worker_defaults``), the
    job's ``metadata`` (``parse_metadata``) and the SIP participant's attributes (``None``: no SIP participant in the
    room; ``dialled``: this agent placed the call) merged by the rule above. Models are the ones requested
    (``requested_models``): the worker replaces them with those it could build. Pure: the worker answers with it,
    ``verify`` predicts the worker with it."""
    sip = SipFacts.from_attributes(identity, sip_attributes) if sip_attributes is not None else None
    merged, warnings = call_layers(defaults, metadata, sip_attributes)
    return ResolvedCall(
        agent_name=agent_name,
        route=metadata.route,
        facts=call_facts(metadata, sip, dialled=dialled),
        merged=merged,
        models=requested_models(merged.config),
        fallbacks={},
        warnings=warnings,
        resumed=metadata.resume is not None,
    )
