"""THE call-metadata schema shared by the worker and the infrastructure code (versioned, pydantic v2).

A call reaches the worker with one JSON object in its job metadata: the dispatch rule's
``RoomAgentDispatch.metadata`` for inbound calls, or the agent dispatch's metadata for outbound calls.
This module describes that object, produces it (``to_json``) and reads it back, strictly (producers:
``CallMetadata.model_validate``) or leniently (the worker: ``parse_metadata``, which never raises).

SIPHON compatibility: the SIPHON keys (``agent_config``, ``inbound_trunk_id``, ``outbound_trunk_id``,
``agent_number``, ``number_to_call``, ``standalone_call``) are fields of this schema with SIPHON's
meaning, and provider dicts ``{"provider": ..., **params}`` are accepted as model specs.

Limits shared with the stack file and the resource arguments come from ``contract.types``.
Regenerate the published JSON Schema with ``python -m contract.metadata``.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from contract.turns import TurnTaking
from contract.types import (
    DEFAULT_RING_TIMEOUT,
    MAX_HEADER_OVERRIDES,
    MAX_METADATA_CHARS,
    AttributeName,
    AttributeValue,
    RingTimeout,
    StrictModel,
)

SCHEMA_VERSION = 1
"""Current version of the metadata schema. Readers accept older versions and warn on newer ones."""

SCHEMA_PATH = Path(__file__).with_name("metadata.schema.json")
"""Where the published JSON Schema of ``CallMetadata`` lives in the repository."""

MAX_INSTRUCTIONS_CHARS = 8000
MAX_CONTEXT_CHARS = 16 * 1024
MAX_PROVIDER_PARAMS = 32
MAX_PARAM_STRING_CHARS = 512
MAX_WARNED_KEYS = 20
SIPHON_ONLY_KEYS = ("agent_number", "number_to_call", "standalone_call")
"""Keys only SIPHON writes (the others it writes are canonical here too)."""
SIPHON_CONFIG_KEY = "agent_config"
"""The key of SIPHON's payload (and of ours) that holds the configuration layer."""
SIPHON_CONFIG_KEYS = ("llm", "tts", "stt", "greeting_instructions", "system_instructions")
"""The keys of SIPHON 0.1.4's ``agent_config``, in the order it writes them."""
SIPHON_PAYLOAD_KEYS = frozenset({SIPHON_CONFIG_KEY, "inbound_trunk_id", "agent_number"})
"""The keys of SIPHON 0.1.4's inbound payload (``siphon_payload``)."""

Direction = Literal["inbound", "outbound"]
ModelKind = Literal["llm", "stt", "tts"]
MODEL_KINDS: tuple[ModelKind, ...] = get_args(ModelKind)

_SECRET_KEY = re.compile(
    r"(^|[_.-])(api_?key|secret|token|password|passwd|credentials?|auth|bearer)([_.-]|$)", re.IGNORECASE
)


def _lower(v: object) -> object:
    return v.lower().strip() if isinstance(v, str) else v


PhoneNumber = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=32, pattern=r"^[0-9A-Za-z+*#.\-() ]+$"),
]
"""A phone number or SIP user as carriers and SIPHON send it (E.164 preferred, formatting tolerated)."""

TrunkId = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^ST_[A-Za-z0-9_-]{1,64}$")]
RouteName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][\w.:-]*$")
]
Instructions = Annotated[str, StringConstraints(max_length=MAX_INSTRUCTIONS_CHARS)]
AttributeKey = AttributeName
SpecString = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][^\s]*$")
]
"""A LiveKit model string: ``provider[/model][:variant]`` (``openai/gpt-4.1-mini``, ``cartesia/sonic-2:<voice>``)."""

ProviderName = Annotated[
    str,
    BeforeValidator(_lower),
    StringConstraints(min_length=1, max_length=32, pattern=r"^[a-z0-9][a-z0-9_.-]*$"),
]
M = TypeVar("M", bound=BaseModel)
ParamValue = str | int | float | bool | None | list[str | int | float | bool]


