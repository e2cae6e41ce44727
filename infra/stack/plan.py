"""The plan: one pure function from a stack file to the exact arguments of every resource it declares.

``compile_stack`` validates the file, cross-checks it, and builds the argument models the resources
take (``InboundTrunkArgs``, ``OutboundTrunkArgs``, ``DispatchRuleArgs``, ``AgentWorkerArgs``) plus the
derived facts (each route's trunks, LiveKit names, routing rows). ``siphon-infra validate``, ``routes``,
``summary``, ``verify`` and the Pulumi program all use it, so any argument a resource would refuse at
preview is refused by ``validate`` first, at the stack file's line.

What only the deployment knows stays a placeholder here and is filled in by the program: secrets
(trunk passwords, LiveKit key and secret, model keys: config secrets, checked to exist in the stack's
Pulumi config file), trunk ids (the route's trunk keys stand in) and, when the file names none, the
default VPC's subnets.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from infra.ecs.args import AgentWorkerArgs
from infra.livekit.args import AgentDispatch, DispatchRuleArgs, InboundTrunkArgs, OutboundTrunkArgs
from infra.stack.checks import cross_check, route_trunks
from infra.stack.headers import route_attribute_overrides, trunk_header_mappings
from infra.stack.load import Problem, StackFileError, _line_of, load, yaml_problem
from infra.stack.model import SIPHON_CONFIG_KEYS, InboundRoute, OutboundRoute, StackFile
from worker.metadata import AgentConfig, Direction, RouteMetadata
from worker.rules import Model, describe_error, describe_errors

SECRET_PLACEHOLDER = "[secret from config]"
"""Stands for a config secret in the plan; the program passes the config value (a Pulumi secret)."""
URL_PLACEHOLDER = "wss://livekit-url-from-config.invalid"
"""Stands for the LiveKit URL when the stack file names none (config ``livekit:url`` or LIVEKIT_URL)."""
SUBNET_PLACEHOLDER = "subnet-00000000000000000"
"""Stands for the default VPC's subnets, looked up by the program when ``aws.subnets`` is empty."""


@dataclass(frozen=True)
class StackConfig:
    """What validation may read from the stack's Pulumi config file (no decryption, no credentials)."""

    file: str = ""
    """The config file (``Pulumi.<environment>.yaml`` beside the stack file); empty: secret references unchecked."""
    exists: bool = False
    keys: frozenset[str] = frozenset()
    """Config keys the file sets (without the project prefix)."""
    secure: frozenset[str] = frozenset()
    """The keys it sets as secrets (encrypted)."""
    imports: bool = False
    """The file imports Pulumi ESC environments (``environment:``), whose keys cannot be read offline."""
    livekit_url: str = ""

    @classmethod
    def read(cls, stack_file: Path, environment: str) -> StackConfig:
        """``Pulumi.<environment>.yaml`` beside the stack file (and the project name from ``Pulumi.yaml``)."""
        path = stack_file.with_name(f"Pulumi.{environment}.yaml")
        if not path.is_file():
            return cls(str(path))
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise StackFileError([yaml_problem(str(path), e)]) from None
        config = doc.get("config") or {}
        project = _project_name(stack_file)
        keys = {k: k.removeprefix(f"{project}:") for k in config}
        secure = frozenset(short for k, short in keys.items() if isinstance(config[k], dict) and "secure" in config[k])
        url = config.get("livekit:url")
        return cls(str(path), True, frozenset(keys.values()), secure, bool(doc.get("environment")),
                   url if isinstance(url, str) else "")  # fmt: skip


def _project_name(stack_file: Path) -> str:
    for folder in (stack_file.parent, *stack_file.parents):
        project = folder / "Pulumi.yaml"
        if project.is_file():
            try:
                return str((yaml.safe_load(project.read_text()) or {}).get("name", "siphon"))
            except yaml.YAMLError:
                break
    return "siphon"


TrunkArgs = TypeVar("TrunkArgs", InboundTrunkArgs, OutboundTrunkArgs)


@dataclass(frozen=True)
class Trunk(Generic[TrunkArgs]):
    """A trunk's arguments and the config key of its password (the plan holds a placeholder)."""

    args: TrunkArgs
    password_secret: str = ""
    adopt_id: str = ""


@dataclass(frozen=True)
class Route:
    """An inbound route's dispatch rule (``trunk_ids`` are the route's trunk keys here) and its trunks."""

    rule: DispatchRuleArgs
    trunks: list[str]
    adopt_id: str = ""

    @property
    def dispatch(self) -> AgentDispatch:
        """The agent the rule dispatches, with the metadata the worker receives (the route layer)."""
        assert self.rule.room_config is not None  # the plan always builds one
        return self.rule.room_config.agents[0]


