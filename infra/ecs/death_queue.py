"""``WorkerDeathQueue``: ECS tells the stack's workers which of its tasks stopped (issue 29), on managed parts only.

- An EventBridge rule on the account's default bus matches the cluster's ``ECS Task State Change`` events whose
  ``lastStatus`` is ``STOPPED``, for the stack's own services only (``detail.group`` is ``service:<name>``). It lists
  the exact names (a ``service_name`` may be anything, and a prefix ``siphon-prod-`` would also match environment
  ``prod-eu``'s services); only when they would not fit a pattern's 2048 characters (about 25 agents) does it match
  their common prefix ``service:siphon-<env>-``, still within this cluster.
- It sends each such event to an SQS queue. The queue's policy lets only ``events.amazonaws.com`` send, and only
  for this rule (``aws:SourceArn``). Messages live 15 minutes (a death older than that has no call left to save)
  and stay invisible for 30 s once received (a worker that dies while recovering hands the event to another).
- The workers (``worker.stopped_tasks``) long-poll the queue: each event is taken by one worker, which recovers the
  stopped task's calls (``worker.dead_worker.recover_worker``) and then deletes it. Their task role may receive,
  delete and extend messages of this queue only (``infra.ecs.spec.DEATH_QUEUE_ACTIONS``).

Only ECS reports a death here, after the task's containers have stopped: a worker that is slow, throttled or cut
off from LiveKit is never taken for dead. Idle cost: no LiveKit request at all; each worker keeps one SQS long poll
open (20 s each, 3 requests a minute; SQS bills 1M requests at about $0.40, so about $0.05 per worker-month).

Type token ``pulumi-python:dynamic/siphon-aws:WorkerDeathQueue`` and provider path
``infra.ecs.death_queue.WorkerDeathQueueProvider`` are recorded in state: keep both stable.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Self

import pulumi
from pulumi.dynamic import (
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    Resource,
    UpdateResult,
)
from pydantic import Field, field_validator, model_validator

from contract.types import EcsEnvironmentName, Model
from infra.dynamic import InvalidArguments, is_unknown
from infra.ecs import naming
from infra.ecs import operations as ops
from infra.ecs import validation as v
from infra.ecs.aws import Aws, partition
from infra.ecs.base import RegionalProvider

LABEL = "WorkerDeathQueue"
TARGET_ID = "worker-deaths"
"""Id of the queue among the rule's targets."""
DEFAULT_RETENTION_SECONDS = 900
DEFAULT_VISIBILITY_TIMEOUT_SECONDS = 30
LONG_POLL_SECONDS = 20
"""The queue's default receive wait (the workers ask for it too)."""
MAX_SERVICES = 100
"""ECS services one death queue reports (the services of one stack)."""
PATTERN_LIMIT = 2048
"""Characters an EventBridge event pattern may have (AWS's default quota)."""
_LONGEST_REGION = "ap-southeast-2"  # sizes the pattern before the region is known


class DeathQueueArgs(Model):
    """Arguments of a ``WorkerDeathQueue``: the stack, the cluster and the services whose stopped tasks it reports."""

    stack: str = Field(pattern=v.STACK_RE.pattern)
    environment: EcsEnvironmentName
    cluster_name: str = Field(pattern=v.CLUSTER_OR_SERVICE_RE.pattern)
    service_names: list[str] = Field(min_length=1, description="the ECS services of the stack")
    message_retention_seconds: int = Field(
        DEFAULT_RETENTION_SECONDS, ge=60, le=1_209_600, description="how long an unhandled death is kept"
    )
    visibility_timeout_seconds: int = Field(
        DEFAULT_VISIBILITY_TIMEOUT_SECONDS, ge=5, le=43_200,
        description="how long a received death stays hidden from the other workers (extended while it is handled)",
    )  # fmt: skip
    tags: v.Tags = Field(default_factory=dict)

    @field_validator("service_names")
    @classmethod
    def _services(cls, value: list[str]) -> list[str]:
        if len(value) > MAX_SERVICES:
            raise ValueError(
                f"{len(value)} ECS services: one stack's death queue reports at most {MAX_SERVICES}; "
                "split the agents over two stacks (environments)"
            )
        bad = [s for s in value if not v.CLUSTER_OR_SERVICE_RE.match(s)]
        if bad:
            raise ValueError(f"not ECS service names: {', '.join(map(repr, bad))}")
        if len(set(value)) != len(value):
            raise ValueError("lists a service twice")
        return sorted(value)

    @model_validator(mode="after")
    def _pattern_fits(self) -> Self:
        self.groups  # noqa: B018  (raises when no pattern fits)
        return self

    @property
    def groups(self) -> list[Any]:
        """The rule's ``detail.group`` matchers: each service's exact group, or (when those would not fit the
        pattern's size) their common prefix ``service:siphon-<environment>-``."""
        exact = [f"service:{s}" for s in self.service_names]
        cluster = cluster_arn(_LONGEST_REGION, "123456789012", self.cluster_name)
        if len(event_pattern(cluster, exact)) <= PATTERN_LIMIT:
            return exact
        prefix = "service:" + naming.default_service_name(self.environment, "")
        if all(g.startswith(prefix) for g in exact):
            return [{"prefix": prefix}]
        raise ValueError(
            f"service_names: {len(exact)} services do not fit one EventBridge pattern ({PATTERN_LIMIT} characters) "
            f"and not all are named {prefix.removeprefix('service:')}<agent>: leave their service_name unset"
        )

    @property
    def name(self) -> str:
        """The queue's and the rule's name."""
        return naming.death_queue_name(self.environment)

    @property
    def all_tags(self) -> dict[str, str]:
        """User tags plus the stack and environment."""
        return {**self.tags, naming.TAG_STACK: self.stack, naming.TAG_ENVIRONMENT: self.environment}


