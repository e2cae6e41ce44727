"""An agent's ECS worker deployment from the plan (AgentWorkerDeployment in infra/ecs), with its secrets."""

from __future__ import annotations

import os
from typing import Any

import boto3
import pulumi

from infra.ecs.resource import AgentWorkerDeployment
from infra.stack.plan import Plan


def default_subnets(region: str) -> list[str]:
    """Subnets of the account's default VPC (a read-only lookup, used when the stack names none)."""
    ec2 = boto3.client("ec2", region_name=region)
    subnets = ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"]
    if not subnets:
        raise pulumi.RunError(
            f"aws.subnets is empty and region {region} has no default VPC: list subnets in the stack file"
        )
    return sorted(s["SubnetId"] for s in subnets)


def _livekit_secret(name: str, env: str) -> pulumi.Output[str]:
    value = pulumi.Config("livekit").get_secret(name)
    if value is not None:
        return value
    if os.environ.get(env):
        return pulumi.Output.secret(os.environ[env])
    raise pulumi.RunError(f"set `pulumi config set --secret livekit:{name} ...` (or {env}) for the ECS workers")


def agent_deployment(key: str, plan: Plan, opts: pulumi.ResourceOptions) -> AgentWorkerDeployment:
    """Declare the ECS deployment of agent ``key`` from its planned arguments."""
    worker = plan.workers[key]
    args: dict[str, Any] = worker.args.public_fields()
    if worker.default_subnets:
        args["subnets"] = default_subnets(worker.region)
    if worker.livekit_url_from_config:
        url = pulumi.Config("livekit").get("url") or os.environ.get("LIVEKIT_URL", "")
        if not url:
            raise pulumi.RunError("the ECS workers need a LiveKit URL: set livekit.url in the stack file, "
                                  "`pulumi config set livekit:url ...` or LIVEKIT_URL")  # fmt: skip
        args["livekit_url"] = url
    args["stack"] = pulumi.get_stack()
    args["livekit_api_key"] = _livekit_secret("apiKey", "LIVEKIT_API_KEY")
    args["livekit_api_secret"] = _livekit_secret("apiSecret", "LIVEKIT_API_SECRET")
    args["provider_keys"] = {
        env: pulumi.Config().require_secret(cfg) for env, cfg in worker.provider_key_secrets.items()
    }
    return AgentWorkerDeployment(f"{key}-worker", args, opts)