class ProviderSpec(BaseModel):
    """A SIPHON-style provider dict: ``{"provider": "openai", "model": "gpt-4.1-mini", ...params}``.

    Extra keys are the provider's constructor parameters (scalars or lists of scalars). Keys that look
    like credentials (``api_key``, ``token``, ...) are refused: credentials come from the worker's
    environment, never from metadata.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    provider: ProviderName

    @model_validator(mode="after")
    def _check_params(self) -> ProviderSpec:
        extra = self.model_extra or {}
        if len(extra) > MAX_PROVIDER_PARAMS:
            raise ValueError(f"too many provider parameters (max {MAX_PROVIDER_PARAMS})")
        for key, value in extra.items():
            if len(key) > 64:
                raise ValueError("provider parameter name too long (max 64)")
            if _SECRET_KEY.search(key):
                raise ValueError(f"provider parameter {key!r} looks like a credential; use the worker's environment")
            _check_param_value(key, value)
        return self

    @property
    def params(self) -> dict[str, ParamValue]:
        """The constructor parameters (every key except ``provider``)."""
        return dict(self.model_extra or {})


def _check_param_value(key: str, value: object) -> None:
    items = value if isinstance(value, list) else [value]
    if isinstance(value, list) and len(value) > 64:
        raise ValueError(f"provider parameter {key!r}: list too long (max 64)")
    for item in items:
        if item is not None and not isinstance(item, str | int | float | bool):
            raise ValueError(f"provider parameter {key!r}: only scalars or lists of scalars are allowed")
        if isinstance(item, str) and len(item) > MAX_PARAM_STRING_CHARS:
            raise ValueError(f"provider parameter {key!r}: string too long (max {MAX_PARAM_STRING_CHARS})")


ModelSpec = SpecString | ProviderSpec
"""A model spec: a LiveKit model string or a SIPHON provider dict."""
_SPEC_HELP = 'a model string provider[/model][:variant] or a provider object {"provider": ..., "model": ...}'

MAX_CHAIN_ENTRIES = 4
"""The most specs a fallback chain lists (each one tried in turn costs a failing provider's timeout first)."""
_CHAIN_HELP = f"a fallback chain of 2 to {MAX_CHAIN_ENTRIES} tried in order"


def _each_entry_once(chain: list[ModelSpec]) -> list[ModelSpec]:
    seen: list[object] = []
    for i, spec in enumerate(chain):
        value = spec.model_dump() if isinstance(spec, ProviderSpec) else spec
        if value in seen:
            raise ValueError(f"entry {i} repeats entry {seen.index(value)}: a chain tries each spec once, list it once")
        seen.append(value)
    return chain


ModelChain = Annotated[
    list[ModelSpec], Field(min_length=2, max_length=MAX_CHAIN_ENTRIES), AfterValidator(_each_entry_once)
]
"""A fallback chain: 2 to ``MAX_CHAIN_ENTRIES`` specs of one kind, tried in order (livekit-agents' ``FallbackAdapter``:
the first that answers serves)."""


def _one_entry_is_the_spec(value: object) -> object:
    if isinstance(value, list) and not value:
        raise ValueError(f"an empty list names no model: write one spec, a list of 2 to {MAX_CHAIN_ENTRIES} (a "
                         "fallback chain), or leave the field out to inherit it")  # fmt: skip
    return value[0] if isinstance(value, list) and len(value) == 1 else value


LayerSpec = Annotated[ModelSpec | ModelChain, BeforeValidator(_one_entry_is_the_spec)]
"""What a configuration layer gives one model kind: a spec, or a fallback chain (``ModelChain``; a list of one spec
is that spec). The merge rule treats a chain as one value: a higher layer's spec or chain replaces it whole."""


def chain_entries(value: ModelSpec | list[ModelSpec]) -> list[ModelSpec]:
    """The specs of a layer's model kind, in the order they are tried: a chain's entries, or the one spec."""
    return list(value) if isinstance(value, list) else [value]


def entry_fields(kind: ModelKind, value: ModelSpec | list[ModelSpec]) -> list[tuple[str, ModelSpec]]:
    """``(field, spec)`` for each spec of a layer's model kind: the field is ``kind`` for one spec and
    ``kind.<i>`` for a chain's entries (where validate reports a problem of that entry)."""
    if isinstance(value, list):
        return [(f"{kind}.{i}", spec) for i, spec in enumerate(value)]
    return [(kind, value)]


class AgentConfig(TurnTaking):
    """One configuration layer (SIPHON's ``agent_config``): models, instructions, greeting, turn-taking
    (``contract.turns.TurnTaking``, SIPHON's keyword names) and the end-call tool.

    ``None`` (or an absent key) means "inherit from the layer below". SIPHON's truthy-wins rule also
    applies to the empty string and to blank instructions: they inherit too (see ``contract.resolve``).
    """

    llm: LayerSpec | None = Field(
        default=None, description=f"LLM: {_SPEC_HELP} (or a list of them, {_CHAIN_HELP}), e.g. openai/gpt-4.1-mini"
    )
    stt: LayerSpec | None = Field(
        default=None, description=f"STT: {_SPEC_HELP} (or a list of them, {_CHAIN_HELP}), e.g. deepgram/nova-3:en"
    )
    tts: LayerSpec | None = Field(
        default=None, description=f"TTS: {_SPEC_HELP} (or a list of them, {_CHAIN_HELP}), e.g. cartesia/sonic-2:<voice>"
    )
    system_instructions: Instructions | None = Field(
        default=None, description=f"The agent's instructions, at most {MAX_INSTRUCTIONS_CHARS} characters."
    )
    greeting_instructions: Instructions | None = Field(
        default=None, description=f"How the agent greets, at most {MAX_INSTRUCTIONS_CHARS} characters."
    )
    send_greeting: bool | None = Field(
        default=None, description="Whether the agent speaks first. Extension to SIPHON; null inherits."
    )
    end_call: bool | None = Field(
        default=None, description="Whether the agent has the end-call (hang up) tool; default true; null inherits."
    )
    resume_message: Instructions | None = Field(
        default=None,
        description=(
            "What an agent that takes over a call whose agent process died says, word for word, instead of the "
            f"greeting, at most {MAX_INSTRUCTIONS_CHARS} characters."
        ),
    )


INSTRUCTION_FIELDS = ("system_instructions", "greeting_instructions", "resume_message")
"""The ``AgentConfig`` fields that say what the agent is told and says (``AllowedOverrides.instructions``)."""


def _spec_labels(kind: ModelKind, specs: list[ModelSpec]) -> list[ModelSpec]:
    from contract.models import SpecError, parse_spec  # contract.models imports this module

    labels = []
    for spec in specs:
        try:
            labels.append(parse_spec(kind, spec).label)
        except SpecError:
            continue  # reported by the stack's spec check (and never matched by a caller)
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"{', '.join(repeated)} is listed twice: a caller chooses a spec by its label, list it once")
    return specs


