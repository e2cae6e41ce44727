"""The stack file (``stacks/<env>.yaml``): what users write, as pydantic models with ``extra="forbid"``.

Trunks reuse the SIP argument models of ``infra.livekit.*_trunk`` (so every LiveKit field is available
and validated the same way); a route's ``agent_config`` and ``context`` are the worker's own metadata
schema (``contract.metadata``). Secrets never live in the file: a trunk names the Pulumi config secret
that holds its password.

The facts derived from the whole file (a route's trunks, the header mappings its overrides need) are cached
properties of ``StackFile``, and each entry builds its own resource arguments (``args``). A stack field that fills
an argument of another name says so with its ``serialization_alias``: ``infra.stack.plan`` reads those to place an
argument's error at the stack field it comes from.
"""

from __future__ import annotations

from functools import cached_property
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    Field,
    JsonValue,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from contract.deployment import CallCapacity, max_calls_for, worker_env
from contract.metadata import (
    SIPHON_CONFIG_KEY,
    AgentConfig,
    AllowedOverrides,
    Direction,
    RouteMetadata,
    siphon_payload,
)
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
from contract.wire import HEADER_ATTRIBUTE_PREFIX, ROUTE_ATTRIBUTE
from infra.ecs.args import AgentWorkerArgs, EcsWorkerSettings
from infra.livekit.dispatch_rule import DispatchRuleArgs, RoomTimeouts, Rule
from infra.livekit.fields import (
    E164,
    MAX_NAME_CHARS,
    AttributeName,
    DispatchRuleId,
    HeaderName,
    MediaConfig,
    Model,
    Pin,
    TrunkId,
    object_name,
)
from infra.livekit.inbound_trunk import InboundTrunkArgs
from infra.livekit.outbound_trunk import OutboundTrunkArgs

Key = str  # a reference to a trunk, agent or route by its key (checked by infra.stack.checks)
LOCAL_MAX_CALLS = 10  # a local worker process without an ECS size to derive its capacity from

SECRET_PLACEHOLDER = "[secret from config]"
"""Stands for a config secret in the arguments; the program passes the config value (a Pulumi secret)."""
URL_PLACEHOLDER = "wss://livekit-url-from-config.invalid"
"""Stands for the LiveKit URL when the stack file names none (config ``livekit:url`` or LIVEKIT_URL)."""
SUBNET_PLACEHOLDER = "subnet-00000000000000000"
"""Stands for the default VPC's subnets, looked up by the program when ``aws.subnets`` is empty."""
_ATTRIBUTE: TypeAdapter[str] = TypeAdapter(AttributeName)


def _valid_attribute(name: str) -> bool:
    """An attribute a trunk may map a header to (one that is not is reported once, at the route's header)."""
    try:
        _ATTRIBUTE.validate_python(name)
    except ValidationError:
        return False
    return True