class OutboundCall(Model):
    """What a call placed through an outbound route needs: the stack output ``outbound_routes.<route>``
    (``trunk_id`` is filled in by the deployment) that ``place_call`` reads."""

    trunk: str
    caller_ids: list[str]
    agent_name: str
    ring_timeout: float
    metadata: str
    trunk_id: str = ""


@dataclass(frozen=True)
class Worker:
    """An agent's ECS deployment arguments and where its secrets come from."""

    args: AgentWorkerArgs
    provider_key_secrets: dict[str, str]
    default_subnets: bool
    livekit_url_from_config: bool


@dataclass(frozen=True)
class Plan:
    """Everything a stack declares, as the resources will receive it."""

    stack: StackFile
    inbound_trunks: dict[str, Trunk[InboundTrunkArgs]] = field(default_factory=dict)
    outbound_trunks: dict[str, Trunk[OutboundTrunkArgs]] = field(default_factory=dict)
    inbound_routes: dict[str, Route] = field(default_factory=dict)
    outbound_routes: dict[str, OutboundCall] = field(default_factory=dict)
    workers: dict[str, Worker] = field(default_factory=dict)

    def routing_rows(self) -> list[dict[str, str]]:
        """One row per (direction, number): route, trunks, agent and where its worker runs."""
        stack, rows = self.stack, []
        for key, route in stack.inbound_routes.items():
            agent, worker = (route.agent, stack.agents[route.agent].workers) if route.agent else ("(none: direct)", "-")
            for number in route.numbers or ["(any)"]:
                rows.append({"direction": "inbound", "number": number, "route": key,
                             "trunks": ", ".join(self.inbound_routes[key].trunks) or "(any)", "agent": agent,
                             "worker": worker})  # fmt: skip
        for key, out in self.outbound_routes.items():
            rows.append({"direction": "outbound", "number": ", ".join(out.caller_ids), "route": key,
                         "trunks": out.trunk, "agent": out.agent_name,
                         "worker": stack.agents[out.agent_name].workers})  # fmt: skip
        return rows


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
    )


def _plain(value: object) -> object:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def siphon_payload(route: InboundRoute) -> str:
    """SIPHON 0.1.4's inbound payload, as its ``Dispatch`` writes it: ``agent_config`` with its five keys in its
    order (then any other key the layer sets), then the route's ``context`` keys (``inbound_trunk_id``,
    ``agent_number``), serialised with ``json.dumps``' defaults."""
    layer = route.agent_config
    agent_config = {k: _plain(getattr(layer, k)) for k in SIPHON_CONFIG_KEYS}
    agent_config.update(layer.model_dump(mode="json", exclude_none=True, exclude=set(SIPHON_CONFIG_KEYS)))
    return json.dumps({"agent_config": agent_config, **route.context})


def dispatch_metadata(
    route_key: str, route: InboundRoute, attribute_overrides: dict[str, dict[str, AgentConfig]] | None = None
) -> str:
    """The metadata an inbound route's agent dispatch carries, in the route's ``metadata_format``."""
    if route.metadata_format == "siphon":
        return siphon_payload(route)
    if route.metadata_format == "none" or not route.agent:
        return ""
    return route_metadata(route_key, route, "inbound", attribute_overrides).to_json()


# Where an argument field of a resource comes from in the stack file (prefix + this), when not the same name.
_TRUNK_FIELDS = {"auth_password": "auth_password_secret", "name": "name"}
_RULE_FIELDS = {
    "name": "name", "metadata": "", "inbound_numbers": "caller_numbers", "trunk_ids": "trunks", "rule.pin": "pin",
    "room_config.agents.0.agent_name": "agent", "room_config.agents.0.metadata": "", "room_config": "room",
}  # fmt: skip


def _worker_field(key: str, field_path: str) -> str:
    top = field_path.split(".")[0]
    where = {
        "agent_name": f"agents.{key}", "environment": "environment", "stack": "environment",
        "cluster_name": "aws.cluster", "create_cluster": "aws.create_cluster", "subnets": "aws.subnets",
        "security_groups": "aws.security_groups", "assign_public_ip": "aws.assign_public_ip",
        "livekit_url": "livekit.url", "livekit_api_key": "livekit", "livekit_api_secret": "livekit",
        "provider_keys": f"agents.{key}.ecs.provider_key_secrets", "worker": f"agents.{key}.defaults",
        "max_calls": f"agents.{key}.max_calls",
    }.get(top)  # fmt: skip
    return where + field_path[len(top) :] if where else f"agents.{key}.ecs.{field_path}"


