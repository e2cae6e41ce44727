"""Idempotent operations on the AWS objects a deployment owns: describe first, then create or update.

moto silently replaces a duplicate ``create_service`` / ``create_cluster`` where AWS rejects it, so
nothing here creates without looking first. Every ``delete_*`` treats "already gone" as done.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError, WaiterError

from contract import metrics
from infra.ecs.args import Autoscaling, EcrRepository
from infra.ecs.aws import Aws, error_code, is_not_found
from infra.ecs.naming import TAG_SPEC_DIGEST, Names

TRUST_POLICY = json.dumps({
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"}, "Action": "sts:AssumeRole"}
    ],
})  # fmt: skip


def tag_list(t: dict[str, str], key: str = "Key", value: str = "Value") -> list[dict[str, str]]:
    """Tags as the list-of-pairs shape most AWS APIs take."""
    return [{key: k, value: val} for k, val in sorted(t.items())]


class DeploymentError(RuntimeError):
    """An AWS object is not in a state the deployment can use; the message says what to do."""


def fingerprint(salt: str, name: str, value: str) -> str:
    """Keyed digest of a secret value (HMAC-SHA256, random per-resource salt): shows a change, reveals nothing."""
    return hmac.new(bytes.fromhex(salt), f"{name}\0{value}".encode(), hashlib.sha256).hexdigest()


# -- CloudWatch Logs ----------------------------------------------------------------------------------


def describe_log_group(aws: Aws, name: str) -> dict[str, Any] | None:
    """The log group called exactly ``name``, or None."""
    for group in aws.logs.describe_log_groups(logGroupNamePrefix=name).get("logGroups", []):
        if group["logGroupName"] == name:
            return group
    return None


def ensure_log_group(aws: Aws, name: str, retention_days: int, tags: dict[str, str]) -> str:
    """Create or adopt the log group, set its retention and tags; returns its ARN (ending ``:*``)."""
    group = describe_log_group(aws, name)
    if group is None:
        aws.logs.create_log_group(logGroupName=name, tags=tags)
        group = describe_log_group(aws, name)
        assert group is not None
    else:
        aws.logs.tag_resource(resourceArn=group["arn"].removesuffix(":*"), tags=tags)
    if group.get("retentionInDays") != retention_days:
        aws.logs.put_retention_policy(logGroupName=name, retentionInDays=retention_days)
    return str(group["arn"])


def delete_log_group(aws: Aws, name: str) -> None:
    """Delete the log group if it exists."""
    try:
        aws.logs.delete_log_group(logGroupName=name)
    except ClientError as e:
        if not is_not_found(e):
            raise


# -- Secrets Manager ----------------------------------------------------------------------------------


def describe_secret(aws: Aws, name: str) -> dict[str, Any] | None:
    """The secret called ``name`` (including one scheduled for deletion), or None."""
    try:
        return aws.secrets.describe_secret(SecretId=name)
    except ClientError as e:
        if is_not_found(e):
            return None
        raise


def ensure_secret(aws: Aws, name: str, value: str, tags: dict[str, str]) -> str:
    """Create the secret, or adopt it (restoring it if scheduled for deletion) and store ``value``; returns the ARN."""
    current = describe_secret(aws, name)
    pairs = tag_list(tags)
    if current is None:
        return str(aws.secrets.create_secret(Name=name, SecretString=value, Tags=pairs)["ARN"])
    arn = str(current["ARN"])
    if current.get("DeletedDate"):
        aws.secrets.restore_secret(SecretId=arn)
    try:
        same = aws.secrets.get_secret_value(SecretId=arn).get("SecretString") == value
    except ClientError as e:
        if not is_not_found(e):
            raise
        same = False
    if not same:
        aws.secrets.put_secret_value(SecretId=arn, SecretString=value)
    aws.secrets.tag_resource(SecretId=arn, Tags=pairs)
    return arn


def delete_secret(aws: Aws, name_or_arn: str) -> None:
    """Delete the secret at once (no recovery window: the name is reusable by a new deployment)."""
    try:
        aws.secrets.delete_secret(SecretId=name_or_arn, ForceDeleteWithoutRecovery=True)
    except ClientError as e:
        if not is_not_found(e):
            raise


# -- IAM ----------------------------------------------------------------------------------------------


def get_role(aws: Aws, name: str) -> dict[str, Any] | None:
    """The role, or None."""
    try:
        return aws.iam.get_role(RoleName=name)["Role"]
    except ClientError as e:
        if is_not_found(e):
            return None
        raise


def ensure_role(aws: Aws, name: str, policy_name: str, policy: str | None, tags: dict[str, str], purpose: str) -> str:
    """Create or adopt an ECS task role with exactly one inline policy (or none); returns its ARN."""
    role = get_role(aws, name)
    pairs = tag_list(tags)
    if role is None:
        role = aws.iam.create_role(
            RoleName=name, AssumeRolePolicyDocument=TRUST_POLICY, Description=purpose, Tags=pairs
        )["Role"]
        aws.iam.get_waiter("role_exists").wait(RoleName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    else:
        aws.iam.update_assume_role_policy(RoleName=name, PolicyDocument=TRUST_POLICY)
        aws.iam.tag_role(RoleName=name, Tags=pairs)
    existing = aws.iam.list_role_policies(RoleName=name).get("PolicyNames", [])
    for other in existing:
        if other != policy_name or policy is None:
            aws.iam.delete_role_policy(RoleName=name, PolicyName=other)
    for attached in aws.iam.list_attached_role_policies(RoleName=name).get("AttachedPolicies", []):
        aws.iam.detach_role_policy(RoleName=name, PolicyArn=attached["PolicyArn"])  # least privilege: ours only
    if policy is not None:
        aws.iam.put_role_policy(RoleName=name, PolicyName=policy_name, PolicyDocument=policy)
    return str(role["Arn"])


def delete_role(aws: Aws, name: str) -> None:
    """Remove the role's policies, then the role."""
    try:
        for policy in aws.iam.list_role_policies(RoleName=name).get("PolicyNames", []):
            aws.iam.delete_role_policy(RoleName=name, PolicyName=policy)
        for attached in aws.iam.list_attached_role_policies(RoleName=name).get("AttachedPolicies", []):
            aws.iam.detach_role_policy(RoleName=name, PolicyArn=attached["PolicyArn"])
        aws.iam.delete_role(RoleName=name)
    except ClientError as e:
        if not is_not_found(e):
            raise


