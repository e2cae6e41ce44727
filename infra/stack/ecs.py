"""The stack's ECS parts from the plan: each agent's worker deployment (AgentWorkerDeployment in infra/ecs), with its
secrets, and the stack's death queue (WorkerDeathQueue), which tells the workers which of the stack's tasks stopped."""

from __future__ import annotations

from typing import Any

import boto3
import pulumi

from infra.ecs.death_queue import WorkerDeathQueue
from infra.ecs.resource import AgentWorkerDeployment
from infra.livekit.client import SETTINGS, lookup
from infra.stack.types import Plan


def default_subnets(region: str) -> list[str]:
    """Subnets of the account's default VPC (a read-only lookup, used when the stack names none)."""
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
    assert plan.death_queue is not None, "a plan with ECS workers has a death queue"
    return WorkerDeathQueue("worker-deaths", {**plan.death_queue.model_dump(), "stack": pulumi.get_stack()}, opts)


def agent_deployment(
    key: str, plan: Plan, opts: pulumi.ResourceOptions, deaths: WorkerDeathQueue | None = None
) -> AgentWorkerDeployment:
    """Declare the ECS deployment of agent ``key`` from its planned arguments; its workers read ``deaths``."""
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