def _mapped(prefix: str, renames: dict[str, str]) -> Callable[[str], str]:
    def where(field_path: str) -> str:
        for arg, stack_field in sorted(renames.items(), key=lambda kv: -len(kv[0])):
            if field_path == arg or field_path.startswith(arg + "."):
                rest = stack_field + field_path[len(arg) :]
                return f"{prefix}.{rest}".rstrip(".") if rest.strip(".") else prefix
        return f"{prefix}.{field_path}"

    return where


def _build(model: type[BaseModel], data: dict[str, Any], where: Callable[[str], str], problems: list) -> Any:
    """``model(**data)``, or None with each error added to ``problems`` at its stack-file field."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        for field_path, message in describe_errors(e):
            problems.append((where(field_path if field_path != "(root)" else ""), message))
        return None


def _metadata_problems(
    where: str, route: InboundRoute, overrides: dict[str, dict[str, AgentConfig]], error: ValidationError
) -> Iterator[tuple[str, str]]:
    """The errors of a route's metadata (built from the route, not written in the file) at the route's fields: an
    ``attribute_overrides`` entry at the header override it comes from (its header, or the value selecting it)."""
    attributes = dict(zip(overrides, range(len(route.header_overrides)), strict=True))
    for err in error.errors(include_input=False, include_url=False):
        loc, (_, message) = err["loc"], describe_error(err)
        if loc[:1] != ("attribute_overrides",) or len(loc) < 3 or loc[1] not in attributes:
            yield f"{where}.{loc[0]}" if loc and loc[0] in type(route).model_fields else where, message
            continue
        override = f"{where}.header_overrides.{attributes[str(loc[1])]}"
        if loc[2] == "[key]":  # the attribute the header arrives as
            rule = message.split(" ", 1)[-1]  # the message quotes the attribute first
            yield f"{override}.header", f"arrives as participant attribute {loc[1]!r}, which {rule}"
        else:  # a value selecting a layer: the key of `values`
            yield (f"{override}.values.{loc[2]}" if loc[2] else f"{override}.values"), f"a header value: {message}"


def _secret_problems(stack: StackFile, config: StackConfig) -> Iterator[tuple[str, str]]:
    """Every secret reference names a key the stack's config file sets as a secret (as preview will require)."""
    if not config.file or config.imports:
        return
    references = [
        (f"{section}.{key}.auth_password_secret", trunk.auth_password_secret, "<password>")
        for section, trunks in (("inbound_trunks", stack.inbound_trunks), ("outbound_trunks", stack.outbound_trunks))
        for key, trunk in trunks.items()
        if trunk.auth_password_secret
    ] + [
        (f"agents.{key}.ecs.provider_key_secrets.{env}", secret, "<value>")
        for key, agent in stack.agents.items()
        for env, secret in (agent.ecs.provider_key_secrets.items() if agent.ecs else [])
    ]
    for field_path, key, value in references:
        command = f"`pulumi config set --secret {key} {value} --stack {stack.environment}`"
        if not config.exists:
            yield field_path, (f"names config key {key!r}, but {config.file} does not exist: create the stack "
                               f"(`pulumi stack init {stack.environment}`), then {command}")  # fmt: skip
        elif key in config.keys and key not in config.secure:
            yield field_path, f"names config key {key!r}, which {config.file} holds in plain text: {command}"
        elif key not in config.keys:
            yield field_path, f"names config key {key!r}, which {config.file} does not set: {command}"


