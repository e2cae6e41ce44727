"""Configuration layers, the merge rule, SIP participant facts, and the resolved per-call configuration.

Layers, lowest first:

1. **worker defaults**: the worker's environment (``WorkerSettings.from_env``), else the offline local set;
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
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from worker import end_call, turns
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
from worker.turns import TURN_FIELDS

LayerName = Literal["default", "route", "call"]
ATTR_PREFIX = "siphon."
OVERRIDES_ATTRIBUTE = "siphon.overrides"
"""Participant attribute carrying a per-call ``AgentConfig`` JSON (inbound per-call layer)."""

DEFAULT_SYSTEM_INSTRUCTIONS = "You are a helpful voice assistant on a phone call. Keep answers short."
DEFAULT_GREETING_INSTRUCTIONS = "Greet the caller and introduce yourself briefly."


def _env_float(env: Mapping[str, str], key: str, default: float) -> float:
    try:
        return float(env.get(key, default))
    except ValueError:
        return default


AGENT_NAME_ENV = "SIPHON_AGENT_NAME"
MAX_JOBS_ENV = "SIPHON_MAX_JOBS"  # the worker's call capacity (calls at once), set by every deployment
MAX_CALLS_LIMIT = 200  # upper bound of a declared capacity: one worker process supervises every call's job


def max_calls_for(cpu_units: int, memory_mib: int) -> int:
    """Default call capacity of a worker with this much CPU (1024 = one vCPU) and memory: a call's job
    process takes about an eighth of a vCPU and 256 MiB with cloud models."""
    return max(1, min(cpu_units // 128, memory_mib // 256, MAX_CALLS_LIMIT))


DRAIN_TIMEOUT_ENV = "SIPHON_DRAIN_TIMEOUT"  # seconds to finish running calls after SIGTERM
# AgentConfig field -> environment variable the worker reads its default for that field from.
DEFAULTS_ENV: dict[str, str] = {
    "llm": "SIPHON_DEFAULT_LLM",
    "stt": "SIPHON_DEFAULT_STT",
    "tts": "SIPHON_DEFAULT_TTS",
    "system_instructions": "SIPHON_SYSTEM_INSTRUCTIONS",
    "greeting_instructions": "SIPHON_GREETING_INSTRUCTIONS",
    "send_greeting": "SIPHON_SEND_GREETING",
    "end_call": "SIPHON_END_CALL",
    **{name: f"SIPHON_{name.upper()}" for name in TURN_FIELDS},  # SIPHON_ALLOW_INTERRUPTIONS, ...
}


def defaults_env(layer: AgentConfig) -> dict[str, str]:
    """The environment that makes ``WorkerSettings.from_env`` use ``layer`` as the worker defaults.

    Deployments (ECS task definitions, local worker processes) call this instead of naming variables.
    """
    out: dict[str, str] = {}
    for name, var in DEFAULTS_ENV.items():
        value = getattr(layer, name)
        if value is None:
            continue
        if isinstance(value, bool):
            out[var] = "true" if value else "false"
        elif isinstance(value, str):
            out[var] = value
        elif isinstance(value, int | float):
            out[var] = repr(value)
        else:  # a provider dict
            out[var] = json.dumps(value.model_dump(mode="json"), separators=(",", ":"))
    return out


@dataclass(frozen=True)
class WorkerSettings:
    """The worker's own settings, read from its environment (as set by the deployment).

    ``SIPHON_AGENT_NAME`` (or livekit-agents' ``LIVEKIT_AGENT_NAME``): the agent name to register.
    ``SIPHON_DEFAULT_LLM`` / ``_STT`` / ``_TTS``: default model specs (strings, or provider-dict JSON).
    ``SIPHON_SYSTEM_INSTRUCTIONS``, ``SIPHON_GREETING_INSTRUCTIONS``, ``SIPHON_SEND_GREETING``, ``SIPHON_END_CALL``,
    and one ``SIPHON_<FIELD>`` per turn-taking field of ``worker.turns.TurnTaking`` (``SIPHON_ALLOW_INTERRUPTIONS``...).
    ``SIPHON_RING_TIMEOUT`` (outbound answer wait, s), ``SIPHON_PARTICIPANT_WAIT`` (inbound wait for the
    SIP participant, s; a job whose caller has not joined by then ends), ``SIPHON_HTTP_PORT`` /
    ``SIPHON_HTTP_HOST`` (health server), ``SIPHON_JOB_EXECUTOR`` (process|thread),
    ``SIPHON_NUM_IDLE_PROCESSES``, ``SIPHON_DRAIN_TIMEOUT``.
    ``SIPHON_MAX_JOBS``: the worker's call capacity. LiveKit only hands jobs to workers whose reported load
    is below its target load (``SIPHON_LOAD_THRESHOLD``, 0.7 as on livekit-server), so the worker reports
    load = target x active calls / capacity: it is full, for the server and for itself, at exactly that
    many calls. Without it, load is host CPU, which starves a busy small host.
    """

    agent_name: str
    defaults: AgentConfig
    default_warnings: tuple[MetadataWarning, ...] = ()
    ring_timeout: float = 30.0
    participant_wait: float = 10.0
    load_threshold: float = 0.7  # livekit-server's default agents.target_load
    http_port: int = 8081
    http_host: str = ""
    max_jobs: int | None = None
    job_executor: Literal["process", "thread"] = "process"
    num_idle_processes: int | None = None
    drain_timeout: int = 1800

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerSettings:
        """Read settings; invalid values are warned about and replaced by the built-in defaults."""
        env = os.environ if env is None else env
        raw: dict[str, object] = {
            "llm": _spec_env(env.get(DEFAULTS_ENV["llm"])) or "local/scripted",
            "stt": _spec_env(env.get(DEFAULTS_ENV["stt"])) or "local/silent",
            "tts": _spec_env(env.get(DEFAULTS_ENV["tts"])) or "local/espeak-ng",
            "system_instructions": env.get(DEFAULTS_ENV["system_instructions"]) or DEFAULT_SYSTEM_INSTRUCTIONS,
            "greeting_instructions": env.get(DEFAULTS_ENV["greeting_instructions"]) or DEFAULT_GREETING_INSTRUCTIONS,
            "send_greeting": env.get(DEFAULTS_ENV["send_greeting"], "true").strip().lower() not in ("0", "false", "no"),
            # end_call and turn-taking: validated (pydantic reads "0.5", "false") by parse_agent_config below
            **{name: env[DEFAULTS_ENV[name]] for name in ("end_call", *TURN_FIELDS) if env.get(DEFAULTS_ENV[name])},
        }
        defaults, warnings = parse_agent_config(raw, path="defaults")
        idle = env.get("SIPHON_NUM_IDLE_PROCESSES")
        max_jobs = env.get(MAX_JOBS_ENV)
        executor = env.get("SIPHON_JOB_EXECUTOR", "process")
        return cls(
            agent_name=env.get(AGENT_NAME_ENV) or env.get("LIVEKIT_AGENT_NAME") or "siphon-agent",
            defaults=defaults,
            default_warnings=warnings,
            ring_timeout=_env_float(env, "SIPHON_RING_TIMEOUT", 30.0),
            participant_wait=_env_float(env, "SIPHON_PARTICIPANT_WAIT", 10.0),
            load_threshold=_env_float(env, "SIPHON_LOAD_THRESHOLD", 0.7),
            http_port=int(_env_float(env, "SIPHON_HTTP_PORT", 8081)),
            http_host=env.get("SIPHON_HTTP_HOST", ""),
            max_jobs=int(max_jobs) if max_jobs and max_jobs.isdigit() and int(max_jobs) > 0 else None,
            job_executor="thread" if executor == "thread" else "process",
            num_idle_processes=int(idle) if idle and idle.isdigit() else None,
            drain_timeout=int(_env_float(env, DRAIN_TIMEOUT_ENV, 1800)),
        )


def _spec_env(value: str | None) -> object:
    if not value:
        return None
    if value.lstrip().startswith("{"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


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
        }
        attrs.update({kind: self.models.get(kind, "") for kind in MODEL_KINDS})
        attrs.update(turns.attributes(cfg), end_call=str(end_call.enabled(cfg)).lower())
        return {ATTR_PREFIX + k: v for k, v in attrs.items()}


def text_sha(text: str | None) -> str | None:
    """Short hash of an instruction text, as published in ``siphon.*_instructions_sha`` attributes."""
    return hashlib.sha256(text.encode()).hexdigest()[:12] if text else None
