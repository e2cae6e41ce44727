"""``AgentWorkerDeployment``: one agent worker on ECS Fargate, keyed by ``agent_name``.

Type token ``pulumi-python:dynamic/siphon-aws:AgentWorkerDeployment`` and provider path
``infra.ecs.provider.AgentWorkerProvider`` are recorded in state: keep both stable.

Example::

    AgentWorkerDeployment("support", {
        "agent_name": "support", "stack": pulumi.get_stack(), "environment": "prod",
        "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/agents:v1",
        "cluster_name": "voice", "subnets": [...], "security_groups": [...],
        "livekit_url": "wss://voice.example.com",
        "livekit_api_key": config.require_secret("livekitApiKey"),
        "livekit_api_secret": config.require_secret("livekitApiSecret"),
        "provider_keys": {"OPENAI_API_KEY": config.require_secret("openaiApiKey")},
    })
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pulumi
from pulumi.dynamic import Resource
from pydantic import BaseModel

from contract.types import SECRET_FIELDS
from infra.ecs.args import AgentWorkerArgs
from infra.ecs.provider import OUTPUT_KEYS, AgentWorkerProvider


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


def deployment_props(args: AgentWorkerArgs | Mapping[str, Any]) -> dict[str, Any]:
    """Resource inputs: secret fields wrapped as Pulumi secrets, computed outputs seeded with None."""
    if isinstance(args, AgentWorkerArgs):
        props: dict[str, Any] = args.public_fields()
        props["livekit_api_key"] = args.livekit_api_key.get_secret_value()
        props["livekit_api_secret"] = args.livekit_api_secret.get_secret_value()
        props["provider_keys"] = {k: s.get_secret_value() for k, s in args.provider_keys.items()}
    else:
        props = {k: _plain(v) for k, v in args.items()}
    for key in SECRET_FIELDS:
        if props.get(key) is not None:
            props[key] = pulumi.Output.secret(props[key])
    for key in OUTPUT_KEYS:
        props[key] = None
    return props


class AgentWorkerDeployment(Resource, module="siphon-aws", name="AgentWorkerDeployment"):
    """An agent worker on ECS Fargate: log group, roles, secrets, task definition, service, autoscaling.

    Arguments are the fields of ``infra.ecs.args.AgentWorkerArgs``, given as that model or as a mapping
    whose values may be Pulumi inputs. ``livekit_api_key``, ``livekit_api_secret`` and ``provider_keys``
    are always secret; they go to Secrets Manager and the container gets them through ``valueFrom``.
    """

    agent_name: pulumi.Output[str]
    image: pulumi.Output[str]
    region: pulumi.Output[str]
    cluster_arn: pulumi.Output[str]
    ecs_service_name: pulumi.Output[str]
    service_arn: pulumi.Output[str]
    task_definition_arn: pulumi.Output[str]
    image_uri: pulumi.Output[str]
    log_group_name: pulumi.Output[str]
    execution_role_arn: pulumi.Output[str]
    task_role_arn: pulumi.Output[str]
    secret_arns: pulumi.Output[dict[str, str]]
    repository_url: pulumi.Output[str | None]
    scaling_policy_arn: pulumi.Output[str | None]

    def __init__(
        self,
        resource_name: str,
        args: AgentWorkerArgs | Mapping[str, Any],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(AgentWorkerProvider(), resource_name, deployment_props(args), opts)
