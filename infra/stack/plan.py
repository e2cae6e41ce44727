"""The plan: one pure function from a stack file to the exact arguments of every resource it declares.

``compile_stack`` validates the file, cross-checks it, and builds the ``Plan`` (``infra.stack.types``): the
argument models the resources take (``InboundTrunkArgs``, ``OutboundTrunkArgs``, ``DispatchRuleArgs``,
``AgentWorkerArgs``) plus the derived facts (each route's trunks, LiveKit names, routing rows): each stack entry
builds its own arguments (``infra.stack.model``), and an argument's error is placed at the stack field it comes
from. ``siphon-infra validate``, ``routes``, ``summary``, ``verify`` and the Pulumi program all use it, so any
argument a resource would refuse at preview is refused by ``validate`` first, at the stack file's line.

What only the deployment knows stays a placeholder here and is filled in by the program: secrets
(trunk passwords, LiveKit key and secret, model keys: config secrets, checked to exist in the stack's
Pulumi config file), trunk ids (the route's trunk keys stand in) and, when the file names none, the
default VPC's subnets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel, ValidationError

from contract.metadata import AgentConfig
from contract.models import FILE_CREDENTIALS
from contract.types import describe_error, describe_errors
from infra.stack.checks import cross_check
from infra.stack.errors import Problem, StackFileError, line_of
from infra.stack.load import StackConfig, load
from infra.stack.model import InboundRoute, StackFile, route_metadata
from infra.stack.types import OutboundCall, Plan, Route, Trunk, Worker

if TYPE_CHECKING:
    from infra.ecs.death_queue import DeathQueueArgs

T = TypeVar("T")


def _stack_field(field_path: str, where: str, sources: Sequence[tuple[str, BaseModel]]) -> str:
    """The stack-file field an argument's error is about: the first source field that fills the argument (a field
    of the argument's name, or one whose ``serialization_alias`` names it: a renamed field), else the entry
    itself (``where``: a value derived from the entry, or a rule across its fields)."""
    top, _, rest = field_path.partition(".")
    for prefix, model in sources:
        fields = type(model).model_fields
        name = next((n for n, f in fields.items() if f.serialization_alias == top), top if top in fields else None)
        if name is not None:
            return ".".join(part for part in (prefix, name, rest) if part)
    return where


def _build(
    build: Callable[[], T], where: str, sources: Sequence[tuple[str, BaseModel]], problems: list[tuple[str, str]]
) -> T | None:
    """``build()`` (an entry's arguments), or None with each validation error added to ``problems`` at the stack
    field it comes from."""
    try:
        return build()
    except ValidationError as e:
        problems.extend((_stack_field(f, where, sources), message) for f, message in describe_errors(e))
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
        (
            f"agents.{key}.ecs.provider_key_secrets.{env}",
            secret,
            '"$(cat key.json)"' if env in FILE_CREDENTIALS else "<value>",
        )  # a key file: its text
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
    """The plan, each entry's arguments built by the entry (``args``), their errors added to ``problems`` in the
    file's order: trunks, inbound routes, agents (an outbound route's call is not checked here: it has none)."""
    agents = {key: agent.workers for key, agent in stack.agents.items()}
    plan = Plan(stack, stack.environment, stack.protect, stack.livekit.url, agents)
    for key, inbound in stack.inbound_trunks.items():
        where = f"inbound_trunks.{key}"
        trunk_args = _build(partial(inbound.args, key, stack), where, [(where, inbound)], problems)
        if trunk_args is not None:
            plan.inbound_trunks[key] = Trunk(trunk_args, inbound.auth_password_secret, inbound.adopt_id)
    for key, outbound in stack.outbound_trunks.items():
        where = f"outbound_trunks.{key}"
        out_args = _build(partial(outbound.args, key, stack), where, [(where, outbound)], problems)
        if out_args is not None:
            plan.outbound_trunks[key] = Trunk(out_args, outbound.auth_password_secret, outbound.adopt_id)

    for key, out_route in stack.outbound_routes.items():
        out_trunk = stack.outbound_trunks.get(out_route.trunk)
        if out_trunk is None:
            continue  # reported by the cross-checks
        plan.outbound_routes[key] = OutboundCall(
            trunk=out_route.trunk,
            caller_ids=list(out_route.caller_ids or out_trunk.numbers),
            agent_name=out_route.agent,
            ring_timeout=out_route.ring_timeout,
            metadata=route_metadata(key, out_route, "outbound").to_json(),
        )

    for key, route in stack.inbound_routes.items():
        where, overrides = f"inbound_routes.{key}", stack.attribute_overrides[key]
        try:
            metadata = route.metadata(key, overrides)
        except ValidationError as e:
            problems.extend(_metadata_problems(where, route, overrides or {}, e))
            continue
        n = len(problems)
        rule = _build(partial(route.args, key, stack, metadata), where, [(where, route)], problems)
        for i in range(n, len(problems)):  # the metadata is built from the route: say what to shorten
            field_path, message = problems[i]
            if field_path == where and "at most" in message:
                problems[i] = (field_path, f"the route's metadata (agent_config, context, header_overrides) is "
                                           f"{len(metadata)} characters; LiveKit's limit: {message}")  # fmt: skip
        if rule is not None:
            plan.inbound_routes[key] = Route(rule, stack.route_trunks[key], route.adopt_id, route.agent,
                                             agents.get(route.agent, ""))  # fmt: skip

    url = stack.livekit.url or config.livekit_url
    for key, agent in stack.agents.items():
        if agent.ecs is None:
            continue
        where = f"agents.{key}"
        sources = [(f"{where}.ecs", agent.ecs), (where, agent), ("aws", stack.aws), ("livekit", stack.livekit),
                   ("", stack)]  # fmt: skip
        worker = _build(partial(agent.args, key, stack, url), where, sources, problems)
        if worker is not None:
            plan.workers[key] = Worker(worker, dict(agent.ecs.provider_key_secrets), not stack.aws.subnets, not url,
                                       stack.aws.region)  # fmt: skip
    if plan.workers:  # their stopped tasks reach the living workers through the stack's death queue
        return replace(plan, death_queue=_build(partial(_death_queue, stack, plan.workers), "agents", [], problems))
    return plan


def _death_queue(stack: StackFile, workers: dict[str, Worker]) -> DeathQueueArgs:
    """The death queue's arguments: the stack (named as its environment, as ``stacks/Pulumi.<env>.yaml`` is), its
    cluster and its agents' services."""
    from infra.ecs.death_queue import DeathQueueArgs  # imported only for stacks with ECS agents (it needs boto3)

    (cluster,) = {w.args.cluster_name for w in workers.values()}  # one aws.cluster per stack
    return DeathQueueArgs(
        stack=stack.environment, environment=stack.environment, cluster_name=cluster,
        service_names=sorted(w.args.effective_service_name for w in workers.values()),
    )  # fmt: skip


