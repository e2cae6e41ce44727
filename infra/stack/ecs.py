"""An agent's ECS worker deployment, built from the stack file (AgentWorkerDeployment in infra/ecs)."""

from __future__ import annotations

import os
from typing import Any

import boto3
import pulumi

from infra.ecs.resource import AgentWorkerDeployment
from infra.stack.model import StackFile


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


def agent_deployment(key: str, stack: StackFile, opts: pulumi.ResourceOptions) -> AgentWorkerDeployment:
    """Declare the ECS deployment of agent ``key``."""
    agent = stack.agents[key]
    assert agent.ecs is not None
    aws = stack.aws
    url = stack.livekit.url or pulumi.Config("livekit").get("url") or os.environ.get("LIVEKIT_URL", "")
    args: dict[str, Any] = {
        "agent_name": key,
        "stack": pulumi.get_stack(),
        "environment": stack.environment,
        "image": agent.ecs.image,
        "cpu": agent.ecs.cpu,
        "memory": agent.ecs.memory,
        "desired_count": agent.ecs.desired_count,
        "cluster_name": aws.cluster or f"siphon-{stack.environment}",
        "create_cluster": aws.create_cluster,
        "subnets": aws.subnets or default_subnets(aws.region),
        "security_groups": aws.security_groups,
        "assign_public_ip": aws.assign_public_ip,
        "livekit_url": url,
        "livekit_api_key": _livekit_secret("apiKey", "LIVEKIT_API_KEY"),
        "livekit_api_secret": _livekit_secret("apiSecret", "LIVEKIT_API_SECRET"),
        "provider_keys": {
            env: pulumi.Config().require_secret(cfg) for env, cfg in agent.ecs.provider_key_secrets.items()
        },
        "worker": agent.defaults.model_dump(mode="json", exclude_none=True),
        "max_calls": agent.calls_per_worker,
        **agent.ecs.settings,
    }
    return AgentWorkerDeployment(f"{key}-worker", args, opts)