DECLARED = tuple(DeathQueueArgs.model_fields)
REPLACE_FIELDS = ("environment",)  # the names derive from it: replace, deleting first
OUTPUT_KEYS = (
    "region", "queue_name", "queue_url", "queue_arn", "rule_name", "rule_arn", "event_pattern", "cluster_arn", "drift",
)  # fmt: skip


def cluster_arn(region: str, account: str, cluster_name: str) -> str:
    """The ARN ECS events carry for the cluster (the cluster need not exist yet)."""
    return f"arn:{partition(region)}:ecs:{region}:{account}:cluster/{cluster_name}"


def event_pattern(cluster: str, groups: list[Any]) -> str:
    """The rule's pattern: ECS task state changes to STOPPED, in ``cluster``, of tasks whose group matches one of
    ``groups`` (``DeathQueueArgs.groups``)."""
    return json.dumps({
        "source": ["aws.ecs"],
        "detail-type": ["ECS Task State Change"],
        "detail": {"clusterArn": [cluster], "lastStatus": ["STOPPED"], "group": groups},
    }, sort_keys=True)  # fmt: skip


def queue_policy(queue_arn: str, rule_arn: str) -> str:
    """The queue's resource policy: EventBridge may send to it, for this rule only; nobody else is granted anything."""
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "StoppedTasksFromEventBridge",
            "Effect": "Allow",
            "Principal": {"Service": "events.amazonaws.com"},
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
            "Condition": {"ArnEquals": {"aws:SourceArn": rule_arn}},
        }],
    }, sort_keys=True)  # fmt: skip


def queue_settings(args: DeathQueueArgs) -> dict[str, str]:
    """The queue attributes the resource owns (the policy is set once the rule's ARN is known)."""
    return {
        "MessageRetentionPeriod": str(args.message_retention_seconds),
        "VisibilityTimeout": str(args.visibility_timeout_seconds),
        "ReceiveMessageWaitTimeSeconds": str(LONG_POLL_SECONDS),
        "SqsManagedSseEnabled": "true",  # encrypted at rest with SQS-owned keys (EventBridge can send to it)
    }


def validate(props: Mapping[str, Any]) -> DeathQueueArgs:
    """The arguments as a model, or InvalidArguments naming the resource and each field."""
    args: DeathQueueArgs = WorkerDeathQueueProvider.validated(props)
    return args


def _same_json(a: str | None, b: str) -> bool:
    try:
        return a is not None and json.loads(a) == json.loads(b)
    except ValueError:
        return False