# -- ECR ----------------------------------------------------------------------------------------------


def lifecycle_policy(keep_last: int) -> str:
    """Expire all but the newest ``keep_last`` images."""
    rule = {
        "rulePriority": 1,
        "description": f"keep the newest {keep_last} images",
        "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": keep_last},
        "action": {"type": "expire"},
    }
    return json.dumps({"rules": [rule]})


def ensure_repository(aws: Aws, name: str, repo: EcrRepository, tags: dict[str, str]) -> tuple[str, str]:
    """Create or adopt the owned ECR repository (scan on push, lifecycle policy); returns (URI, ARN)."""
    try:
        found = aws.ecr.describe_repositories(repositoryNames=[name])["repositories"][0]
        aws.ecr.put_image_scanning_configuration(
            repositoryName=name, imageScanningConfiguration={"scanOnPush": repo.scan_on_push}
        )
        aws.ecr.put_image_tag_mutability(repositoryName=name, imageTagMutability=repo.tag_mutability)
        aws.ecr.tag_resource(resourceArn=found["repositoryArn"], tags=tag_list(tags))
    except ClientError as e:
        if not is_not_found(e):
            raise
        found = aws.ecr.create_repository(
            repositoryName=name,
            imageTagMutability=repo.tag_mutability,
            imageScanningConfiguration={"scanOnPush": repo.scan_on_push},
            tags=tag_list(tags),
        )["repository"]
    aws.ecr.put_lifecycle_policy(repositoryName=name, lifecyclePolicyText=lifecycle_policy(repo.keep_last_images))
    return str(found["repositoryUri"]), str(found["repositoryArn"])


