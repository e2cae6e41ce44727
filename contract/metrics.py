"""The call metric's names: what the worker writes (``worker.call_metric``) and the ECS scaling policy reads
(``infra.ecs.operations``), in CloudWatch's ``Siphon`` namespace, per ECS cluster and service."""

from __future__ import annotations

NAMESPACE = "Siphon"
UTILIZATION = "CallUtilization"
ACTIVE = "ActiveCalls"
FALLBACKS = "ModelFallbacks"
REFUSALS = "CallsRefused"
CALLER_DROPS = "CallerOverridesDropped"  # parameters and fields dropped from a caller-sourced layer
CLUSTER_DIMENSION = "ClusterName"
SERVICE_DIMENSION = "ServiceName"


def dimensions(cluster: str, service: str) -> dict[str, str]:
    """The metric's dimensions for one ECS service (the scaling policy selects the same pairs)."""
    return {CLUSTER_DIMENSION: cluster, SERVICE_DIMENSION: service}
