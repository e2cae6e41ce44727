"""Component resources the stack program builds from the plan: one per inbound route, outbound route and agent.

A newcomer tracing a phone number: ``stacks/<env>.yaml`` (inbound_routes.<route>.numbers) ->
``infra.stack.plan`` (the route's ``DispatchRuleArgs``, whose room_config dispatches the route's agent
with metadata built by ``contract.metadata.RouteMetadata``) -> ``InboundRoute`` here (a ``SipDispatchRule``)
-> LiveKit -> the worker, which merges that metadata over its defaults (``contract.resolve``).

Beside them, what only the deployment adds to the plan: a trunk's config secret, LiveKit URL and adopted id
(``trunk_props``), and the stack's ECS parts: each agent's worker deployment (``AgentWorkerDeployment`` in
``infra.ecs``) with its secrets, and the stack's death queue (``WorkerDeathQueue``), which tells the workers which
of the stack's tasks stopped. boto3 and ``infra.ecs`` are imported only for stacks with ECS agents.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pulumi

from infra.livekit.base import ADOPT_INPUT, URL_INPUT
from infra.livekit.client import SETTINGS, lookup
from infra.livekit.dispatch_rule import SipDispatchRule
from infra.stack.types import OutboundCall, Plan, Route, Trunk

if TYPE_CHECKING:
    from infra.ecs.death_queue import WorkerDeathQueue
    from infra.ecs.resource import AgentWorkerDeployment


def trunk_props(plan: Plan, trunk: Trunk[Any]) -> dict[str, Any]:
    """A trunk's resource inputs: its planned arguments, its password from config, the LiveKit URL, the adopted id."""
    props: dict[str, Any] = trunk.args.model_dump(exclude_defaults=True)
    if trunk.password_secret:
        props["auth_password"] = pulumi.Config().require_secret(trunk.password_secret)
    if plan.livekit_url:
        props[URL_INPUT] = plan.livekit_url
    if trunk.adopt_id:
        props[ADOPT_INPUT] = trunk.adopt_id
    return props


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
            self.deployment = agent_deployment(key, plan, pulumi.ResourceOptions(parent=self), deaths)
        self.register_outputs({"agent_name": key, "worker": self.worker})


def default_subnets(region: str) -> list[str]:
    """Subnets of the account's default VPC (a read-only lookup, used when the stack names none)."""
    import boto3  # imported lazily: only stacks with ECS agents need it

    ec2 = boto3.client("ec2", region_name=region)
    subnets = ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"]
    if not subnets:
        raise pulumi.RunError(
            f"aws.subnets is empty and region {region} has no default VPC: list subnets in the stack file"
        )
    return sorted(s["SubnetId"] for s in subnets)


def _livekit_secret(found: dict[str, Any], name: str) -> pulumi.Output[str]:
    key = f"livekit:{name}"
    value = found[key]
    if value is None:
        raise pulumi.RunError(f"set `pulumi config set --secret {key} ...` (or {SETTINGS[key]}) for the ECS workers")
    return value if isinstance(value, pulumi.Output) else pulumi.Output.secret(value)


def death_queue(plan: Plan, opts: pulumi.ResourceOptions) -> WorkerDeathQueue:
    """Declare the stack's death queue as planned (the stopped tasks of its agents' ECS services)."""
    from infra.ecs.death_queue import WorkerDeathQueue  # imported lazily: only stacks with ECS agents need boto3

    assert plan.death_queue is not None, "a plan with ECS workers has a death queue"
    return WorkerDeathQueue("worker-deaths", {**plan.death_queue.model_dump(), "stack": pulumi.get_stack()}, opts)


def agent_deployment(
    key: str, plan: Plan, opts: pulumi.ResourceOptions, deaths: WorkerDeathQueue | None = None
) -> AgentWorkerDeployment:
    """Declare the ECS deployment of agent ``key`` from its planned arguments; its workers read ``deaths``."""
    from infra.ecs.resource import AgentWorkerDeployment  # imported lazily: only stacks with ECS agents need boto3

    worker = plan.workers[key]
    args: dict[str, Any] = worker.args.public_fields()
    if deaths is not None:
        args["death_queue_url"] = deaths.queue_url
        args["death_queue_arn"] = deaths.queue_arn
    if worker.default_subnets:
        args["subnets"] = default_subnets(worker.region)
    config = pulumi.Config("livekit")
    found = lookup({"livekit:url": config.get("url"), "livekit:apiKey": config.get_secret("apiKey"),
                    "livekit:apiSecret": config.get_secret("apiSecret")})  # fmt: skip
    if worker.livekit_url_from_config:
        url = found["livekit:url"]
        if not url:
            raise pulumi.RunError("the ECS workers need a LiveKit URL: set livekit.url in the stack file, "
                                  "`pulumi config set livekit:url ...` or LIVEKIT_URL")  # fmt: skip
        args["livekit_url"] = url
    args["stack"] = pulumi.get_stack()
    args["livekit_api_key"] = _livekit_secret(found, "apiKey")
    args["livekit_api_secret"] = _livekit_secret(found, "apiSecret")
    args["provider_keys"] = {
        env: pulumi.Config().require_secret(cfg) for env, cfg in worker.provider_key_secrets.items()
    }
    return AgentWorkerDeployment(f"{key}-worker", args, opts)
