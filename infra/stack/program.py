"""The Pulumi program: compile ``stacks/<pulumi stack>.yaml`` into its plan, declare the plan's resources.

Nothing is declared unless the whole file compiles (``infra.stack.plan``: the same step as
``siphon-infra validate``), so a mistake fails ``pulumi preview`` before any call to LiveKit or AWS.
The program only turns the plan into resources: it adds what only the deployment knows (config
secrets, trunk ids, the default VPC's subnets).
"""

from __future__ import annotations

import pulumi

from infra.livekit.inbound_trunk import SipInboundTrunk
from infra.livekit.outbound_trunk import SipOutboundTrunk
from infra.stack.components import (
    AgentComponent,
    InboundRouteComponent,
    OutboundRouteComponent,
    death_queue,
    trunk_props,
)
from infra.stack.errors import StackFileError
from infra.stack.load import stack_path
from infra.stack.plan import plan_file
from infra.stack.types import Plan


class StackInvalid(pulumi.RunError):
    """The stack file failed validation; the message lists every problem (shown without a traceback)."""


def planned(environment: str) -> Plan:
    """The plan of ``environment``'s stack file, or StackInvalid listing every problem."""
    path = stack_path(environment)
    try:
        plan = plan_file(path)
    except StackFileError as e:
        raise StackInvalid(f"stack file is invalid:\n{e}") from None
    if plan.environment != environment:
        raise StackInvalid(f"{path}: environment: is {plan.environment!r} but the Pulumi stack is {environment!r}")
    return plan


def run(environment: str | None = None) -> None:
    """Declare everything for the selected Pulumi stack."""
    plan = planned(environment or pulumi.get_stack())
    opts = pulumi.ResourceOptions(protect=plan.protect)

    inbound = {k: SipInboundTrunk(f"{k}-in", trunk_props(plan, t), opts) for k, t in plan.inbound_trunks.items()}
    outbound = {k: SipOutboundTrunk(f"{k}-out", trunk_props(plan, t), opts) for k, t in plan.outbound_trunks.items()}
    deaths = None
    if plan.workers:  # ECS workers: the stack's stopped tasks reach them through its death queue
        deaths = death_queue(plan, opts)
    agents = {k: AgentComponent(k, plan, opts, deaths) for k in plan.agents}
    rules = {
        key: InboundRouteComponent(key, route, [inbound[t].sip_trunk_id for t in route.trunks], plan.livekit_url, opts)
        for key, route in plan.inbound_routes.items()
    }
    routing_table = {
        row.number or "*": {"route": row.route, "rule_id": rules[row.route].rule_id, "rule_name": row.rule_name,
                            "trunks": row.trunks, "agent_name": row.agent, "worker": row.worker}
        for row in plan.routing() if row.direction == "inbound"
    }  # fmt: skip
    outbound_routes = {
        key: OutboundRouteComponent(key, values, outbound[values.trunk].sip_trunk_id, opts).outputs
        for key, values in plan.outbound_routes.items()
    }

    pulumi.export("environment", plan.environment)
    pulumi.export("routing_table", routing_table)
    pulumi.export("outbound_routes", outbound_routes)
    pulumi.export("inbound_trunks", {k: t.sip_trunk_id for k, t in inbound.items()})
    pulumi.export("agents", {k: a.worker for k, a in agents.items()})
    if deaths is not None:  # what a guard process reads (`python -m worker.stopped_tasks`)
        pulumi.export("death_queue_url", deaths.queue_url)
