"""Component resources the stack program builds: one per inbound route, outbound route and agent.

A newcomer tracing a phone number: ``stacks/<env>.yaml`` (inbound_routes.<route>.numbers) ->
``InboundRoute`` here (a ``SipDispatchRule`` whose room_config dispatches the route's agent with the
route's metadata, built by ``worker.metadata.RouteMetadata``) -> LiveKit -> the worker, which merges
that metadata over its defaults (``worker.config``).
"""

from __future__ import annotations

from typing import Any

import pulumi

from infra.livekit.provider import URL_INPUT
from infra.livekit.resources import SipDispatchRule
from infra.stack.headers import route_attribute_overrides
from infra.stack.model import InboundRoute, OutboundRoute, StackFile
from worker.metadata import AgentConfig, Direction, RouteMetadata


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


class InboundRouteComponent(pulumi.ComponentResource):
    """An inbound route: a dispatch rule sending calls on its numbers to its agent with its configuration."""

    rule_id: pulumi.Output[str]

    def __init__(
        self,
        key: str,
        stack: StackFile,
        trunk_ids: list[pulumi.Output[str]],
        livekit_url: str,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("siphon:routing:InboundRoute", key, None, opts)
        route = stack.inbound_routes[key]
        rule: dict[str, Any] = (
            route.rule.model_dump()
            if route.rule
            else {"type": "individual", "room_prefix": stack.object_name(key), "pin": route.pin}
        )
        metadata = route_metadata(key, route, "inbound", route_attribute_overrides(stack, key)).to_json()
        args: dict[str, Any] = {
            "name": stack.object_name(key),
            "metadata": metadata,
            "attributes": {"siphon.route": key, **route.attributes},
            "rule": rule,
            "trunk_ids": pulumi.Output.all(*trunk_ids) if trunk_ids else [],
            "hide_phone_number": route.hide_phone_number,
            "inbound_numbers": route.caller_numbers,
            "numbers": route.numbers,
            "room_config": {
                **route.room.model_dump(),
                "agents": [{"agent_name": route.agent, "metadata": metadata}],
            },
            "krisp_enabled": route.krisp_enabled,
            "media": route.media.model_dump() if route.media else None,
        }
        if livekit_url:
            args[URL_INPUT] = livekit_url
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
        stack: StackFile,
        trunk_id: pulumi.Output[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("siphon:routing:OutboundRoute", key, None, opts)
        route = stack.outbound_routes[key]
        trunk = stack.outbound_trunks[route.trunk]
        self.outputs = {
            "trunk": route.trunk,
            "trunk_id": trunk_id,
            "caller_ids": list(route.caller_ids or trunk.numbers),
            "agent_name": route.agent,
            "ring_timeout": route.ring_timeout,
            "metadata": route_metadata(key, route, "outbound").to_json(),
        }
        self.register_outputs(self.outputs)


class AgentComponent(pulumi.ComponentResource):
    """An agent: its worker deployment(s) and the defaults it runs with."""

    def __init__(self, key: str, stack: StackFile, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("siphon:routing:Agent", key, None, opts)
        agent = stack.agents[key]
        self.worker = agent.workers
        self.deployment: pulumi.Resource | None = None
        if agent.ecs is not None:
            from infra.stack.ecs import agent_deployment  # imported lazily: only stacks with ECS agents need boto3

            self.deployment = agent_deployment(key, stack, pulumi.ResourceOptions(parent=self))
        self.register_outputs({"agent_name": key, "worker": self.worker})
