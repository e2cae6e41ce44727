"""Configuration layers, the merge rule, SIP participant facts, and the resolved per-call configuration.

Layers, lowest first:

1. **worker defaults**: the worker's environment (``WorkerSettings``), else ``BUILTIN_DEFAULTS`` (its instructions;
   its offline models only in the ``local`` environment: elsewhere a worker must be given its models);
2. **route**: ``agent_config`` of the job metadata (the dispatch rule's agent metadata, or the outbound
   dispatch's metadata);
3. **call**: ``overrides`` of the job metadata, then the SIP participant's ``siphon.overrides`` attribute
   (JSON; e.g. mapped from an X- header with ``headers_to_attributes``), the attribute winning.

Merge rule (``merge_layers``), per field of ``AgentConfig``, SIPHON's truthy-wins, whole values:

- a higher layer's value replaces the lower one only if it is *set*: ``None``/absent, ``""`` and
  whitespace-only strings are **not set** and inherit from below (SIPHON treats every falsy value so;
  an explicit empty instruction therefore cannot blank out a default);
- booleans (``send_greeting``) are set when not ``None``: an explicit ``false`` wins (the one way to switch
  a default off);
- model specs are replaced **whole**: a provider dict is not merged key by key with the layer below;
  parameters it leaves out take the plugin's defaults, not the lower layer's.

Direction, numbers and trunk come from the SIP participant's attributes when one is in the room
(``sip.phoneNumber``, ``sip.trunkPhoneNumber``, ``sip.trunkID``, ``sip.callStatus``), else from metadata.

Import-light: no livekit-agents here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, AliasGenerator, Field, PrivateAttr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker import end_call, turns
from worker.call_metric import DEFAULT_INTERVAL as DEFAULT_METRIC_INTERVAL
from worker.metadata import (
    MODEL_KINDS,
    SCHEMA_VERSION,
    AgentConfig,
    CallMetadata,
    Direction,
    MetadataWarning,
    ModelKind,
    parse_agent_config,
)
from worker.models.registry import LOCAL_DEFAULTS
from worker.rules import (
    DEFAULT_RING_TIMEOUT,
    LOCAL_ENVIRONMENT,
    EnvironmentName,
    LiveKitAgentName,
    RingTimeout,
    describe_errors,
)
from worker.task_protection import AGENT_URI_ENV
from worker.task_protection import MAX_MINUTES as MAX_PROTECTION_MINUTES

LayerName = Literal["default", "route", "call"]
ATTR_PREFIX = "siphon."
OVERRIDES_ATTRIBUTE = "siphon.overrides"
"""Participant attribute carrying a per-call ``AgentConfig`` JSON (inbound per-call layer)."""

AGENT_NAME_ENV = "SIPHON_AGENT_NAME"
ENVIRONMENT_ENV = "SIPHON_ENVIRONMENT"  # the stack environment the worker serves; only `local` runs test models
MAX_JOBS_ENV = "SIPHON_MAX_JOBS"  # the worker's call capacity (calls at once), set by every deployment
DRAIN_TIMEOUT_ENV = "SIPHON_DRAIN_TIMEOUT"  # seconds to finish running calls after SIGTERM
METRIC_CLUSTER_ENV = "SIPHON_METRIC_CLUSTER"  # ECS names the call metric is published under (worker.call_metric)
METRIC_SERVICE_ENV = "SIPHON_METRIC_SERVICE"
CALL_PROTECTION_ENV = "SIPHON_CALL_PROTECTION_MINUTES"  # ECS task scale-in protection while calls run
CallProtectionMinutes = Annotated[int, Field(ge=1, le=MAX_PROTECTION_MINUTES)]
"""Minutes one ECS task scale-in protection period lasts (``worker.task_protection``), renewed while calls run."""
MAX_CALLS_LIMIT = 200  # upper bound of a capacity: one worker process supervises every call's job
CallCapacity = Annotated[int, Field(ge=1, le=MAX_CALLS_LIMIT)]
"""Calls one worker serves at once (``SIPHON_MAX_JOBS``; ``max_calls`` in a stack file and the ECS arguments)."""
WARM_PROCESSES = 8
"""Idle job processes a worker with a capacity keeps warm by default. livekit-agents initializes at most one job
process per core at a time, so a burst beyond the warm ones waits for them in turn (bench/sip_calls.py --against
stock); an idle process, forked from the preloaded forkserver, holds about 27 MiB of its own (PSS)."""

DEFAULT_HTTP_PORT = 8081  # the worker's health server (the ECS health check probes it)


def max_calls_for(cpu_units: int, memory_mib: int) -> int:
    """Default call capacity of a worker with this much CPU (1024 = one vCPU) and memory: a call's job
    process takes about an eighth of a vCPU and 256 MiB with cloud models."""
    return max(1, min(cpu_units // 128, memory_mib // 256, MAX_CALLS_LIMIT))


def defaults_env_name(field_name: str) -> str:
    """The variable that sets one ``AgentConfig`` field of the worker defaults: ``SIPHON_DEFAULT_LLM`` for the
    model kinds, ``SIPHON_<FIELD>`` for the others (``SIPHON_SYSTEM_INSTRUCTIONS``, ``SIPHON_ALLOW_INTERRUPTIONS``)."""
    return f"SIPHON_DEFAULT_{field_name.upper()}" if field_name in MODEL_KINDS else f"SIPHON_{field_name.upper()}"


DEFAULTS_ENV: dict[str, str] = {name: defaults_env_name(name) for name in AgentConfig.model_fields}
"""AgentConfig field -> environment variable the worker reads its default for that field from."""

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


def defaults_env(layer: AgentConfig) -> dict[str, str]:
    """The environment that makes a worker use ``layer`` as its defaults (JSON for what is not a string).

    Deployments (ECS task definitions, local worker processes) call this instead of naming variables.
    """
    values = {name: getattr(layer, name) for name in AgentConfig.model_fields}
    return {
        DEFAULTS_ENV[name]: v if isinstance(v, str) else json.dumps(to_jsonable_python(v), separators=(",", ":"))
        for name, v in values.items()
        if v is not None
    }


class _DefaultsFromEnv(BaseSettings, AgentConfig):
    """The default layer as the environment sets it (``DEFAULTS_ENV``; provider dicts as JSON)."""

    model_config = SettingsConfigDict(
        alias_generator=AliasGenerator(validation_alias=defaults_env_name), env_ignore_empty=True
    )


class SettingsError(SystemExit):
    """A worker setting in the environment is invalid: the worker stops at start with this message (exit 1)."""


class WorkerSettings(BaseSettings):
    """The worker's own settings, read from its environment (as the deployment sets it) when it starts.

    Each field is the variable ``SIPHON_<FIELD>`` (the agent name also ``LIVEKIT_AGENT_NAME``); the default
    layer is one variable per ``AgentConfig`` field (``DEFAULTS_ENV``: ``SIPHON_DEFAULT_LLM``,
    ``SIPHON_SYSTEM_INSTRUCTIONS``, ``SIPHON_ALLOW_INTERRUPTIONS``, ...). An invalid value stops the worker at
    start (``SettingsError``) naming the variable and what to write.
    ``SIPHON_MAX_JOBS``: the worker's call capacity. LiveKit only hands jobs to workers whose reported load
    is below its target load (``SIPHON_LOAD_THRESHOLD``, 0.7 as on livekit-server), so the worker reports
    load = target x active calls / capacity: it is full, for the server and for itself, at exactly that
    many calls. Without it, load is host CPU, which starves a busy small host.
    """

    model_config = SettingsConfigDict(env_prefix="SIPHON_", env_ignore_empty=True, frozen=True)

    agent_name: LiveKitAgentName = Field(
        "siphon-agent", validation_alias=AliasChoices(AGENT_NAME_ENV, "LIVEKIT_AGENT_NAME"),
        description="the agent name the worker registers (letters, digits, '_', '-', '.')",
    )  # fmt: skip
    environment: EnvironmentName | None = Field(
        None, description=f"the stack environment the worker serves, e.g. prod; `{LOCAL_ENVIRONMENT}` runs test models"
    )
    ring_timeout: RingTimeout = Field(DEFAULT_RING_TIMEOUT, description="seconds an outbound call may ring, 1 to 120")
    participant_wait: float = Field(
        10.0, gt=0, description="seconds an inbound job waits for its caller to join before it ends, e.g. 10"
    )
    connect_timeout: float = Field(
        20.0, gt=0, le=120, description="seconds a job may take to join its room before it ends, e.g. 20"
    )
    audio_timeout: float = Field(
        20.0, gt=0, le=120,
        description="seconds, once the agent session starts, for the caller to receive the agent's audio track "
        "(the bridge answers an inbound caller then) before the job hangs up and ends, e.g. 20",
    )  # fmt: skip
    load_threshold: float = Field(0.7, gt=0, le=1, description="LiveKit's target load, a fraction such as 0.7")
    http_port: int = Field(
        DEFAULT_HTTP_PORT, ge=0, le=65535, description="port of the health server (0: any free port)"
    )
    http_host: str = Field("", description="address the health server listens on (empty: every address)")
    max_jobs: CallCapacity | None = Field(None, description=f"calls the worker serves at once, 1 to {MAX_CALLS_LIMIT}")
    job_executor: Literal["process", "thread"] = Field("process", description="process or thread")
    num_idle_processes: int | None = Field(
        None, ge=0, description=f"job processes kept warm, e.g. 2 (default: the capacity, at most {WARM_PROCESSES})"
    )
    drain_timeout: int = Field(1800, ge=0, description="seconds to finish running calls after SIGTERM")
    metric_cluster: str | None = Field(None, description="ECS cluster the call metric is published under")
    metric_service: str | None = Field(None, description="ECS service the call metric is published under")
    metric_interval: float = Field(
        DEFAULT_METRIC_INTERVAL, ge=1, le=60, description="seconds between call-metric lines, 1 to 60, e.g. 15"
    )
    call_protection_minutes: CallProtectionMinutes | None = Field(
        None, description=f"minutes of ECS task protection per renewal while calls run, 1 to {MAX_PROTECTION_MINUTES}"
    )
    ecs_agent_uri: str | None = Field(
        None, validation_alias=AGENT_URI_ENV, description="the ECS agent's endpoint (set by ECS in every task)"
    )
    _defaults: AgentConfig = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        """Read the default layer too, so that a bad default also stops the worker at start."""
        self._defaults = worker_defaults(_DefaultsFromEnv(), offline=self.offline_models)

    @property
    def idle_processes(self) -> int | None:
        """Job processes kept warm, each ready for a call (its models built): ``SIPHON_NUM_IDLE_PROCESSES``, else the
        capacity up to ``WARM_PROCESSES``, else (no capacity) livekit-agents' default, one per core."""
        if self.num_idle_processes is not None:
            return self.num_idle_processes
        return min(self.max_jobs, WARM_PROCESSES) if self.max_jobs else None

    @property
    def offline_models(self) -> bool:
        """Whether this worker may run the offline test models (only in the ``local`` environment)."""
        return self.environment == LOCAL_ENVIRONMENT

    @property
    def defaults(self) -> AgentConfig:
        """The worker's default layer (its environment's, over ``BUILTIN_DEFAULTS``)."""
        return self._defaults

    @classmethod
    def from_env(cls) -> WorkerSettings:
        """Read the environment; raise ``SettingsError`` naming each invalid variable and what to write."""
        try:
            return cls()
        except ValidationError as e:
            problems = "".join(f"\n  {_problem(loc, message)}" for loc, message in describe_errors(e))
            raise SettingsError(f"invalid worker settings:{problems}") from None