class WorkerDeathQueueProvider(RegionalProvider):
    """CRUD for one stack's death queue: the SQS queue, its policy, the EventBridge rule and its target."""

    serialize_as_secret_always = False  # nothing is captured: no attributes, no credentials
    ARGS, LABEL, WHO, DECLARED, OUTPUT_KEYS = DeathQueueArgs, LABEL, "environment", DECLARED, OUTPUT_KEYS

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        """Validate and normalise; fields unknown during preview are checked at apply time."""
        args, _, unknown, failures = self.checked(news, set(DECLARED))
        if args is None:
            return CheckResult(news, failures)
        normalised: dict[str, Any] = args.model_dump(mode="json")
        normalised.update({k: news[k] for k in unknown})
        return CheckResult(normalised, [])

    def diff(self, id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        """Compare declared inputs with state (never ``__provider``); a drifted queue or rule is an update."""
        changed = [k for k in DECLARED if is_unknown(news.get(k)) or olds.get(k) != news.get(k)]
        if olds.get("drift"):
            changed.append("drift")
        replaces = [k for k in REPLACE_FIELDS if k in changed]
        if self._region_moved(olds):
            changed.append("region")
            replaces.append("region")
        return DiffResult(changes=bool(changed), replaces=replaces, delete_before_replace=True)

    def create(self, props: dict[str, Any]) -> CreateResult:
        """Create the queue and the rule, adopting either if it exists under its name."""
        outs = reconcile(Aws(self._region()), validate(props))
        return CreateResult(outs["queue_arn"], outs)

    def update(self, id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        """Bring the queue, its policy, the rule and its target to the declaration."""
        return UpdateResult(reconcile(Aws(self._region(olds)), validate(news)))

    def read(self, id: str, props: dict[str, Any]) -> ReadResult:
        """Refresh: gone if the queue is; a changed or missing setting, policy, rule or target is drift."""
        aws = Aws(self._region(props))
        name = str(props["queue_name"])
        url = ops.get_queue_url(aws, name)
        attributes = ops.queue_attributes(aws, url) if url else None
        if url is None or attributes is None:
            return ReadResult("", {})
        outs = {k: val for k, val in props.items() if k != "__provider"}
        outs["queue_url"] = url
        drift: list[str] = []
        try:
            wanted = queue_settings(validate(props))
        except InvalidArguments:
            wanted = {}
        for key, value in wanted.items():
            if attributes.get(key, value) != value:  # an attribute the service does not report is not drift
                drift.append(f"queue {name}: {key} is {attributes.get(key)}, not {value}")
        if not _same_json(attributes.get("Policy"), queue_policy(str(props["queue_arn"]), str(props["rule_arn"]))):
            drift.append(f"queue {name}: its policy is not the one that lets only rule {props['rule_name']} send")
        rule = ops.describe_rule(aws, str(props["rule_name"]))
        if rule is None:
            drift.append(f"EventBridge rule {props['rule_name']} is missing")
        else:
            if rule.get("State") != "ENABLED":
                drift.append(f"EventBridge rule {props['rule_name']} is {rule.get('State')}")
            if not _same_json(rule.get("EventPattern"), str(props.get("event_pattern"))):
                drift.append(f"EventBridge rule {props['rule_name']}: its event pattern changed")
            if [t.get("Arn") for t in ops.rule_targets(aws, str(props["rule_name"]))] != [props["queue_arn"]]:
                drift.append(f"EventBridge rule {props['rule_name']}: its target is not exactly queue {name}")
        outs["drift"] = drift
        return ReadResult(id, outs)

    def delete(self, id: str, props: dict[str, Any]) -> None:
        """Delete the rule (its target first), then the queue; anything already gone counts as deleted."""
        aws = Aws(self._region(props))
        ops.delete_rule(aws, str(props.get("rule_name") or naming.death_queue_name(str(props["environment"]))))
        ops.delete_queue(aws, str(props.get("queue_name") or naming.death_queue_name(str(props["environment"]))))


def reconcile(aws: Aws, args: DeathQueueArgs) -> dict[str, Any]:
    """Create or update the queue, the rule, the queue's policy and the rule's target; the outputs."""
    cluster = cluster_arn(aws.region, ops.account_id(aws), args.cluster_name)
    url, arn = ops.ensure_queue(aws, args.name, queue_settings(args), args.all_tags)
    description = f"Stopped tasks of stack {args.stack}'s workers in cluster {args.cluster_name} -> queue {args.name}"
    pattern = event_pattern(cluster, args.groups)
    rule_arn = ops.ensure_rule(aws, args.name, pattern, description[:512], args.all_tags)
    ops.set_queue_policy(aws, url, queue_policy(arn, rule_arn))
    ops.ensure_only_target(aws, args.name, TARGET_ID, arn)
    return {
        **args.model_dump(mode="json"),
        "region": aws.region,
        "queue_name": args.name,
        "queue_url": url,
        "queue_arn": arn,
        "rule_name": args.name,
        "rule_arn": rule_arn,
        "event_pattern": pattern,
        "cluster_arn": cluster,
        "drift": [],
    }


def death_queue_props(args: DeathQueueArgs | Mapping[str, Any]) -> dict[str, Any]:
    """Resource inputs, with the computed outputs seeded as None (so they become readable properties)."""
    props = args.model_dump(mode="json") if isinstance(args, DeathQueueArgs) else dict(args)
    return {**props, **dict.fromkeys(OUTPUT_KEYS)}


class WorkerDeathQueue(Resource, module="siphon-aws", name="WorkerDeathQueue"):
    """The SQS queue that receives the stack's stopped ECS tasks through an EventBridge rule (module docstring).

    Arguments are the fields of ``DeathQueueArgs``, as that model or a mapping whose values may be Pulumi inputs.
    Give ``queue_url`` and ``queue_arn`` to the stack's ``AgentWorkerDeployment``s (``death_queue_url``,
    ``death_queue_arn``): their workers then read it, with permission for this queue only.
    """

    queue_url: pulumi.Output[str]
    queue_arn: pulumi.Output[str]
    rule_arn: pulumi.Output[str]
    cluster_arn: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        args: DeathQueueArgs | Mapping[str, Any],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(WorkerDeathQueueProvider(), resource_name, death_queue_props(args), opts)
