"""The dynamic provider behind ``AgentWorkerDeployment``.

State refers to ``infra.ecs.provider.AgentWorkerProvider`` by import path: keep it stable. The instance
carries no attributes into state; the region comes from ``configure()`` (``aws:region``) or the
environment, credentials from boto3's default chain, and clients are built per call.

What state holds: the non-secret arguments, the ARNs and names of every AWS object, and per secret a
keyed fingerprint (HMAC with a random per-resource salt) so a changed value is noticed without the
value, or anything it can be recovered from, ever being stored.
"""

from __future__ import annotations

import secrets
from typing import Any

from pulumi.dynamic import (
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    UpdateResult,
)

from contract.types import SECRET_FIELDS
from infra.dynamic import is_unknown
from infra.ecs import operations as ops
from infra.ecs import rollout, spec
from infra.ecs.args import LIVEKIT_SECRET_ENV, AgentWorkerArgs
from infra.ecs.aws import Aws
from infra.ecs.base import RegionalProvider
from infra.ecs.naming import TAG_SPEC_DIGEST, Names, default_service_name

LABEL = "AgentWorkerDeployment"
DECLARED = tuple(AgentWorkerArgs.model_fields)
PUBLIC = tuple(k for k in DECLARED if k not in SECRET_FIELDS)
# Changing these changes the identity (names) of the deployed objects: replace, deleting first.
REPLACE_FIELDS = ("agent_name", "environment", "cluster_name")
# Computed outputs (seeded as None by the resource so they become readable properties).
OUTPUT_KEYS = (
    "region",
    "cluster_arn",
    "ecs_service_name",
    "service_arn",
    "task_definition_arn",
    "task_definition_digest",
    "image_uri",
    "log_group_name",
    "log_group_arn",
    "execution_role_arn",
    "task_role_arn",
    "secret_arns",
    "secret_fingerprints",
    "secret_salt",
    "repository_name",
    "repository_url",
    "repository_arn",
    "scaling_policy_arn",
    "drift",
)


def validate(props: dict[str, Any]) -> AgentWorkerArgs:
    """The arguments as a model, or InvalidArguments listing every problem (never quoting a value)."""
    args: AgentWorkerArgs = AgentWorkerProvider.validated(props)
    return args


def names_from_state(props: dict[str, Any]) -> Names:
    """Derived names as recorded in state."""
    return Names(props["environment"], props["agent_name"], props["ecs_service_name"], props["cluster_name"])