class AllowedOverrides(StrictModel):
    """What a caller-sourced layer (the SIP participant's ``siphon.overrides`` attribute: whoever places the call
    writes it) may switch to, declared by the stack (or by the code that dispatches the call). The default allows
    nothing: every field such a layer sets is dropped, with a warning and a count in the call metric.

    A caller chooses a model by its label (``provider/model[:variant]``); the spec listed here is what runs, whole.
    """

    llm: list[ModelSpec] = Field(default_factory=list, max_length=32, description="LLM specs a caller may choose")
    stt: list[ModelSpec] = Field(default_factory=list, max_length=32, description="STT specs a caller may choose")
    tts: list[ModelSpec] = Field(
        default_factory=list, max_length=32, description="TTS specs (voices) a caller may choose"
    )
    instructions: bool = Field(
        default=False, description="Whether a caller may replace " + ", ".join(INSTRUCTION_FIELDS) + " (off: never)."
    )

    @field_validator("llm", "stt", "tts")
    @classmethod
    def _unique_labels(cls, specs: list[ModelSpec], info: ValidationInfo) -> list[ModelSpec]:
        kind: ModelKind = info.field_name  # type: ignore[assignment]
        return _spec_labels(kind, specs)

    def specs(self, kind: ModelKind) -> list[ModelSpec]:
        """The specs a caller may choose for ``kind``."""
        specs: list[ModelSpec] = getattr(self, kind)
        return specs