def delete_repository(aws: Aws, name: str) -> None:
    """Delete the owned repository and its images."""
    try:
        aws.ecr.delete_repository(repositoryName=name, force=True)
    except ClientError as e:
        if not is_not_found(e):
            raise


# -- ECS clusters and task definitions ------------------------------------------------------------------


def describe_cluster(aws: Aws, name: str) -> dict[str, Any] | None:
    """The ACTIVE cluster called ``name``, or None."""
    for cluster in aws.ecs.describe_clusters(clusters=[name]).get("clusters", []):
        if cluster.get("status") == "ACTIVE":
            return cluster
    return None


def ensure_cluster(aws: Aws, name: str, create: bool, tags: dict[str, str]) -> str:
    """The cluster's ARN; created (when ``create``) only if no ACTIVE cluster has the name."""
    cluster = describe_cluster(aws, name)
    if cluster is None:
        if not create:
            raise DeploymentError(f"ECS cluster {name!r} does not exist: create it, or set create_cluster")
        cluster = aws.ecs.create_cluster(
            clusterName=name,
            tags=tag_list(tags, "key", "value"),
            settings=[{"name": "containerInsights", "value": "enabled"}],
        )["cluster"]
    return str(cluster["clusterArn"])


def delete_cluster(aws: Aws, name: str) -> None:
    """Delete an owned cluster (after its service is gone)."""
    try:
        aws.ecs.delete_cluster(cluster=name)
    except ClientError as e:
        if not is_not_found(e):
            raise


def register_task_definition(aws: Aws, params: dict[str, Any], digest: str, tags: dict[str, str]) -> str:
    """Register a new revision tagged with its spec digest; returns the revision ARN."""
    all_tags = {**tags, TAG_SPEC_DIGEST: digest}
    td = aws.ecs.register_task_definition(**params, tags=tag_list(all_tags, "key", "value"))
    return str(td["taskDefinition"]["taskDefinitionArn"])


def describe_task_definition(aws: Aws, arn: str) -> tuple[dict[str, Any], dict[str, str]] | None:
    """(task definition, tags) of a revision, or None if it does not exist."""
    try:
        out = aws.ecs.describe_task_definition(taskDefinition=arn, include=["TAGS"])
    except ClientError as e:
        if error_code(e) in ("ClientException", "InvalidParameterException") or is_not_found(e):
            return None
        raise
    return out["taskDefinition"], {t["key"]: t["value"] for t in out.get("tags", [])}


def family_revisions(aws: Aws, family: str, status: str) -> list[str]:
    """ARNs of the revisions of exactly ``family`` (familyPrefix also matches longer families) with ``status``."""
    arns: list[str] = []
    for page in aws.ecs.get_paginator("list_task_definitions").paginate(familyPrefix=family, status=status):
        arns += [a for a in page["taskDefinitionArns"] if a.rsplit("/", 1)[1].rsplit(":", 1)[0] == family]
    return arns


def deregister_revisions(aws: Aws, family: str, keep: str | None = None, purge: bool = False) -> list[str]:
    """Deregister every ACTIVE revision of ``family`` except ``keep``; ``purge`` also deletes INACTIVE ones."""
    gone = [arn for arn in family_revisions(aws, family, "ACTIVE") if arn != keep]
    for arn in gone:
        aws.ecs.deregister_task_definition(taskDefinition=arn)
    if purge:
        inactive = family_revisions(aws, family, "INACTIVE")
        for i in range(0, len(inactive), 10):
            aws.ecs.delete_task_definitions(taskDefinitions=inactive[i : i + 10])
    return gone


