"""Names of the AWS objects an agent worker deployment owns, derived from environment and agent name.

Every name is a pure function of the arguments, so a create that was interrupted and retried finds (and
adopts) what the first attempt made instead of duplicating it.
"""

from __future__ import annotations

from dataclasses import dataclass

CONTAINER_NAME = "worker"
# Tag keys put on every object (values: the stack, environment and agent name).
TAG_STACK = "siphon:stack"
TAG_ENVIRONMENT = "siphon:environment"
TAG_AGENT_NAME = "siphon:agent_name"
TAG_SPEC_DIGEST = "siphon:spec-digest"  # on task definitions: digest of the registered spec


def default_service_name(environment: str, agent_name: str) -> str:
    """``siphon-<environment>-<agent_name>``: the ECS service of an agent's workers unless one is named, and the prefix
    of every other name of the deployment (at most 56 characters)."""
    return f"siphon-{environment}-{agent_name}"


@dataclass(frozen=True)
class Names:
    """Every derived name for one deployment."""

    environment: str
    agent_name: str
    service_name: str
    cluster_name: str

    @property
    def prefix(self) -> str:
        """Common prefix: ``default_service_name`` (at most 56 characters)."""
        return default_service_name(self.environment, self.agent_name)

    @property
    def family(self) -> str:
        """Task definition family."""
        return self.prefix

    @property
    def log_group(self) -> str:
        """CloudWatch log group."""
        return f"/siphon/{self.environment}/{self.agent_name}"

    @property
    def execution_role(self) -> str:
        """IAM role ECS uses to pull the image, read the secrets and write logs (at most 61 characters)."""
        return f"{self.prefix}-exec"

    @property
    def task_role(self) -> str:
        """IAM role the worker container runs as."""
        return f"{self.prefix}-task"

    @property
    def role_policy(self) -> str:
        """Name of the inline policy on either role."""
        return "siphon-worker"

    def secret(self, env_name: str) -> str:
        """Secrets Manager name of the secret injected as ``env_name``."""
        return f"siphon/{self.environment}/{self.agent_name}/{env_name}"

    @property
    def default_repository(self) -> str:
        """ECR repository name when the resource owns one and no name is given."""
        return f"siphon/{self.environment}/{self.agent_name}"

    @property
    def scaling_policy(self) -> str:
        """Application Auto Scaling target-tracking policy name (CPU)."""
        return f"{self.service_name}-cpu"

    @property
    def calls_scaling_policy(self) -> str:
        """Application Auto Scaling target-tracking policy name (call utilisation)."""
        return f"{self.service_name}-calls"

    @property
    def scaling_resource_id(self) -> str:
        """Application Auto Scaling resource id of the service."""
        return f"service/{self.cluster_name}/{self.service_name}"


def death_queue_name(environment: str) -> str:
    """``siphon-<environment>-worker-deaths``: the SQS queue of the stack's stopped tasks, and the EventBridge rule
    that feeds it (``infra.ecs.death_queue``; at most 37 characters)."""
    return f"siphon-{environment}-worker-deaths"