def _problem(loc: str, message: str) -> str:
    """``VARIABLE: message; expected: <what the field takes>``."""
    name = loc.split(".")[0]
    info: FieldInfo | None = WorkerSettings.model_fields.get(name)
    variable = f"SIPHON_{name.upper()}" if info else name
    if info is None:  # a default-layer variable, or an alias
        info = AgentConfig.model_fields.get({v: k for k, v in DEFAULTS_ENV.items()}.get(name, ""))
    return f"{variable}: {message}" + (f"; expected: {info.description}" if info and info.description else "")


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


def call_layers(
    defaults: AgentConfig, meta: CallMetadata, attributes: Mapping[str, str] | None
) -> tuple[MergedConfig, tuple[MetadataWarning, ...]]:
    """The configuration of one call, lowest layer first: the worker's defaults, the route's ``agent_config``, the
    call's ``overrides``, the layer the SIP participant's ``attributes`` select from the route's
    ``attribute_overrides``, and its ``siphon.overrides`` attribute; plus what was dropped from that attribute."""
    attributes = attributes or {}
    attr_layer, warnings = (
        parse_agent_config(attributes[OVERRIDES_ATTRIBUTE], path=OVERRIDES_ATTRIBUTE)
        if OVERRIDES_ATTRIBUTE in attributes
        else (None, ())
    )
    selected = attribute_layer(meta.attribute_overrides, attributes)
    merged = merge_layers(
        ("default", defaults), ("route", meta.agent_config), ("call", meta.overrides), ("call", selected),
        ("call", attr_layer),
    )  # fmt: skip
    return merged, warnings


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
        get = attributes.get
        return cls(
            identity=identity,
            call_status=get("sip.callStatus") or None,
            phone_number=get("sip.phoneNumber") or None,
            trunk_phone_number=get("sip.trunkPhoneNumber") or None,
            trunk_id=get("sip.trunkID") or None,
            call_id=get("sip.callID") or None,
            rule_id=get("sip.ruleID") or None,
        )

    @staticmethod
    def looks_like_sip(attributes: Mapping[str, str]) -> bool:
        """True if the attributes are a SIP participant's (any ``sip.`` attribute)."""
        return any(k.startswith("sip.") for k in attributes)


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
        attrs.update(turns.attributes(cfg), end_call=str(end_call.enabled(cfg)).lower())
        return {ATTR_PREFIX + k: v for k, v in attrs.items()}


def text_sha(text: str | None) -> str | None:
    """Short hash of an instruction text, as published in ``siphon.*_instructions_sha`` attributes."""
    return hashlib.sha256(text.encode()).hexdigest()[:12] if text else None