# -- ECS services --------------------------------------------------------------------------------------


def describe_service(aws: Aws, cluster: str, service: str) -> dict[str, Any] | None:
    """The service if it exists and is not INACTIVE (a deleted service stays describable), else None."""
    try:
        out = aws.ecs.describe_services(cluster=cluster, services=[service], include=["TAGS"])
    except ClientError as e:
        if is_not_found(e):
            return None
        raise
    for svc in out.get("services", []):
        if svc.get("status") not in ("INACTIVE", None):
            return svc
    return None


def ensure_service(
    aws: Aws,
    names: Names,
    *,
    task_definition_arn: str,
    desired_count: int | None,
    network: dict[str, Any],
    deployment: dict[str, Any],
    tags: dict[str, str],
    force_new_deployment: bool,
) -> str:
    """Create the service, or point the existing one at ``task_definition_arn`` (a rolling deployment).

    ``desired_count`` None leaves the count alone (Application Auto Scaling owns it).
    """
    current = describe_service(aws, names.cluster_name, names.service_name)
    if current is None:
        svc = aws.ecs.create_service(
            cluster=names.cluster_name,
            serviceName=names.service_name,
            taskDefinition=task_definition_arn,
            desiredCount=desired_count if desired_count is not None else 1,
            launchType="FARGATE",
            networkConfiguration=network,
            deploymentConfiguration=deployment,
            deploymentController={"type": "ECS"},
            propagateTags="SERVICE",
            enableECSManagedTags=True,
            tags=tag_list(tags, "key", "value"),
        )["service"]
        return str(svc["serviceArn"])
    params: dict[str, Any] = {
        "cluster": names.cluster_name,
        "service": names.service_name,
        "taskDefinition": task_definition_arn,
        "networkConfiguration": network,
        "deploymentConfiguration": deployment,
        "forceNewDeployment": force_new_deployment,
    }
    if desired_count is not None:
        params["desiredCount"] = desired_count
    svc = aws.ecs.update_service(**params)["service"]
    aws.ecs.tag_resource(resourceArn=svc["serviceArn"], tags=tag_list(tags, "key", "value"))
    return str(svc["serviceArn"])