class _SecretPassword(Model):
    """Trunk fields for a password kept in Pulumi config, never in the file."""

    auth_password_secret: str = Field(
        default="",
        pattern=r"^$|^[A-Za-z][A-Za-z0-9_.-]*$",
        serialization_alias="auth_password",
        description="Pulumi config key holding the password (`pulumi config set --secret <key> ...`)",
    )
    name: str = Field(
        default="", max_length=MAX_NAME_CHARS, exclude=True,
        description="LiveKit object name (default: <environment>-<key>)",
    )  # fmt: skip
    adopt_id: TrunkId = Field(
        default="", exclude=True,
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

    def _args_data(self, name: str) -> dict[str, Any]:
        """The trunk's argument fields: its own, its LiveKit ``name``, a placeholder for its password."""
        data = self.model_dump(exclude={"auth_password_secret", "auth_password"})  # name, adopt_id: exclude=True
        return {**data, "name": name, "auth_password": SECRET_PLACEHOLDER if self.auth_password_secret else ""}


class StackInboundTrunk(_SecretPassword, InboundTrunkArgs):
    """An inbound trunk: every InboundTrunkArgs field; the key is its name, the password comes from config."""

    def args(self, key: str, stack: StackFile) -> InboundTrunkArgs:
        """Its ``InboundTrunkArgs`` (named as ``infra.livekit.fields.object_name`` says), mapping also the headers its
        routes' overrides read (``StackFile.header_mappings``)."""
        data = self._args_data(object_name(stack.environment, key, self.name))
        data["headers_to_attributes"] = {**data["headers_to_attributes"], **stack.header_mappings[key]}
        return InboundTrunkArgs.model_validate(data)


class StackOutboundTrunk(_SecretPassword, OutboundTrunkArgs):
    """An outbound trunk: every OutboundTrunkArgs field; the key is its name, the password comes from config."""

    def args(self, key: str, stack: StackFile) -> OutboundTrunkArgs:
        """Its ``OutboundTrunkArgs`` (named as ``infra.livekit.fields.object_name`` says)."""
        return OutboundTrunkArgs.model_validate(self._args_data(object_name(stack.environment, key, self.name)))


class LocalWorker(Model):
    """Run this agent as a local worker process (the `local` environment)."""

    processes: int = Field(default=1, ge=1, le=8)


class EcsDeployment(EcsWorkerSettings):
    """Where and how the agent's worker runs on AWS ECS Fargate: every ``EcsWorkerSettings`` field (infra.ecs)."""

    provider_key_secrets: dict[str, str] = Field(
        default_factory=dict,
        serialization_alias="provider_keys",
        description="environment variable -> Pulumi config secret key, e.g. OPENAI_API_KEY: openaiApiKey",
    )


class Agent(Model):
    """An agent: the worker registered under ``agent_name`` (the key), its defaults, and where it runs."""

    defaults: AgentConfig = Field(
        default_factory=AgentConfig, serialization_alias="worker", description="the worker's default layer"
    )
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

    def args(self, key: str, stack: StackFile, livekit_url: str) -> AgentWorkerArgs:
        """The ``AgentWorkerArgs`` of its ECS deployment (it has one), with placeholders for what only the
        deployment knows: secrets, the default VPC's subnets and, when neither file nor config names it, the URL."""
        assert self.ecs is not None
        aws = stack.aws
        data = {
            **self.ecs.model_dump(exclude={"provider_key_secrets"}, exclude_defaults=True),
            "agent_name": key,
            "stack": stack.environment,
            "environment": stack.environment,
            "cluster_name": aws.cluster or f"siphon-{stack.environment}",
            "create_cluster": aws.create_cluster,
            "subnets": aws.subnets or [SUBNET_PLACEHOLDER],
            "security_groups": aws.security_groups,
            "assign_public_ip": aws.assign_public_ip,
            "livekit_url": livekit_url or URL_PLACEHOLDER,
            "livekit_api_key": SECRET_PLACEHOLDER,
            "livekit_api_secret": SECRET_PLACEHOLDER,
            "provider_keys": dict.fromkeys(self.ecs.provider_key_secrets, SECRET_PLACEHOLDER),
            "worker": self.defaults.model_dump(mode="json", exclude_none=True),
            "max_calls": self.calls_per_worker,
        }
        return AgentWorkerArgs.model_validate(data)


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


_ALLOWED_HELP = (
    "what the caller-sourced layer (the SIP participant's siphon.overrides attribute) may switch to: "
    "{llm: [...], stt: [...], tts: [...], instructions: false}; default: nothing"
)


class InboundRoute(Model):
    """Calls to ``numbers`` (through ``trunks``) reach ``agent`` with this route's configuration."""

    name: str = Field(
        default="", max_length=MAX_NAME_CHARS, description="LiveKit rule name (default: <environment>-<key>)"
    )
    adopt_id: DispatchRuleId = Field(
        default="",
        description="LiveKit id to adopt on the first up, for a name other rules share (written by import)",
    )  # fmt: skip
    numbers: list[E164] = Field(default_factory=list, description="called numbers (empty: every number)")
    trunks: list[Key] = Field(default_factory=list, description="inbound trunks (default: those with the numbers)")
    caller_numbers: list[E164] = Field(
        default_factory=list, serialization_alias="inbound_numbers", description="only these callers (empty: any)"
    )
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
    allowed_overrides: AllowedOverrides | None = Field(default=None, description=_ALLOWED_HELP)
    krisp_enabled: bool = False
    media: MediaConfig | None = None

    @model_validator(mode="after")
    def _consistent(self) -> InboundRoute:
        direct = self.rule is not None and self.rule.type == "direct"  # an agent too: DispatchRuleArgs refuses it
        if not direct and not self.agent:
            raise ValueError("agent: is required (only a direct rule, which dispatches no agent, has none)")
        if ((direct and not self.agent) or self.metadata_format == "none") and (
            self.agent_config != AgentConfig() or self.context or self.header_overrides or self.allowed_overrides
        ):
            why = "a direct rule dispatches no agent" if direct else "metadata_format: none sends no metadata"
            raise ValueError(
                f"agent_config, context, header_overrides and allowed_overrides reach no agent here: {why}"
            )
        if self.metadata_format == "siphon" and SIPHON_CONFIG_KEY in self.context:
            raise ValueError("context: with metadata_format: siphon its keys sit beside agent_config: rename that key")
        if self.metadata_format != "siphon-infra" and self.header_overrides:
            raise ValueError("header_overrides need metadata_format: siphon-infra (SIPHON's payload cannot carry them)")
        if self.metadata_format != "siphon-infra" and self.allowed_overrides:
            raise ValueError(
                "allowed_overrides needs metadata_format: siphon-infra (SIPHON's payload cannot carry it; "
                "without it a caller's siphon.overrides attribute may set nothing)"
            )
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

    def metadata(self, key: str, attribute_overrides: dict[str, dict[str, AgentConfig]] | None) -> str:
        """What its agent dispatch carries, in its ``metadata_format`` (raises ValidationError when the header
        overrides select attributes or values the worker's schema refuses)."""
        if self.metadata_format == "siphon":
            return siphon_payload(self.agent_config, self.context)
        if self.metadata_format == "none" or not self.agent:
            return ""
        return route_metadata(key, self, "inbound", attribute_overrides).to_json()

    def args(self, key: str, stack: StackFile, metadata: str) -> DispatchRuleArgs:
        """Its ``DispatchRuleArgs`` on its trunks (``StackFile.route_trunks``: the trunk keys, which the program
        replaces with their ids); the default rule's rooms are prefixed with the route's default name."""
        name, room_prefix = object_name(stack.environment, key, self.name), object_name(stack.environment, key)
        trunks = stack.route_trunks[key]
        ours = self.metadata_format == "siphon-infra"
        rule = self.rule.model_dump() if self.rule else {"type": "individual", "room_prefix": room_prefix}
        agents = [{"agent_name": self.agent, "metadata": metadata}] if self.agent else []
        same = {"numbers", "caller_numbers", "hide_phone_number", "krisp_enabled", "media"}  # caller_numbers: aliased
        data = {
            **self.model_dump(by_alias=True, include=same),
            "name": name,
            "metadata": metadata if ours else "",
            "attributes": {ROUTE_ATTRIBUTE: key, **self.attributes} if ours else dict(self.attributes),
            "rule": {**rule, "pin": self.pin_code},
            "trunk_ids": trunks,
            "room_config": {**self.room.model_dump(), "agents": agents},
        }
        return DispatchRuleArgs.model_validate(data)


class OutboundRoute(Model):
    """Calls placed through this route dial out via ``trunk`` with one of ``caller_ids``, handled by ``agent``."""

    trunk: Key
    caller_ids: list[E164] = Field(default_factory=list, description="subset of the trunk's numbers (default: all)")
    agent: Key
    agent_config: AgentConfig = Field(default_factory=AgentConfig)
    context: Context = Field(default_factory=dict)
    ring_timeout: RingTimeout = Field(default=DEFAULT_RING_TIMEOUT, description="seconds to wait for an answer")
    allowed_overrides: AllowedOverrides | None = Field(default=None, description=_ALLOWED_HELP)


def route_metadata(
    route_key: str,
    route: InboundRoute | OutboundRoute,
    direction: Direction,
    attribute_overrides: dict[str, dict[str, AgentConfig]] | None = None,
) -> RouteMetadata:
    """The metadata the worker receives for calls on this route (the route layer of the merge)."""
    layer = route.agent_config if route.agent_config != AgentConfig() else None
    return RouteMetadata(
        route=route_key,
        direction=direction,
        agent_config=layer,
        context=route.context or None,
        attribute_overrides=attribute_overrides,
        allowed_overrides=route.allowed_overrides,
    )


class LiveKitProject(Model):
    """The LiveKit project (key and secret come from Pulumi config secrets, never from this file)."""

    url: str = Field(
        default="",
        pattern=r"^$|^wss?://\S+$",
        serialization_alias="livekit_url",
        description="default: config livekit:url or LIVEKIT_URL",
    )


class AwsSettings(Model):
    """AWS placement shared by the agents' ECS deployments."""

    region: str = Field(default="us-east-1", pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")
    cluster: str = Field(
        default="", serialization_alias="cluster_name", description="ECS cluster name (default: siphon-<environment>)"
    )
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

    @cached_property
    def route_trunks(self) -> dict[str, list[str]]:
        """Each inbound route's trunks: the declared ones, else every trunk serving one of its numbers (in the
        file's order)."""
        out: dict[str, list[str]] = {}
        for key, route in self.inbound_routes.items():
            serving = {k for n in route.numbers for k in self.trunks_by_number.get(n, ())}
            out[key] = list(route.trunks) or [k for k in self.inbound_trunks if k in serving]
        return out

    @cached_property
    def header_attributes(self) -> dict[str, dict[str, str]]:
        """Each inbound route's override headers -> the participant attribute each arrives as on the route's
        trunks (a trunk's own ``headers_to_attributes`` wins, else ``siphon.header.<header>``)."""
        out: dict[str, dict[str, str]] = {}
        for key, route in self.inbound_routes.items():
            declared = {h.lower(): a for t in reversed(self.route_trunks[key]) if t in self.inbound_trunks
                        for h, a in self.inbound_trunks[t].headers_to_attributes.items()}  # fmt: skip
            out[key] = {o.header: declared.get(o.header.lower(), HEADER_ATTRIBUTE_PREFIX + o.header.lower())
                        for o in route.header_overrides}  # fmt: skip
        return out

    @cached_property
    def header_mappings(self) -> dict[str, dict[str, str]]:
        """The ``headers_to_attributes`` entries each inbound trunk adds for the overrides of the routes on it
        (an attribute the worker's schema refuses is left out: it is reported once, at the route's header)."""
        out: dict[str, dict[str, str]] = {key: {} for key in self.inbound_trunks}
        for key, attributes in self.header_attributes.items():
            for trunk in (t for t in self.route_trunks[key] if t in out):
                declared = {h.lower() for h in self.inbound_trunks[trunk].headers_to_attributes}
                out[trunk].update({h: a for h, a in attributes.items()
                                   if h.lower() not in declared and _valid_attribute(a)})  # fmt: skip
        return out

    @cached_property
    def attribute_overrides(self) -> dict[str, dict[str, dict[str, AgentConfig]] | None]:
        """Each inbound route's ``attribute_overrides`` for the worker (attribute -> value -> layer), or None."""
        return {key: {self.header_attributes[key][o.header]: dict(o.values) for o in route.header_overrides} or None
                for key, route in self.inbound_routes.items()}  # fmt: skip