def _plan(stack: StackFile, config: StackConfig, problems: list[tuple[str, str]]) -> Plan:
    plan = Plan(stack)
    headers = trunk_header_mappings(stack)
    for section, trunks, model, out in (
        ("inbound_trunks", stack.inbound_trunks, InboundTrunkArgs, plan.inbound_trunks),
        ("outbound_trunks", stack.outbound_trunks, OutboundTrunkArgs, plan.outbound_trunks),
    ):
        for key, trunk in trunks.items():
            data = trunk.model_dump(exclude={"auth_password_secret", "name", "adopt_id"})
            data["name"] = stack.object_name(key, trunk.name)
            if key in headers and model is InboundTrunkArgs:
                data["headers_to_attributes"] = {**data["headers_to_attributes"], **headers[key]}
            if trunk.auth_password_secret:
                data["auth_password"] = SECRET_PLACEHOLDER
            args = _build(model, data, _mapped(f"{section}.{key}", _TRUNK_FIELDS), problems)
            if args is not None:
                out[key] = Trunk(args, trunk.auth_password_secret, trunk.adopt_id)

    for key, route in stack.inbound_routes.items():
        route_trunk_keys = route_trunks(stack, key)
        overrides = route_attribute_overrides(stack, key)
        try:
            metadata = dispatch_metadata(key, route, overrides)
        except ValidationError as e:
            problems.extend(_metadata_problems(f"inbound_routes.{key}", route, overrides or {}, e))
            continue
        ours = route.metadata_format == "siphon-infra"
        rule = (
            route.rule.model_dump()
            if route.rule
            else {"type": "individual", "room_prefix": stack.object_name(key), "pin": route.pin}
        )
        agents = [{"agent_name": route.agent, "metadata": metadata}] if route.agent else []
        data = {
            "name": stack.object_name(key, route.name),
            "metadata": metadata if ours else "",
            "attributes": {"siphon.route": key, **route.attributes} if ours else dict(route.attributes),
            "rule": rule,
            "trunk_ids": route_trunk_keys,
            "hide_phone_number": route.hide_phone_number,
            "inbound_numbers": route.caller_numbers,
            "numbers": route.numbers,
            "room_config": {**route.room.model_dump(), "agents": agents},
            "krisp_enabled": route.krisp_enabled,
            "media": route.media.model_dump() if route.media else None,
        }
        where = _mapped(f"inbound_routes.{key}", _RULE_FIELDS)
        n = len(problems)
        args = _build(DispatchRuleArgs, data, where, problems)
        for i in range(n, len(problems)):  # the metadata is built from the route: say what to shorten
            field_path, message = problems[i]
            if field_path == f"inbound_routes.{key}" and "at most" in message:
                problems[i] = (field_path, f"the route's metadata (agent_config, context, header_overrides) is "
                                           f"{len(metadata)} characters; LiveKit's limit: {message}")  # fmt: skip
        if args is not None:
            plan.inbound_routes[key] = Route(args, route_trunk_keys, route.adopt_id)

    for key, out_route in stack.outbound_routes.items():
        out_trunk = stack.outbound_trunks[out_route.trunk]
        plan.outbound_routes[key] = OutboundCall(
            trunk=out_route.trunk,
            caller_ids=list(out_route.caller_ids or out_trunk.numbers),
            agent_name=out_route.agent,
            ring_timeout=out_route.ring_timeout,
            metadata=route_metadata(key, out_route, "outbound").to_json(),
        )

    url = stack.livekit.url or config.livekit_url
    for key, agent in stack.agents.items():
        if agent.ecs is None:
            continue
        aws = stack.aws
        data = {
            **agent.ecs.model_dump(exclude={"provider_key_secrets"}, exclude_defaults=True),
            "agent_name": key,
            "stack": stack.environment,
            "environment": stack.environment,
            "cluster_name": aws.cluster or f"siphon-{stack.environment}",
            "create_cluster": aws.create_cluster,
            "subnets": aws.subnets or [SUBNET_PLACEHOLDER],
            "security_groups": aws.security_groups,
            "assign_public_ip": aws.assign_public_ip,
            "livekit_url": url or URL_PLACEHOLDER,
            "livekit_api_key": SECRET_PLACEHOLDER,
            "livekit_api_secret": SECRET_PLACEHOLDER,
            "provider_keys": {env: SECRET_PLACEHOLDER for env in agent.ecs.provider_key_secrets},
            "worker": agent.defaults.model_dump(mode="json", exclude_none=True),
            "max_calls": agent.calls_per_worker,
        }
        worker = _build(AgentWorkerArgs, data, functools.partial(_worker_field, key), problems)
        if worker is not None:
            plan.workers[key] = Worker(worker, dict(agent.ecs.provider_key_secrets), not aws.subnets, not url)
    return plan


def compile_stack(
    stack: StackFile, file: str, lines: dict[tuple[str, ...], int], config: StackConfig | None = None
) -> Plan:
    """The plan of a parsed stack file, or StackFileError listing every problem with its line."""
    problems = cross_check(stack, file, lines)
    if not problems:
        found: list[tuple[str, str]] = list(_secret_problems(stack, config or StackConfig()))
        plan = _plan(stack, config or StackConfig(), found)
        problems = [Problem(file, _line_of(lines, f), f, m) for f, m in found]
    if problems:
        raise StackFileError(problems)
    return plan


def plan_file(path: Path, *, secrets: bool = True) -> Plan:
    """Load, check and compile one stack file; with ``secrets``, its secret references are checked against the
    Pulumi config file beside it (keys only, nothing is decrypted)."""
    stack, lines = load(path)
    config = StackConfig.read(path, stack.environment) if secrets else StackConfig()
    return compile_stack(stack, str(path), lines, config)