class RouteMetadata(StrictModel):
    """What a route (an inbound dispatch rule or an outbound dispatch) tells the worker.

    Infra serialises this into ``RoomAgentDispatch.metadata`` (inbound) or the agent dispatch's
    metadata (outbound) with ``to_json()``.
    """

    schema_version: int = Field(default=SCHEMA_VERSION, ge=1, description="Version of this schema.")
    route: RouteName | None = Field(default=None, description="Name of the route (as declared in the stack).")
    direction: Annotated[Direction | None, BeforeValidator(_lower)] = Field(
        default=None, description="Call direction; when absent it is derived from the trunk ids."
    )
    caller_number: PhoneNumber | None = Field(default=None, description="The From number of the call.")
    called_number: PhoneNumber | None = Field(default=None, description="The To (dialled) number of the call.")
    inbound_trunk_id: TrunkId | None = Field(default=None, description="Inbound trunk (SIPHON key).")
    outbound_trunk_id: TrunkId | None = Field(default=None, description="Outbound trunk (SIPHON key).")
    agent_config: AgentConfig | None = Field(default=None, description="The route's configuration layer.")
    context: dict[str, JsonValue] | None = Field(
        default=None, description=f"Free-form customer context (max {MAX_CONTEXT_CHARS} characters as JSON)."
    )
    attribute_overrides: dict[AttributeKey, dict[AttributeValue, AgentConfig]] | None = Field(
        default=None,
        max_length=MAX_HEADER_OVERRIDES,
        description=(
            "Per-call layers chosen by the SIP participant's attributes (a trunk maps SIP headers to attributes "
            "with headers_to_attributes): attribute name -> attribute value -> configuration layer."
        ),
    )
    allowed_overrides: AllowedOverrides | None = Field(
        default=None,
        description=(
            "What the SIP participant's siphon.overrides attribute (written by the caller's side) may switch to; "
            "absent: nothing."
        ),
    )
    # SIPHON compatibility keys (prefer caller_number / called_number).
    agent_number: PhoneNumber | None = Field(
        default=None,
        description="SIPHON: the agent's own number (called number inbound, caller id outbound).",
    )
    number_to_call: PhoneNumber | None = Field(default=None, description="SIPHON: the callee of an outbound call.")
    standalone_call: bool | None = Field(default=None, description="SIPHON: written by Call, never read.")

    @field_validator("context")
    @classmethod
    def _context_size(cls, v: dict[str, JsonValue] | None) -> dict[str, JsonValue] | None:
        if v is not None and len(json.dumps(v, separators=(",", ":"))) > MAX_CONTEXT_CHARS:
            raise ValueError(f"context too large (max {MAX_CONTEXT_CHARS} characters as JSON)")
        return v

    def to_json(self, *, siphon_keys: bool = True) -> str:
        """Compact JSON, ``null`` fields left out.

        With ``siphon_keys`` the SIPHON spellings (``agent_number``, ``number_to_call``, and an
        ``agent_config`` object) are filled from the canonical fields, so SIPHON workers read it too.
        """
        data = self.model_dump(mode="json", exclude_none=True)
        if siphon_keys:
            n = self.normalized()
            outbound = n.direction == "outbound"
            agent_number = n.caller_number if outbound else n.called_number
            if agent_number and "agent_number" not in data:
                data["agent_number"] = agent_number
            if outbound and n.called_number and "number_to_call" not in data:
                data["number_to_call"] = n.called_number
            data.setdefault(SIPHON_CONFIG_KEY, {})
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)

    def effective_direction(self) -> Direction | None:
        """Explicit ``direction``, else outbound if an outbound trunk or callee is named, else inbound
        if an inbound trunk is named, else unknown (``None``). Never inferred from ``agent_config``."""
        if self.direction is not None:
            return self.direction
        if self.outbound_trunk_id or self.number_to_call:
            return "outbound"
        if self.inbound_trunk_id:
            return "inbound"
        return None

    def normalized(self) -> Self:
        """A copy with ``direction``, ``caller_number`` and ``called_number`` filled from SIPHON keys."""
        direction = self.effective_direction()
        caller, called = self.caller_number, self.called_number
        if direction == "outbound":
            called = called or self.number_to_call
            caller = caller or self.agent_number
        elif self.agent_number:
            called = called or self.agent_number
        return self.model_copy(update={"direction": direction, "caller_number": caller, "called_number": called})


MAX_RESUMES = 3
"""How many times one call is taken over after its agent process died before it is ended instead."""


class ResumeMarker(StrictModel):
    """Added to a call's metadata by whoever re-dispatches a call whose agent process died (``worker.dead_job``):
    the new agent serves the same call (same layers, same SIP participant) and says the resume line, not the
    greeting."""

    count: int = Field(ge=1, le=MAX_RESUMES, description="How many times this call has been taken over.")
    job_id: str | None = Field(default=None, max_length=128, description="The job whose process died.")


