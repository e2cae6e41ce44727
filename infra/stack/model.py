"""The stack file (``stacks/<env>.yaml``): what users write, as pydantic models with ``extra="forbid"``.

Trunks reuse the SIP argument models of ``infra.livekit.*_trunk`` (so every LiveKit field is available
and validated the same way); a route's ``agent_config`` and ``context`` are the worker's own metadata
schema (``contract.metadata``). Secrets never live in the file: a trunk names the Pulumi config secret
that holds its password.
"""

from __future__ import annotations

from functools import cached_property
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, Field, JsonValue, field_validator, model_validator

from contract.deployment import CallCapacity, max_calls_for, worker_env
from contract.metadata import AgentConfig, RouteMetadata
from contract.types import (
    DEFAULT_RING_TIMEOUT,
    LOCAL_ENVIRONMENT,
    MAX_HEADER_OVERRIDES,
    AgentName,
    AttributeValue,
    EnvironmentName,
    RingTimeout,
    StackKey,
)
from infra.ecs.args import EcsWorkerSettings
from infra.livekit.dispatch_rule import RoomTimeouts, Rule
from infra.livekit.fields import E164, AttributeName, HeaderName, MediaConfig, Model, Pin
from infra.livekit.inbound_trunk import InboundTrunkArgs
from infra.livekit.outbound_trunk import OutboundTrunkArgs

Key = str  # a reference to a trunk, agent or route by its key (checked by infra.stack.checks)
LOCAL_MAX_CALLS = 10  # a local worker process without an ECS size to derive its capacity from


class _SecretPassword(Model):
    """Trunk fields for a password kept in Pulumi config, never in the file."""

    auth_password_secret: str = Field(
        default="",
        pattern=r"^$|^[A-Za-z][A-Za-z0-9_.-]*$",
        description="Pulumi config key holding the password (`pulumi config set --secret <key> ...`)",
    )
    name: str = Field(
        default="", max_length=256, exclude=True, description="LiveKit object name (default: <environment>-<key>)"
    )
    adopt_id: str = Field(
        default="", pattern=r"^$|^ST_\w+$", exclude=True,
        description="LiveKit id to adopt on the first up, for a name other objects share (written by import)",
    )  # fmt: skip

    @field_validator("auth_password", check_fields=False)
    @classmethod
    def _no_plain_password(cls, value: str) -> str:
        if value:
            raise ValueError(
                "must not be written in the stack file: store it with "
                "`pulumi config set --secret <key> <password>` and set auth_password_secret: <key>"
            )
        return value

    @model_validator(mode="after")
    def _auth_pair(self) -> Self:  # replaces the trunk args' check: the password comes from config
        user = getattr(self, "auth_username", "")
        if bool(user) != bool(self.auth_password_secret):
            missing = "auth_password_secret" if user else "auth_username"
            raise ValueError(f"digest auth needs both auth_username and auth_password_secret: set {missing} too")
        return self


class StackInboundTrunk(_SecretPassword, InboundTrunkArgs):
    """An inbound trunk: every InboundTrunkArgs field; the key is its name, the password comes from config."""


class StackOutboundTrunk(_SecretPassword, OutboundTrunkArgs):
    """An outbound trunk: every OutboundTrunkArgs field; the key is its name, the password comes from config."""


class LocalWorker(Model):
    """Run this agent as a local worker process (the `local` environment)."""

    processes: int = Field(default=1, ge=1, le=8)


class EcsDeployment(EcsWorkerSettings):
    """Where and how the agent's worker runs on AWS ECS Fargate: every ``EcsWorkerSettings`` field (infra.ecs)."""

    provider_key_secrets: dict[str, str] = Field(
        default_factory=dict,
        description="environment variable -> Pulumi config secret key, e.g. OPENAI_API_KEY: openaiApiKey",
    )


