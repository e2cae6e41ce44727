"""The moto server answers boto3 through AWS_ENDPOINT_URL, and resets between tests."""

from __future__ import annotations

import boto3

from localenv.manager import Endpoints


def test_ecs_through_aws_endpoint_url(aws: Endpoints):
    ecs = boto3.client("ecs")  # endpoint, region and dummy credentials come from the environment
    assert ecs.meta.endpoint_url == aws.aws_endpoint_url
    arn = ecs.create_cluster(clusterName="foundation")["cluster"]["clusterArn"]
    assert arn.endswith(":cluster/foundation")
    assert ecs.list_clusters()["clusterArns"] == [arn]


def test_state_is_reset_between_tests(aws: Endpoints):
    assert boto3.client("ecs").list_clusters()["clusterArns"] == []