class CallMetadata(RouteMetadata):
    """Route metadata plus what only one call carries: per-call overrides and outbound dial options."""

    resume: ResumeMarker | None = Field(
        default=None, description="Set only on a call taken over after its agent process died (worker.dead_job)."
    )

    overrides: AgentConfig | None = Field(default=None, description="Per-call layer, applied over agent_config.")
    ring_timeout: RingTimeout | None = Field(
        default=None, description=f"Outbound: seconds to wait for an answer (worker default {DEFAULT_RING_TIMEOUT})."
    )
    participant_identity: Annotated[str, StringConstraints(max_length=128, pattern=r"^[\w.:+-]+$")] | None = Field(
        default=None, description="Outbound: identity of the dialled SIP participant (default sip-<room>)."
    )


# ---------------------------------------------------------------------------------------------------
# Lenient reading (the worker): never raises, warns per dropped field.


@dataclass(frozen=True)
class MetadataWarning:
    """One structured, secret-free problem found while reading metadata (never carries a value)."""

    code: str  # too_large | invalid_json | not_an_object | unknown_keys | invalid_field | secret_param | ...
    field: str = ""
    detail: str = ""

    def as_dict(self) -> dict[str, str]:
        """For structured logging."""
        return {"code": self.code, "field": self.field, "detail": self.detail}


@dataclass(frozen=True)
class ParsedMetadata:
    """Result of ``parse_metadata``: always a valid ``CallMetadata``, plus what was dropped and why."""

    metadata: CallMetadata
    warnings: tuple[MetadataWarning, ...] = field(default_factory=tuple)
    siphon_shape: bool = False


def _safe_key(key: object) -> str:
    text = key if isinstance(key, str) else type(key).__name__
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text[:64]


def _error_detail(err: ValidationError) -> str:
    # Never the input value: only the error types and pydantic's messages (which do not echo input).
    parts = []
    for e in err.errors(include_url=False, include_input=False)[:3]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "__root__")
        msg = str(e.get("msg", ""))[:160]
        parts.append(f"{e['type']}{'@' + loc if loc else ''}: {msg}")
    return "; ".join(parts)


def _strip_secret_params(spec: object, path: str, warnings: list[MetadataWarning]) -> object:
    if isinstance(spec, list) and len(spec) <= MAX_CHAIN_ENTRIES:  # a chain: each entry (a longer one is refused)
        return [_strip_secret_params(entry, f"{path}.{i}", warnings) for i, entry in enumerate(spec)]
    if not isinstance(spec, dict):
        return spec
    secret = [k for k in spec if isinstance(k, str) and k != "provider" and _SECRET_KEY.search(k)]
    if secret:
        warnings.append(MetadataWarning("secret_param", path, "dropped: " + ", ".join(_safe_key(k) for k in secret)))
    return {k: v for k, v in spec.items() if k not in secret}


def lenient_model(model: type[M], data: Mapping[object, object], path: str, warnings: list[MetadataWarning]) -> M:
    """Validate ``data`` against ``model`` field by field: unknown keys and invalid fields are dropped
    (with a warning each), nested configuration layers are read the same way. Never raises."""
    unknown = [k for k in data if not (isinstance(k, str) and k in model.model_fields)]
    if unknown:
        names = ", ".join(_safe_key(k) for k in unknown[:MAX_WARNED_KEYS])
        more = f" (+{len(unknown) - MAX_WARNED_KEYS} more)" if len(unknown) > MAX_WARNED_KEYS else ""
        warnings.append(MetadataWarning("unknown_keys", path, names + more))
    good: dict[str, object] = {}
    for name, info in model.model_fields.items():
        if name not in data:
            continue
        value = data[name]
        where = f"{path}.{name}" if path else name
        if info.annotation is not None and AgentConfig in get_args(info.annotation) and isinstance(value, dict):
            good[name] = lenient_model(AgentConfig, value, where, warnings)
            continue
        if name in MODEL_KINDS:
            value = _strip_secret_params(value, where, warnings)
        try:
            model.model_validate({name: value})
        except ValidationError as err:
            warnings.append(MetadataWarning("invalid_field", where, _error_detail(err)))
            continue
        except (RecursionError, ValueError, TypeError) as err:  # pathological nesting and the like
            warnings.append(MetadataWarning("invalid_field", where, type(err).__name__))
            continue
        good[name] = value
    try:
        return model.model_validate(good)
    except ValidationError as err:  # cross-field problem: keep what validates alone is not enough
        warnings.append(MetadataWarning("invalid_object", path, _error_detail(err)))
        return model()