class Agent(Model):
    """An agent: the worker registered under ``agent_name`` (the key), its defaults, and where it runs."""

    defaults: AgentConfig = Field(default_factory=AgentConfig, description="the worker's default layer")
    max_calls: CallCapacity | None = Field(
        None, description=f"calls one worker serves at once (default: from ecs cpu and memory, else {LOCAL_MAX_CALLS})"
    )
    ecs: EcsDeployment | None = None
    local: LocalWorker | None = None

    @property
    def calls_per_worker(self) -> int:
        """The declared capacity, else the default for the ECS task size, else the local default."""
        if self.max_calls:
            return self.max_calls
        return max_calls_for(self.ecs.cpu, self.ecs.memory) if self.ecs else LOCAL_MAX_CALLS

    def worker_env(self, environment: str) -> dict[str, str]:
        """Settings of this agent's worker process in ``environment`` (its defaults and its capacity)."""
        return worker_env(environment=environment, defaults=self.defaults, max_calls=self.calls_per_worker)

    @property
    def workers(self) -> str:
        """Where its workers run: "ecs", "local", "ecs+local", or "none"."""
        return "+".join(w for w, on in (("ecs", self.ecs), ("local", self.local)) if on is not None) or "none"

    @property
    def has_worker(self) -> bool:
        """True when a worker for this agent is declared somewhere."""
        return self.workers != "none"


class HeaderOverride(Model):
    """Per-call layers chosen by a SIP header the caller's side sets (for example a customer tier)."""

    header: HeaderName = Field(description="SIP header, e.g. X-Customer-Tier")
    values: dict[AttributeValue, AgentConfig] = Field(min_length=1, description="header value -> configuration layer")


def _context(value: dict[str, JsonValue]) -> dict[str, JsonValue]:
    """Validate context with the worker's own rules (size limit) so both sides agree."""
    RouteMetadata(context=value or None)
    return value


Context = Annotated[dict[str, JsonValue], AfterValidator(_context)]


MetadataFormat = Literal["siphon-infra", "siphon", "none"]
"""How a route's dispatch carries its configuration: ``siphon-infra`` (``contract.metadata.RouteMetadata``, the rule's
metadata too, and the ``siphon.route`` attribute), ``siphon`` (SIPHON 0.1.4's payload: ``{"agent_config": {...},
**context}``, nothing on the rule) or ``none`` (no metadata at all). The last two keep objects made outside the
project as they are (``siphon-infra import``)."""
SIPHON_CONFIG_KEYS = ("llm", "tts", "stt", "greeting_instructions", "system_instructions")
"""The keys of SIPHON 0.1.4's ``agent_config``, in the order it writes them."""


class InboundRoute(Model):
    """Calls to ``numbers`` (through ``trunks``) reach ``agent`` with this route's configuration."""

    name: str = Field(default="", max_length=256, description="LiveKit rule name (default: <environment>-<key>)")
    adopt_id: str = Field(
        default="", pattern=r"^$|^SDR_\w+$",
        description="LiveKit id to adopt on the first up, for a name other rules share (written by import)",
    )  # fmt: skip
    numbers: list[E164] = Field(default_factory=list, description="called numbers (empty: every number)")
    trunks: list[Key] = Field(default_factory=list, description="inbound trunks (default: those with the numbers)")
    caller_numbers: list[E164] = Field(default_factory=list, description="only these callers (empty: any)")
    agent: Key = Field(default="", description="agent_name of a declared agent (none only for a direct rule)")
    metadata_format: MetadataFormat = Field(default="siphon-infra", description="how the dispatch carries the layer")
    rule: Rule | None = Field(default=None, description="default: individual, room prefix = route name")
    pin: Pin = ""
    hide_phone_number: bool = False
    agent_config: AgentConfig = Field(default_factory=AgentConfig, description="this route's layer")
    context: Context = Field(default_factory=dict, description="free-form customer context")
    attributes: dict[AttributeName, str] = Field(default_factory=dict)
    room: RoomTimeouts = Field(default_factory=RoomTimeouts)
    header_overrides: list[HeaderOverride] = Field(default_factory=list, max_length=MAX_HEADER_OVERRIDES)
    krisp_enabled: bool = False
    media: MediaConfig | None = None

    @model_validator(mode="after")
    def _consistent(self) -> InboundRoute:
        direct = self.rule is not None and self.rule.type == "direct"
        if direct and self.agent:
            raise ValueError(
                "a direct rule reuses one room, so the route's agent would be dispatched only for the first call: "
                "use an individual (default) or callee rule"
            )
        if not direct and not self.agent:
            raise ValueError("agent: is required (only a direct rule, which dispatches no agent, has none)")
        if (direct or self.metadata_format == "none") and (
            self.agent_config != AgentConfig() or self.context or self.header_overrides
        ):
            why = "a direct rule dispatches no agent" if direct else "metadata_format: none sends no metadata"
            raise ValueError(f"agent_config, context and header_overrides reach no agent here: {why}")
        if self.metadata_format == "siphon" and "agent_config" in self.context:
            raise ValueError("context: with metadata_format: siphon its keys sit beside agent_config: rename that key")
        if self.metadata_format != "siphon-infra" and self.header_overrides:
            raise ValueError("header_overrides need metadata_format: siphon-infra (SIPHON's payload cannot carry them)")
        if self.pin and self.rule is not None:
            raise ValueError(
                "pin: is not used when rule: is set (the rule's own pin is): move it to rule.pin, or drop rule:"
            )
        own = sorted(set(self.numbers) & set(self.caller_numbers))
        if own:
            raise ValueError(
                f"caller_numbers: {', '.join(own)} is a number this route answers (numbers:); caller_numbers filters "
                "who calls, so calls to it would only be accepted from itself: list the callers' numbers instead"
            )
        return self

    @property
    def pin_code(self) -> str:
        """The PIN callers must enter (the rule's, or the route's for the default rule)."""
        return self.rule.pin if self.rule else self.pin


