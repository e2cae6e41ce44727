"""Component resources the stack program builds from the plan: one per inbound route, outbound route and agent.

A newcomer tracing a phone number: ``stacks/<env>.yaml`` (inbound_routes.<route>.numbers) ->
``infra.stack.plan`` (the route's ``DispatchRuleArgs``, whose room_config dispatches the route's agent
with metadata built by ``contract.metadata.RouteMetadata``) -> ``InboundRoute`` here (a ``SipDispatchRule``)
-> LiveKit -> the worker, which merges that metadata over its defaults (``contract.resolve``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pulumi

from infra.livekit.base import ADOPT_INPUT, URL_INPUT
from infra.livekit.dispatch_rule import SipDispatchRule
from infra.stack.types import OutboundCall, Plan, Route

if TYPE_CHECKING:
    from infra.ecs.death_queue import WorkerDeathQueue


class InboundRouteComponent(pulumi.ComponentResource):
    """An inbound route: a dispatch rule sending calls on its numbers to its agent with its configuration."""

    rule_id: pulumi.Output[str]

    def __init__(
        self,
        key: str,
        route: Route,
        trunk_ids: list[pulumi.Output[str]],
        livekit_url: str,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("siphon:routing:InboundRoute", key, None, opts)
        args: dict[str, Any] = route.rule.model_dump(exclude_defaults=True)
        args["trunk_ids"] = pulumi.Output.all(*trunk_ids) if trunk_ids else []
        if livekit_url:
            args[URL_INPUT] = livekit_url
        if route.adopt_id:
            args[ADOPT_INPUT] = route.adopt_id
        self.rule = SipDispatchRule(f"{key}-rule", args, pulumi.ResourceOptions(parent=self))
        self.rule_id = self.rule.sip_dispatch_rule_id
        self.register_outputs({"rule_id": self.rule_id})


class OutboundRouteComponent(pulumi.ComponentResource):
    """An outbound route: the trunk, caller IDs, agent and metadata a call placed through it uses.

    Outbound routing has no standing LiveKit object: the dispatch is created when a call is placed
    (``place_call``), from these outputs.
    """

    def __init__(
        self,
        key: str,
        values: OutboundCall,
        trunk_id: pulumi.Output[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("siphon:routing:OutboundRoute", key, None, opts)
        self.outputs: dict[str, Any] = {**values.model_dump(), "trunk_id": trunk_id}
        self.register_outputs(self.outputs)


class AgentComponent(pulumi.ComponentResource):
    """An agent: its worker deployment(s) and the defaults it runs with; its ECS workers read the stack's death
    queue (``deaths``)."""

    def __init__(
        self,
        key: str,
        plan: Plan,
        opts: pulumi.ResourceOptions | None = None,
        deaths: WorkerDeathQueue | None = None,
    ) -> None:
        super().__init__("siphon:routing:Agent", key, None, opts)
        self.worker = plan.agents[key]
        self.deployment: pulumi.Resource | None = None
        if key in plan.workers:
            from infra.stack.ecs import agent_deployment  # imported lazily: only stacks with ECS agents need boto3

            self.deployment = agent_deployment(key, plan, pulumi.ResourceOptions(parent=self), deaths)
        self.register_outputs({"agent_name": key, "worker": self.worker})
