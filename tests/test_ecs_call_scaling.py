"""An ECS deployment with autoscaling scales on calls: the policy reads the metric its workers publish.

Against the session moto server; the worker side of the same names is proven by a real call in
``tests/test_worker_live.py`` (``test_a_worker_on_ecs_publishes_its_calls_as_the_metric_its_service_scales_on``).
"""

from __future__ import annotations

from typing import Any

import boto3
import pytest

from contract import metrics
from localenv.manager import Endpoints
from tests.test_ecs_helpers import container_env, create_deployment, default_network, full_args

SERVICE = "siphon-test-support"


@pytest.fixture
def deployed(aws: Endpoints) -> Any:
    subnets, sg = default_network()
    p, created = create_deployment(autoscaling={"min_count": 1, "max_count": 6, "calls_target_percent": 60})
    yield p, created, subnets, sg
    p.delete(created.id, created.outs)


def policies() -> dict[str, dict[str, Any]]:
    out = boto3.client("application-autoscaling").describe_scaling_policies(ServiceNamespace="ecs")
    return {p["PolicyName"]: p["TargetTrackingScalingPolicyConfiguration"] for p in out["ScalingPolicies"]}


def test_the_service_tracks_the_call_utilisation_its_workers_publish(deployed) -> None:
    _, created, _, _ = deployed
    calls = policies()[f"{SERVICE}-calls"]
    assert calls["TargetValue"] == 60
    metric = calls["CustomizedMetricSpecification"]
    assert (metric["Namespace"], metric["MetricName"], metric["Statistic"]) == ("Siphon", "CallUtilization", "Average")
    env = container_env(created.outs["task_definition_arn"])
    dims = {d["Name"]: d["Value"] for d in metric["Dimensions"]}
    assert dims == metrics.dimensions(env["SIPHON_METRIC_CLUSTER"], env["SIPHON_METRIC_SERVICE"])
    assert dims == {"ClusterName": "voice", "ServiceName": SERVICE}
    assert created.outs["scaling_policy_arn"].endswith(f"policyName/{SERVICE}-calls")


def test_the_cpu_policy_stays_beside_it_unless_set_to_null(deployed) -> None:
    p, created, subnets, sg = deployed
    assert policies()[f"{SERVICE}-cpu"]["TargetValue"] == 60, "cpu_target_percent keeps its default"
    args = full_args(subnets, sg, autoscaling={"min_count": 1, "max_count": 6, "cpu_target_percent": None})
    news = p.check(created.outs, {**args, "__provider": "x"}).inputs
    assert p.diff(created.id, created.outs, news).changes
    created.outs.update(p.update(created.id, created.outs, news).outs)
    assert set(policies()) == {f"{SERVICE}-calls"}
    assert policies()[f"{SERVICE}-calls"]["TargetValue"] == 70, "calls_target_percent's default"


def test_a_deployment_from_before_call_scaling_shows_an_update(deployed) -> None:
    """State written by 0.1.0 has no calls_target_percent: the normalised inputs differ, so `up` adds the policy."""
    p, created, subnets, sg = deployed
    olds = dict(created.outs)
    olds["autoscaling"] = {k: v for k, v in olds["autoscaling"].items() if k != "calls_target_percent"}
    args = full_args(subnets, sg, autoscaling={"min_count": 1, "max_count": 6, "calls_target_percent": 60})
    assert p.diff(created.id, olds, p.check(olds, {**args, "__provider": "x"}).inputs).changes