def delete_service(aws: Aws, names: Names, wait_seconds: int) -> None:
    """Scale the service to zero, delete it and wait until it is INACTIVE."""
    if describe_service(aws, names.cluster_name, names.service_name) is None:
        return
    aws.ecs.update_service(cluster=names.cluster_name, service=names.service_name, desiredCount=0)
    aws.ecs.delete_service(cluster=names.cluster_name, service=names.service_name, force=True)
    if wait_seconds > 0:
        try:
            aws.ecs.get_waiter("services_inactive").wait(
                cluster=names.cluster_name,
                services=[names.service_name],
                WaiterConfig={"Delay": 5, "MaxAttempts": max(1, wait_seconds // 5)},
            )
        except WaiterError as e:
            raise DeploymentError(
                f"service {names.service_name!r} did not become INACTIVE within {wait_seconds}s"
            ) from e


# -- Application Auto Scaling ---------------------------------------------------------------------------

SCALING = {"ServiceNamespace": "ecs", "ScalableDimension": "ecs:service:DesiredCount"}


def ensure_autoscaling(aws: Aws, names: Names, scaling: Autoscaling, tags: dict[str, str]) -> str:
    """Register the scalable target, the calls policy and the CPU policy (or drop it); the calls policy's ARN."""
    aws.scaling.register_scalable_target(
        **SCALING,
        ResourceId=names.scaling_resource_id,
        MinCapacity=scaling.min_count,
        MaxCapacity=scaling.max_count,
        Tags=tags,
    )

    def track(policy: str, target: float, metric: dict[str, Any]) -> str:
        out = aws.scaling.put_scaling_policy(
            **SCALING,
            PolicyName=policy,
            ResourceId=names.scaling_resource_id,
            PolicyType="TargetTrackingScaling",
            TargetTrackingScalingPolicyConfiguration={
                "TargetValue": target,
                **metric,
                "ScaleInCooldown": scaling.scale_in_cooldown_seconds,
                "ScaleOutCooldown": scaling.scale_out_cooldown_seconds,
            },
        )
        return str(out["PolicyARN"])

    arn = track(
        names.calls_scaling_policy, scaling.calls_target_percent, {"CustomizedMetricSpecification": calls_metric(names)}
    )
    if scaling.cpu_target_percent is None:
        delete_scaling_policy(aws, names, names.scaling_policy)
    else:
        cpu = {"PredefinedMetricSpecification": {"PredefinedMetricType": "ECSServiceAverageCPUUtilization"}}
        track(names.scaling_policy, scaling.cpu_target_percent, cpu)
    return arn


def calls_metric(names: Names) -> dict[str, Any]:
    """The service's call-utilisation metric, as the workers publish it (``contract.metrics``)."""
    dims = metrics.dimensions(names.cluster_name, names.service_name)
    return {
        "MetricName": metrics.UTILIZATION,
        "Namespace": metrics.NAMESPACE,
        "Dimensions": [{"Name": k, "Value": v} for k, v in sorted(dims.items())],
        "Statistic": "Average",
        "Unit": "Percent",
    }


def delete_scaling_policy(aws: Aws, names: Names, policy: str) -> None:
    """Delete one scaling policy of the service; a missing one is fine."""
    try:
        aws.scaling.delete_scaling_policy(**SCALING, PolicyName=policy, ResourceId=names.scaling_resource_id)
    except ClientError as e:
        if not is_not_found(e):
            raise


def scalable_target_exists(aws: Aws, names: Names) -> bool:
    """True if the service's desired count is registered with Application Auto Scaling."""
    out = aws.scaling.describe_scalable_targets(**{"ServiceNamespace": "ecs"}, ResourceIds=[names.scaling_resource_id])
    return bool(out.get("ScalableTargets"))


def delete_autoscaling(aws: Aws, names: Names) -> None:
    """Delete every scaling policy of the service, then deregister its scalable target."""
    policies = aws.scaling.describe_scaling_policies(ServiceNamespace="ecs", ResourceId=names.scaling_resource_id)
    for policy in policies.get("ScalingPolicies", []):
        delete_scaling_policy(aws, names, policy["PolicyName"])
    if scalable_target_exists(aws, names):
        try:
            aws.scaling.deregister_scalable_target(**SCALING, ResourceId=names.scaling_resource_id)
        except ClientError as e:
            if not is_not_found(e):
                raise


# -- SQS and EventBridge: the stack's death queue (infra.ecs.death_queue) --------------------------------

QUEUE_DELETED_RECENTLY_WAIT = 65
"""Seconds SQS refuses a queue name after its queue was deleted (60 s, plus a margin)."""


def account_id(aws: Aws) -> str:
    """The account the credentials belong to."""
    return str(aws.sts.get_caller_identity()["Account"])


def get_queue_url(aws: Aws, name: str) -> str | None:
    """The URL of the queue called ``name``, or None."""
    try:
        return str(aws.sqs.get_queue_url(QueueName=name)["QueueUrl"])
    except ClientError as e:
        if is_not_found(e):
            return None
        raise


def queue_attributes(aws: Aws, url: str) -> dict[str, str] | None:
    """Every attribute of the queue at ``url``, or None when it is gone."""
    try:
        return dict(aws.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"]).get("Attributes", {}))
    except ClientError as e:
        if is_not_found(e):
            return None
        raise


def ensure_queue(
    aws: Aws, name: str, attributes: dict[str, str], tags: dict[str, str], sleep: Callable[[float], None] = time.sleep
) -> tuple[str, str]:
    """Create or adopt the queue, set ``attributes`` and ``tags``; returns (URL, ARN). A name whose queue was just
    deleted (a replacement) is retried until SQS accepts it again."""
    url = get_queue_url(aws, name)
    if url is None:
        deadline = time.monotonic() + QUEUE_DELETED_RECENTLY_WAIT
        while True:
            try:
                url = str(aws.sqs.create_queue(QueueName=name, Attributes=attributes, tags=tags)["QueueUrl"])
                break
            except ClientError as e:
                if error_code(e) not in ("QueueDeletedRecently", "AWS.SimpleQueueService.QueueDeletedRecently"):
                    raise
                if time.monotonic() > deadline:
                    raise DeploymentError(
                        f"SQS queue {name!r}: its name is still refused {QUEUE_DELETED_RECENTLY_WAIT}s after the "
                        "old queue was deleted"
                    ) from e
                sleep(5)
    else:
        aws.sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
        aws.sqs.tag_queue(QueueUrl=url, Tags=tags)
    found = queue_attributes(aws, url) or {}
    return url, str(found["QueueArn"])


def set_queue_policy(aws: Aws, url: str, policy: str) -> None:
    """Replace the queue's resource policy."""
    aws.sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": policy})


def delete_queue(aws: Aws, name: str) -> None:
    """Delete the queue called ``name`` (and the messages in it) if it exists."""
    url = get_queue_url(aws, name)
    if url is None:
        return
    try:
        aws.sqs.delete_queue(QueueUrl=url)
    except ClientError as e:
        if not is_not_found(e):
            raise


def describe_rule(aws: Aws, name: str) -> dict[str, Any] | None:
    """The EventBridge rule called ``name`` on the default bus, or None."""
    try:
        return dict(aws.events.describe_rule(Name=name))
    except ClientError as e:
        if is_not_found(e):
            return None
        raise


def rule_targets(aws: Aws, name: str) -> list[dict[str, Any]]:
    """The rule's targets (none when the rule is gone)."""
    try:
        return list(aws.events.list_targets_by_rule(Rule=name).get("Targets", []))
    except ClientError as e:
        if is_not_found(e):
            return []
        raise


def ensure_rule(aws: Aws, name: str, pattern: str, description: str, tags: dict[str, str]) -> str:
    """Create or update the (enabled) rule with this event pattern; returns its ARN."""
    pairs = tag_list(tags)
    rule = aws.events.put_rule(Name=name, EventPattern=pattern, State="ENABLED", Description=description, Tags=pairs)
    arn = str(rule["RuleArn"])
    aws.events.tag_resource(ResourceARN=arn, Tags=pairs)  # put_rule ignores Tags on an existing rule
    return arn


def ensure_only_target(aws: Aws, rule: str, target_id: str, arn: str) -> None:
    """Make ``arn`` (under ``target_id``) the rule's one target: others are removed."""
    others = [t["Id"] for t in rule_targets(aws, rule) if t["Id"] != target_id]
    if others:
        aws.events.remove_targets(Rule=rule, Ids=others)
    out = aws.events.put_targets(Rule=rule, Targets=[{"Id": target_id, "Arn": arn}])
    if out.get("FailedEntryCount"):
        failed = out.get("FailedEntries", [{}])[0]
        raise DeploymentError(
            f"EventBridge rule {rule!r}: target {arn} refused: {failed.get('ErrorCode')}: {failed.get('ErrorMessage')}"
        )


def delete_rule(aws: Aws, name: str) -> None:
    """Remove the rule's targets, then the rule; a missing rule is fine."""
    try:
        ids = [t["Id"] for t in rule_targets(aws, name)]
        if ids:
            aws.events.remove_targets(Rule=name, Ids=ids)
        aws.events.delete_rule(Name=name)
    except ClientError as e:
        if not is_not_found(e):
            raise