def _load_object(raw: str | bytes | Mapping[str, object] | None, path: str, warnings: list[MetadataWarning]) -> dict:
    if raw is None:
        return {}
    if isinstance(raw, Mapping):
        return dict(raw)
    if isinstance(raw, bytes):
        if len(raw) > MAX_METADATA_CHARS * 4:
            warnings.append(MetadataWarning("too_large", path, f"{len(raw)} bytes"))
            return {}
        raw = raw.decode("utf-8", errors="replace")
    if len(raw) > MAX_METADATA_CHARS:
        warnings.append(MetadataWarning("too_large", path, f"{len(raw)} characters (max {MAX_METADATA_CHARS})"))
        return {}
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except RecursionError:
        warnings.append(MetadataWarning("invalid_json", path, "nesting too deep"))
        return {}
    except ValueError as err:
        warnings.append(
            MetadataWarning("invalid_json", path, f"{type(err).__name__} at position {getattr(err, 'pos', '?')}")
        )
        return {}
    if not isinstance(data, dict):
        warnings.append(MetadataWarning("not_an_object", path, type(data).__name__))
        return {}
    return data


def parse_metadata(raw: str | bytes | Mapping[str, object] | None, *, path: str = "") -> ParsedMetadata:
    """Read job metadata leniently: never raises, drops what is invalid and says why.

    Handles: empty metadata, invalid JSON, non-objects, oversized payloads, unknown keys, wrongly typed
    or oversized fields, credential-looking provider parameters, newer schema versions, SIPHON shapes.
    """
    warnings: list[MetadataWarning] = []
    data: dict = {}
    try:
        data = _load_object(raw, path, warnings)
        meta = lenient_model(CallMetadata, data, path, warnings)
    except Exception as err:  # last resort: the worker must answer the call whatever arrives
        warnings.append(MetadataWarning("unreadable", path, type(err).__name__))
        meta = CallMetadata()
    if meta.schema_version > SCHEMA_VERSION:
        warnings.append(
            MetadataWarning("newer_schema", "schema_version", f"{meta.schema_version} > {SCHEMA_VERSION}: read as v1")
        )
    explicit, implied = meta.direction, meta.model_copy(update={"direction": None}).effective_direction()
    if explicit and implied and explicit != implied:
        warnings.append(
            MetadataWarning("direction_conflict", "direction", f"explicit {explicit}, trunks say {implied}")
        )
    n = meta.normalized()
    if meta.number_to_call and meta.called_number and meta.number_to_call != meta.called_number:
        warnings.append(MetadataWarning("number_conflict", "number_to_call", "called_number wins"))
    siphon = any(k in data for k in SIPHON_ONLY_KEYS)
    return ParsedMetadata(metadata=n, warnings=tuple(warnings), siphon_shape=siphon)


def _plain(value: object) -> object:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def siphon_payload(layer: AgentConfig, context: Mapping[str, JsonValue]) -> str:
    """SIPHON 0.1.4's inbound payload, as its ``Dispatch`` writes it: ``agent_config`` with its five keys in its
    order (then any other key the layer sets), then the route's ``context`` keys (``inbound_trunk_id``,
    ``agent_number``), serialised with ``json.dumps``' defaults (``parse_metadata`` reads it)."""
    agent_config = {k: _plain(getattr(layer, k)) for k in SIPHON_CONFIG_KEYS}
    agent_config.update(layer.model_dump(mode="json", exclude_none=True, exclude=set(SIPHON_CONFIG_KEYS)))
    return json.dumps({SIPHON_CONFIG_KEY: agent_config, **context})


def parse_agent_config(
    raw: str | bytes | Mapping[str, object] | None, *, path: str = "overrides"
) -> tuple[AgentConfig, tuple[MetadataWarning, ...]]:
    """Read one configuration layer leniently (e.g. a per-call override from a participant attribute)."""
    warnings: list[MetadataWarning] = []
    try:
        cfg = lenient_model(AgentConfig, _load_object(raw, path, warnings), path, warnings)
    except Exception as err:
        warnings.append(MetadataWarning("unreadable", path, type(err).__name__))
        cfg = AgentConfig()
    return cfg, tuple(warnings)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of ``CallMetadata`` (what producers in any language may send)."""
    schema = CallMetadata.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://siphon-infra/schemas/call-metadata/v{SCHEMA_VERSION}.json"
    return schema


def json_schema_text() -> str:
    """The published schema file's exact content."""
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        sys.exit(0 if SCHEMA_PATH.read_text() == json_schema_text() else 1)
    SCHEMA_PATH.write_text(json_schema_text())
    print(f"wrote {SCHEMA_PATH}")
