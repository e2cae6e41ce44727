"""Shared helpers for the ECS agent-worker tests (no tests here): arguments, call recording, leftovers on moto."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3

from infra.ecs import aws
from infra.ecs.provider import AgentWorkerProvider

SECRET_KEY = "LKkey" + secrets.token_hex(8)
SECRET_SECRET = "LKsecret" + secrets.token_hex(12)
SECRET_OPENAI = "sk-test-" + secrets.token_hex(12)
ALL_SECRETS = (SECRET_KEY, SECRET_SECRET, SECRET_OPENAI)
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/agents/support"
MUTATING_PREFIXES = (
    "Create", "Put", "Register", "Update", "Delete", "Deregister", "Tag", "Untag", "Restore", "Detach", "Attach",
)  # fmt: skip


def default_network() -> tuple[list[str], str]:
    """Two subnets and the default security group of moto's default VPC (us-east-1)."""
    ec2 = boto3.client("ec2")
    subnets = sorted(s["SubnetId"] for s in ec2.describe_subnets()["Subnets"] if s.get("DefaultForAz"))[:2]
    groups = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": ["default"]}])["SecurityGroups"]
    return subnets, groups[0]["GroupId"]


WORKER_MODELS = {"llm": "openai/gpt-4o-mini", "stt": "openai/gpt-4o-mini-transcribe", "tts": "openai/gpt-4o-mini-tts"}
"""A production worker's default models (outside `local` all three are required; one provider key: OpenAI's)."""


def public_args(subnet_ids: list[str], sg: str, **overrides: Any) -> dict[str, Any]:
    """Non-secret arguments of a valid deployment."""
    args: dict[str, Any] = {
        "agent_name": "support",
        "stack": "dev",
        "environment": "test",
        "image": f"{IMAGE}:v1",
        "cpu": 512,
        "memory": 1024,
        "cluster_name": "voice",
        "create_cluster": True,
        "subnets": subnet_ids,
        "security_groups": [sg],
        "livekit_url": "wss://voice.example.com",
        "desired_count": 1,
        "tags": {"team": "voice"},
        "worker": WORKER_MODELS,
    }
    args.update(overrides)
    return args


def full_args(subnet_ids: list[str], sg: str, **overrides: Any) -> dict[str, Any]:
    """Valid arguments including the secret ones (plaintext, as the provider receives them)."""
    args = public_args(subnet_ids, sg)
    args.update(
        livekit_api_key=SECRET_KEY, livekit_api_secret=SECRET_SECRET, provider_keys={"OPENAI_API_KEY": SECRET_OPENAI}
    )
    args.update(overrides)
    return args


@contextmanager
def recorded_calls() -> Iterator[list[tuple[str, str]]]:
    """Every AWS call the provider makes inside the block, as (service, operation)."""
    calls: list[tuple[str, str]] = []
    hooked: list[Any] = []

    def record(model: Any, event_name: str = "", **_: Any) -> None:
        calls.append((event_name.split(".")[1], model.name))

    original = aws.Aws.client

    def client(self: aws.Aws, service: str) -> Any:  # botocore's own event hook on every client the code uses
        c = original(self, service)
        if c not in hooked:
            c.meta.events.register("provide-client-params.*.*", record)
            hooked.append(c)
        return c

    aws.Aws.client = client  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        aws.Aws.client = original  # type: ignore[method-assign]
        for c in hooked:
            c.meta.events.unregister("provide-client-params.*.*", record)


def mutating(calls: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The calls that change something."""
    return [c for c in calls if c[1].startswith(MUTATING_PREFIXES)]


def leftovers() -> dict[str, list[str]]:
    """Every ECS, IAM, Secrets Manager, Logs, Auto Scaling, ECR, SQS and EventBridge object still alive on moto."""
    ecs = boto3.client("ecs")
    clusters = ecs.list_clusters()["clusterArns"]
    live_clusters = (
        [c["clusterArn"] for c in ecs.describe_clusters(clusters=clusters)["clusters"] if c["status"] == "ACTIVE"]
        if clusters
        else []
    )
    services = []
    for cluster in clusters:
        arns = ecs.list_services(cluster=cluster)["serviceArns"]
        if arns:
            services += [
                s["serviceArn"]
                for s in ecs.describe_services(cluster=cluster, services=arns)["services"]
                if s["status"] != "INACTIVE"
            ]
    scaling = boto3.client("application-autoscaling")
    return {
        "clusters": live_clusters,
        "services": services,
        "task_definitions": ecs.list_task_definitions(status="ACTIVE")["taskDefinitionArns"]
        + ecs.list_task_definitions(status="INACTIVE")["taskDefinitionArns"],
        "roles": [r["RoleName"] for r in boto3.client("iam").list_roles()["Roles"]],
        "secrets": [
            s["Name"] for s in boto3.client("secretsmanager").list_secrets(IncludePlannedDeletion=True)["SecretList"]
        ],
        "log_groups": [g["logGroupName"] for g in boto3.client("logs").describe_log_groups()["logGroups"]],
        "scalable_targets": [
            t["ResourceId"] for t in scaling.describe_scalable_targets(ServiceNamespace="ecs")["ScalableTargets"]
        ],
        "scaling_policies": [
            p["PolicyName"] for p in scaling.describe_scaling_policies(ServiceNamespace="ecs")["ScalingPolicies"]
        ],
        "repositories": [r["repositoryName"] for r in boto3.client("ecr").describe_repositories()["repositories"]],
        "queues": boto3.client("sqs").list_queues().get("QueueUrls", []),
        "rules": [r["Name"] for r in boto3.client("events").list_rules()["Rules"]],
    }


def assert_nothing_left() -> None:
    """Fail naming every object that is still there."""
    left = {k: v for k, v in leftovers().items() if v}
    assert left == {}, f"objects left behind: {left}"


def create_deployment(**overrides: Any) -> tuple[AgentWorkerProvider, Any]:
    """A deployment created through the provider's own check and create (moto's default network)."""
    subnets, sg = default_network()
    p = AgentWorkerProvider()
    return p, p.create(p.check({}, {**full_args(subnets, sg, **overrides), "__provider": "x"}).inputs)


def role_statements(role: str) -> list[dict[str, Any]]:
    """Every statement of a role's inline policies."""
    iam = boto3.client("iam")
    statements: list[dict[str, Any]] = []
    for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
        doc = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
        statements += (json.loads(doc) if isinstance(doc, str) else doc)["Statement"]
    return statements


def container_env(task_definition_arn: str) -> dict[str, str]:
    """The worker container's plain environment in a task definition."""
    td = boto3.client("ecs").describe_task_definition(taskDefinition=task_definition_arn)["taskDefinition"]
    return {e["name"]: e["value"] for e in td["containerDefinitions"][0]["environment"]}
