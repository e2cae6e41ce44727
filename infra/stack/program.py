"""The Pulumi program: load ``stacks/<pulumi stack>.yaml``, check it, declare its resources, export routing.

Nothing is declared unless the whole file passes validation and cross-checks, so a mistake fails
``pulumi preview`` before any call to LiveKit or AWS.
"""

from __future__ import annotations

from typing import Any

import pulumi

from infra.livekit.provider import URL_INPUT
from infra.livekit.resources import SipInboundTrunk, SipOutboundTrunk
from infra.stack.checks import cross_check, route_trunks
from infra.stack.components import AgentComponent, InboundRouteComponent, OutboundRouteComponent
from infra.stack.headers import trunk_header_mappings
from infra.stack.load import StackFileError, load, stack_path
from infra.stack.model import StackFile


class StackInvalid(pulumi.RunError):
    """The stack file failed validation; the message lists every problem (shown without a traceback)."""


def validated(environment: str) -> StackFile:
    """The stack file of ``environment``, or StackInvalid listing every problem."""
    path = stack_path(environment)
    try:
        stack, lines = load(path)
    except StackFileError as e:
        raise StackInvalid(f"stack file is invalid:\n{e}") from None
    problems = cross_check(stack, str(path), lines)
    if problems:
        raise StackInvalid("stack file is invalid:\n" + "\n".join(str(p) for p in problems))
    if stack.environment != environment:
        raise StackInvalid(f"{path}: environment: is {stack.environment!r} but the Pulumi stack is {environment!r}")
    return stack


def _trunk_args(stack: StackFile, key: str, trunk: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
    args = trunk.model_dump(exclude={"auth_password_secret", "name"})
    args["name"] = stack.object_name(key)
    if headers:  # headers that routes' header_overrides need as participant attributes
        args["headers_to_attributes"] = {**args["headers_to_attributes"], **headers}
    if trunk.auth_password_secret:
        args["auth_password"] = pulumi.Config().require_secret(trunk.auth_password_secret)
    if stack.livekit.url:
        args[URL_INPUT] = stack.livekit.url
    return args


def run(environment: str | None = None) -> None:
    """Declare everything for the selected Pulumi stack."""
    stack = validated(environment or pulumi.get_stack())
    opts = pulumi.ResourceOptions(protect=stack.protect)

    headers = trunk_header_mappings(stack)
    inbound = {
        k: SipInboundTrunk(f"{k}-in", _trunk_args(stack, k, t, headers.get(k)), opts)
        for k, t in stack.inbound_trunks.items()
    }
    outbound = {
        k: SipOutboundTrunk(f"{k}-out", _trunk_args(stack, k, t), opts) for k, t in stack.outbound_trunks.items()
    }
    agents = {k: AgentComponent(k, stack, opts) for k in stack.agents}

    routing_table: dict[str, Any] = {}
    for key, route in stack.inbound_routes.items():
        trunks = route_trunks(stack, key)
        component = InboundRouteComponent(
            key, stack, [inbound[t].sip_trunk_id for t in trunks], stack.livekit.url, opts
        )
        for number in route.numbers or ["*"]:
            routing_table[number] = {
                "route": key,
                "rule_id": component.rule_id,
                "rule_name": stack.object_name(key),
                "trunks": trunks,
                "agent_name": route.agent,
                "worker": agents[route.agent].worker,
            }
    outbound_routes = {
        key: OutboundRouteComponent(key, stack, outbound[route.trunk].sip_trunk_id, opts).outputs
        for key, route in stack.outbound_routes.items()
    }

    pulumi.export("environment", stack.environment)
    pulumi.export("routing_table", routing_table)
    pulumi.export("outbound_routes", outbound_routes)
    pulumi.export("inbound_trunks", {k: t.sip_trunk_id for k, t in inbound.items()})
    pulumi.export("agents", {k: a.worker for k, a in agents.items()})