class OutboundRoute(Model):
    """Calls placed through this route dial out via ``trunk`` with one of ``caller_ids``, handled by ``agent``."""

    trunk: Key
    caller_ids: list[E164] = Field(default_factory=list, description="subset of the trunk's numbers (default: all)")
    agent: Key
    agent_config: AgentConfig = Field(default_factory=AgentConfig)
    context: Context = Field(default_factory=dict)
    ring_timeout: RingTimeout = Field(default=DEFAULT_RING_TIMEOUT, description="seconds to wait for an answer")


class LiveKitProject(Model):
    """The LiveKit project (key and secret come from Pulumi config secrets, never from this file)."""

    url: str = Field(default="", pattern=r"^$|^wss?://\S+$", description="default: config livekit:url or LIVEKIT_URL")


class AwsSettings(Model):
    """AWS placement shared by the agents' ECS deployments."""

    region: str = Field(default="us-east-1", pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")
    cluster: str = Field(default="", description="ECS cluster name (default: siphon-<environment>)")
    create_cluster: bool = False
    subnets: list[str] = Field(default_factory=list, description="default: the default VPC's subnets")
    security_groups: list[str] = Field(default_factory=list)
    assign_public_ip: bool = False


class StackFile(Model):
    """One environment's complete routing."""

    environment: EnvironmentName
    protect: bool = Field(default=False, description="protect resources from accidental deletion (prod)")
    livekit: LiveKitProject = Field(default_factory=LiveKitProject)
    aws: AwsSettings = Field(default_factory=AwsSettings)
    inbound_trunks: dict[StackKey, StackInboundTrunk] = Field(default_factory=dict)
    outbound_trunks: dict[StackKey, StackOutboundTrunk] = Field(default_factory=dict)
    agents: dict[AgentName, Agent] = Field(default_factory=dict)
    inbound_routes: dict[StackKey, InboundRoute] = Field(default_factory=dict)
    outbound_routes: dict[StackKey, OutboundRoute] = Field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        """The `local` environment: the one that may run the offline test models (and skips production checks)."""
        return self.environment == LOCAL_ENVIRONMENT

    @cached_property
    def trunks_by_number(self) -> dict[str, list[str]]:
        """The inbound trunks serving each number, in declaration order (built once: routes look it up)."""
        index: dict[str, list[str]] = {}
        for key, trunk in self.inbound_trunks.items():
            for number in dict.fromkeys(trunk.numbers):
                index.setdefault(number, []).append(key)
        return index

    def object_name(self, key: str, name: str = "") -> str:
        """LiveKit object name for a trunk or route key: its declared ``name``, else the key prefixed with the
        environment (unique per project)."""
        return name or f"{self.environment}-{key}"
