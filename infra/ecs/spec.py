"""Pure builders: the task definition, the IAM documents and the tags of a deployment (no AWS calls)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from infra.ecs import naming
from infra.ecs import validation as v
from infra.ecs.args import AgentWorkerArgs


def tags(args: AgentWorkerArgs) -> dict[str, str]:
    """Tags for every object: user tags plus stack, environment and agent name."""
    return {
        **args.tags,
        naming.TAG_STACK: args.stack,
        naming.TAG_ENVIRONMENT: args.environment,
        naming.TAG_AGENT_NAME: args.agent_name,
    }


def container_environment(args: AgentWorkerArgs) -> dict[str, str]:
    """Plain (non-secret) environment of the worker container (``AgentWorkerArgs.worker_environment``)."""
    return args.worker_environment


def image_reference(args: AgentWorkerArgs, repository_uri: str | None) -> str:
    """The full image reference; a ``:tag`` / ``@digest`` is resolved against the owned repository."""
    if v.IMAGE_REF_RE.match(args.image):
        if not repository_uri:
            raise ValueError("image is relative to the owned repository, whose URI is not known")
        return repository_uri + args.image
    return args.image


def ecr_repository_arn(image: str) -> str | None:
    """ARN of the ECR repository an image reference points into, or None for other registries."""
    m = v.IMAGE_RE.match(image)
    if not m:
        return None
    registry, _, path = m.group("repository").partition("/")
    ecr = v.ECR_REGISTRY_RE.match(registry)
    if not ecr:
        return None
    partition = "aws-cn" if registry.endswith(".cn") else "aws"
    return f"arn:{partition}:ecr:{ecr.group('region')}:{ecr.group('account')}:repository/{path}"


def execution_policy(log_group_arn: str, secret_arns: list[str], repository_arn: str | None) -> str:
    """Least-privilege policy for the execution role: write this log group, read these secrets, pull this repo."""
    statements: list[dict[str, Any]] = [
        {
            "Sid": "Logs",
            "Effect": "Allow",
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": [log_group_arn.removesuffix(":*") + ":log-stream:*"],
        }
    ]
    if secret_arns:
        statements.append({
            "Sid": "Secrets",
            "Effect": "Allow",
            "Action": ["secretsmanager:GetSecretValue"],
            "Resource": sorted(secret_arns),
        })  # fmt: skip
    if repository_arn:
        statements += [
            # GetAuthorizationToken has no resource-level permissions: AWS requires "*" as its resource.
            {"Sid": "EcrAuth", "Effect": "Allow", "Action": ["ecr:GetAuthorizationToken"], "Resource": ["*"]},
            {
                "Sid": "EcrPull",
                "Effect": "Allow",
                "Action": ["ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage"],
                "Resource": [repository_arn],
            },
        ]
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, sort_keys=True)


def cluster_tasks_arn(cluster_arn: str) -> str:
    """ARN pattern of every task in a cluster (``arn:...:cluster/NAME`` -> ``arn:...:task/NAME/*``)."""
    prefix, _, name = cluster_arn.partition(":cluster/")
    return f"{prefix}:task/{name}/*"


DEATH_QUEUE_ACTIONS = ("sqs:ChangeMessageVisibility", "sqs:DeleteMessage", "sqs:ReceiveMessage")
"""What a worker does with the stack's death queue (``worker.stopped_tasks``): receive a stopped task's event, keep
it invisible while it recovers the task's calls, delete it when done. Nothing else: no send, no purge, no attributes."""


def task_policy(args: AgentWorkerArgs, cluster_arn: str) -> str | None:
    """Policy for the task role: the statements the user declared; with ``call_protection_minutes``, the
    worker's own task scale-in protection (``worker.task_protection``) on the cluster's tasks only; with a death
    queue, ``DEATH_QUEUE_ACTIONS`` on that one queue."""
    statements: list[dict[str, Any]] = [
        {"Sid": f"Worker{i}", "Effect": "Allow", "Action": s.actions, "Resource": s.resources}
        for i, s in enumerate(args.task_role_statements)
    ]
    if args.call_protection_minutes:
        statements.append({
            "Sid": "CallProtection",
            "Effect": "Allow",
            "Action": ["ecs:GetTaskProtection", "ecs:UpdateTaskProtection"],
            "Resource": [cluster_tasks_arn(cluster_arn)],
        })  # fmt: skip
    if args.death_queue_arn:
        statements.append({
            "Sid": "StoppedTasks",
            "Effect": "Allow",
            "Action": list(DEATH_QUEUE_ACTIONS),
            "Resource": [args.death_queue_arn],
        })  # fmt: skip
    if not statements:
        return None
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, sort_keys=True)


def task_definition(
    args: AgentWorkerArgs,
    *,
    image: str,
    region: str,
    log_group: str,
    execution_role_arn: str,
    task_role_arn: str,
    secret_arns: dict[str, str],
) -> dict[str, Any]:
    """``register_task_definition`` parameters (without tags); deterministic for equal inputs."""
    container: dict[str, Any] = {
        "name": naming.CONTAINER_NAME,
        "image": image,
        "essential": True,
        "environment": [{"name": k, "value": val} for k, val in sorted(container_environment(args).items())],
        "secrets": [{"name": k, "valueFrom": arn} for k, arn in sorted(secret_arns.items())],
        "logConfiguration": {
            "logDriver": "awslogs",
            "options": {"awslogs-group": log_group, "awslogs-region": region, "awslogs-stream-prefix": "worker"},
        },
        "stopTimeout": args.stop_timeout_seconds,
    }
    if args.health_check is not None:
        h = args.health_check
        container["healthCheck"] = {
            "command": h.command,
            "interval": h.interval_seconds,
            "timeout": h.timeout_seconds,
            "retries": h.retries,
            "startPeriod": h.start_period_seconds,
        }
    return {
        "family": names(args).family,
        "taskRoleArn": task_role_arn,
        "executionRoleArn": execution_role_arn,
        "networkMode": "awsvpc",
        "requiresCompatibilities": ["FARGATE"],
        "cpu": str(args.cpu),
        "memory": str(args.memory),
        "runtimePlatform": {"operatingSystemFamily": "LINUX", "cpuArchitecture": args.cpu_architecture},
        "containerDefinitions": [container],
    }


def digest(spec: dict[str, Any]) -> str:
    """Stable digest of a task definition spec (tags the registered revision; compared on update/refresh)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


def network_configuration(args: AgentWorkerArgs) -> dict[str, Any]:
    """``networkConfiguration`` of the service."""
    return {
        "awsvpcConfiguration": {
            "subnets": list(args.subnets),
            "securityGroups": list(args.security_groups),
            "assignPublicIp": "ENABLED" if args.assign_public_ip else "DISABLED",
        }
    }


def deployment_configuration(args: AgentWorkerArgs) -> dict[str, Any]:
    """``deploymentConfiguration`` of the service: rolling, with the circuit breaker."""
    d = args.deployment
    return {
        "deploymentCircuitBreaker": {"enable": True, "rollback": d.rollback},
        "minimumHealthyPercent": d.min_healthy_percent,
        "maximumPercent": d.max_percent,
    }


def names(args: AgentWorkerArgs) -> naming.Names:
    """Derived names of a deployment."""
    return naming.Names(args.environment, args.agent_name, args.effective_service_name, args.cluster_name)