class AgentWorkerProvider(RegionalProvider):
    """CRUD for one agent worker deployment on ECS Fargate (see ``infra.ecs.resource``)."""

    serialize_as_secret_always = False  # nothing is captured: no attributes, no credentials
    ARGS, LABEL, WHO, DECLARED, OUTPUT_KEYS = AgentWorkerArgs, LABEL, "agent_name", DECLARED, OUTPUT_KEYS

    # -- check / diff (no AWS calls) -------------------------------------------------------------------

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        """Validate and normalise (defaults filled in); fields unknown during preview are checked at apply time."""
        args, body, unknown, failures = self.checked(news, {*DECLARED, *news})
        if args is None:
            return CheckResult(news, failures)
        normalised: dict[str, Any] = args.public_fields()
        for key in SECRET_FIELDS:
            if key in body:
                normalised[key] = body[key]  # plaintext here; the engine re-marks it secret (same key)
        normalised.update({k: news[k] for k in unknown})
        return CheckResult(normalised, [])

    def diff(self, id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        """Compare declared inputs with state (never ``__provider``); secrets by fingerprint."""
        changed = [k for k in PUBLIC if is_unknown(news.get(k)) or olds.get(k) != news.get(k)]
        if self._secrets_changed(olds, news):
            changed.append("secrets")
        if olds.get("drift"):
            changed.append("drift")
        replaces = [k for k in REPLACE_FIELDS if k in changed]
        service_name, environment, agent = (news.get(k) for k in ("service_name", "environment", "agent_name"))
        if any(is_unknown(x) for x in (service_name, environment, agent)) or (
            olds.get("ecs_service_name")
            and (service_name or default_service_name(str(environment), str(agent))) != olds["ecs_service_name"]
        ):
            replaces.append("service_name")
        if self._region_moved(olds):
            changed.append("region")
            replaces.append("region")
        return DiffResult(changes=bool(changed), replaces=replaces, delete_before_replace=True)

    @staticmethod
    def _secrets_changed(olds: dict[str, Any], news: dict[str, Any]) -> bool:
        if any(is_unknown(news.get(k)) for k in SECRET_FIELDS):
            return True
        salt, fps = olds.get("secret_salt"), olds.get("secret_fingerprints") or {}
        if not salt:
            return True
        values = {env: news.get(field) for field, env in LIVEKIT_SECRET_ENV.items()}
        values.update(news.get("provider_keys") or {})
        if set(values) != set(fps):
            return True
        return any(not isinstance(val, str) or ops.fingerprint(salt, k, val) != fps[k] for k, val in values.items())

    # -- create / update ------------------------------------------------------------------------------

    def create(self, props: dict[str, Any]) -> CreateResult:
        """Create every object, adopting any that already exists under its derived name."""
        args = validate(props)
        outs = reconcile(Aws(self._region()), args, None)
        return CreateResult(outs["service_arn"], outs)

    def update(self, id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        """Bring every object to the declaration; a changed spec registers a new revision (rolling deploy)."""
        args = validate(news)
        return UpdateResult(reconcile(Aws(self._region(olds)), args, olds))

    # -- read ------------------------------------------------------------------------------------------

    def read(self, id: str, props: dict[str, Any]) -> ReadResult:
        """Refresh: gone if the service is; otherwise live values and missing parts go into state."""
        aws = Aws(self._region(props))
        names = names_from_state(props)
        svc = ops.describe_service(aws, names.cluster_name, names.service_name)
        if svc is None:
            return ReadResult("", {})
        outs = dict(props)
        drift: list[str] = []
        if not props.get("autoscaling"):
            outs["desired_count"] = svc.get("desiredCount")
        net = (svc.get("networkConfiguration") or {}).get("awsvpcConfiguration")
        if net:
            if set(net.get("subnets", [])) != set(props.get("subnets") or []):
                outs["subnets"] = net.get("subnets", [])
            if set(net.get("securityGroups", [])) != set(props.get("security_groups") or []):
                outs["security_groups"] = net.get("securityGroups", [])
            outs["assign_public_ip"] = net.get("assignPublicIp") == "ENABLED"
        dc = svc.get("deploymentConfiguration")  # absent on moto until the first update_service
        if dc and "minimumHealthyPercent" in dc and isinstance(props.get("deployment"), dict):
            breaker = dc.get("deploymentCircuitBreaker") or {}
            outs["deployment"] = {
                **props["deployment"],
                "min_healthy_percent": dc["minimumHealthyPercent"],
                "max_percent": dc.get("maximumPercent", props["deployment"].get("max_percent")),
                "rollback": breaker.get("rollback", props["deployment"].get("rollback")),
            }
        live_td = svc.get("taskDefinition")
        if live_td and live_td != props.get("task_definition_arn"):
            described = ops.describe_task_definition(aws, live_td)
            if described is None or described[1].get(TAG_SPEC_DIGEST) != props.get("task_definition_digest"):
                drift.append(f"service runs task definition {live_td}")
            outs["task_definition_arn"] = live_td
            if described is not None:
                td, _ = described
                container: dict[str, Any] = next(iter(td.get("containerDefinitions", [])), {})
                if container.get("image") and container["image"] != props.get("image_uri"):
                    outs["image_uri"] = container["image"]
                    if props.get("image") == props.get("image_uri"):  # a full reference was declared
                        outs["image"] = container["image"]
                for key in ("cpu", "memory"):
                    if str(td.get(key, "")).isdigit():
                        outs[key] = int(td[key])
        group = ops.describe_log_group(aws, names.log_group)
        if group is None:
            drift.append(f"log group {names.log_group} is missing")
        else:
            outs["log_retention_days"] = group.get("retentionInDays")
        for role in (names.execution_role, names.task_role):
            if ops.get_role(aws, role) is None:
                drift.append(f"IAM role {role} is missing")
        for env, arn in sorted((props.get("secret_arns") or {}).items()):
            found = ops.describe_secret(aws, arn)
            if found is None or found.get("DeletedDate"):
                drift.append(f"secret for {env} is missing")
        if props.get("autoscaling") and not ops.scalable_target_exists(aws, names):
            drift.append("autoscaling target is missing")
        outs["drift"] = drift
        outs.pop("__provider", None)
        return ReadResult(id, outs)

    # -- delete ----------------------------------------------------------------------------------------

    def delete(self, id: str, props: dict[str, Any]) -> None:
        """Delete in an order AWS accepts; anything already gone counts as deleted."""
        aws = Aws(self._region(props))
        names = names_from_state(props)
        ops.delete_autoscaling(aws, names)
        if ops.describe_cluster(aws, names.cluster_name) is not None:
            ops.delete_service(aws, names, int(props.get("steady_state_timeout_seconds") or 900))
        ops.deregister_revisions(aws, names.family, keep=None, purge=True)
        if props.get("create_cluster"):
            ops.delete_cluster(aws, names.cluster_name)
        for env in sorted(props.get("secret_arns") or {}):
            ops.delete_secret(aws, props["secret_arns"][env])
        for role in (names.execution_role, names.task_role):
            ops.delete_role(aws, role)
        ops.delete_log_group(aws, names.log_group)
        if props.get("repository_name"):
            ops.delete_repository(aws, props["repository_name"])


def reconcile(aws: Aws, args: AgentWorkerArgs, prior: dict[str, Any] | None) -> dict[str, Any]:
    """Create or update every object to match ``args``; ``prior`` is the state of an existing deployment."""
    prior = prior or {}
    names = spec.names(args)
    tags = spec.tags(args)
    drifted = bool(prior.get("drift"))

    repo_name = repo_uri = repo_arn = None
    if args.ecr_repository is not None:
        repo_name = args.ecr_repository.name or names.default_repository
        repo_uri, repo_arn = ops.ensure_repository(aws, repo_name, args.ecr_repository, tags)
    image = spec.image_reference(args, repo_uri)

    log_group_arn = ops.ensure_log_group(aws, names.log_group, args.log_retention_days, tags)

    salt = prior.get("secret_salt") or secrets.token_hex(16)
    prior_arns: dict[str, str] = prior.get("secret_arns") or {}
    prior_fps: dict[str, str] = prior.get("secret_fingerprints") or {}
    secret_arns: dict[str, str] = {}
    fingerprints: dict[str, str] = {}
    rotated = False
    for env, value in sorted(args.secret_values().items()):
        fp = ops.fingerprint(salt, env, value)
        if drifted or env not in prior_arns or prior_fps.get(env) != fp:
            secret_arns[env] = ops.ensure_secret(aws, names.secret(env), value, tags)
            rotated = rotated or env in prior_arns
        else:
            secret_arns[env] = prior_arns[env]
        fingerprints[env] = fp

    execution_role_arn = ops.ensure_role(
        aws,
        names.execution_role,
        names.role_policy,
        spec.execution_policy(log_group_arn, list(secret_arns.values()), spec.ecr_repository_arn(image)),
        tags,
        f"ECS execution role of agent worker {args.agent_name} ({args.environment})",
    )
    cluster_arn = ops.ensure_cluster(aws, names.cluster_name, args.create_cluster, tags)
    task_role_arn = ops.ensure_role(
        aws,
        names.task_role,
        names.role_policy,
        spec.task_policy(args, cluster_arn),
        tags,
        f"Task role of agent worker {args.agent_name} ({args.environment})",
    )

    params = spec.task_definition(
        args,
        image=image,
        region=aws.region,
        log_group=names.log_group,
        execution_role_arn=execution_role_arn,
        task_role_arn=task_role_arn,
        secret_arns=secret_arns,
    )
    digest = spec.digest(params)
    prior_td = prior.get("task_definition_arn")
    current = ops.describe_task_definition(aws, prior_td) if prior_td else None
    if current is not None and current[0].get("status") == "ACTIVE" and current[1].get(TAG_SPEC_DIGEST) == digest:
        td_arn = str(prior_td)
    else:
        td_arn = ops.register_task_definition(aws, params, digest, tags)

    # With autoscaling the count belongs to Application Auto Scaling, unless the declared count changed.
    keep_count = bool(prior) and args.autoscaling is not None and prior.get("desired_count") == args.desired_count
    service_arn = ops.ensure_service(
        aws,
        names,
        task_definition_arn=td_arn,
        desired_count=None if keep_count else args.desired_count,
        network=spec.network_configuration(args),
        deployment=spec.deployment_configuration(args),
        tags=tags,
        force_new_deployment=rotated and td_arn == prior_td,  # same revision, new secret values: restart tasks
    )
    scaling_policy_arn = None
    if args.autoscaling is not None:
        scaling_policy_arn = ops.ensure_autoscaling(aws, names, args.autoscaling, tags)
    elif prior.get("autoscaling"):
        ops.delete_autoscaling(aws, names)

    # Clean-up once the service uses the new revision: old revisions, dropped secrets, a dropped repository.
    ops.deregister_revisions(aws, names.family, keep=td_arn)
    for env, arn in sorted(prior_arns.items()):
        if env not in secret_arns:
            ops.delete_secret(aws, arn)
    if prior.get("repository_name") and prior["repository_name"] != repo_name:
        ops.delete_repository(aws, prior["repository_name"])

    if args.wait_for_steady_state:
        rollout.wait_for_steady_state(
            lambda: ops.describe_service(aws, names.cluster_name, names.service_name) or {},
            td_arn,
            args.steady_state_timeout_seconds,
        )

    return {
        **args.public_fields(),
        "region": aws.region,
        "cluster_arn": cluster_arn,
        "ecs_service_name": names.service_name,
        "service_arn": service_arn,
        "task_definition_arn": td_arn,
        "task_definition_digest": digest,
        "image_uri": image,
        "log_group_name": names.log_group,
        "log_group_arn": log_group_arn,
        "execution_role_arn": execution_role_arn,
        "task_role_arn": task_role_arn,
        "secret_arns": secret_arns,
        "secret_fingerprints": fingerprints,
        "secret_salt": salt,
        "repository_name": repo_name,
        "repository_url": repo_uri,
        "repository_arn": repo_arn,
        "scaling_policy_arn": scaling_policy_arn,
        "drift": [],
    }