def compile_stack(
    stack: StackFile, file: str, lines: dict[tuple[str, ...], int], config: StackConfig | None = None
) -> Plan:
    """The plan of a parsed stack file, or StackFileError listing every problem with its line."""
    later: list[tuple[str, str]] = list(_secret_problems(stack, config or StackConfig()))
    plan = _plan(stack, config or StackConfig(), later)
    crossed = list(cross_check(stack))  # independent of the plan: run last, reported first
    # All problems in one round: the arguments' own, except where a cross-check already spoke of the same field.
    found = crossed + [(f, m) for f, m in later if not any(_related(f, c) for c, _ in crossed)]
    if found:  # a stack-wide field (aws.*, livekit.url) feeds every agent's arguments: say each problem once
        raise StackFileError([Problem(file, line_of(lines, f), f, m) for f, m in dict.fromkeys(found)])
    return plan


def _related(field_path: str, other: str) -> bool:
    """One field is the other or holds it (``agents.a.defaults`` and ``agents.a.defaults.llm``)."""
    return field_path == other or field_path.startswith(other + ".") or other.startswith(field_path + ".")


def plan_file(path: Path, *, secrets: bool = True) -> Plan:
    """Load, check and compile one stack file; with ``secrets``, its secret references are checked against the
    Pulumi config file beside it (keys only, nothing is decrypted)."""
    stack, lines = load(path)
    config = StackConfig.read(path, stack.environment) if secrets else StackConfig()
    return compile_stack(stack, str(path), lines, config)
