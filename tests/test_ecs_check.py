"""check() and diff() of the AgentWorkerDeployment provider: pure logic, never an AWS call."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from pulumi.output import Unknown

from infra.dynamic import InvalidArguments
from infra.ecs import operations, rollout
from infra.ecs.provider import AgentWorkerProvider, validate
from infra.ecs.resource import AgentWorkerDeployment
from tests.test_ecs_helpers import ALL_SECRETS, SECRET_OPENAI, WORKER_MODELS, full_args, recorded_calls

SUBNETS = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]
SG = "sg-0123456789abcdef0"
DIGEST = "sha256:" + "a" * 64


def args(**overrides: Any) -> dict[str, Any]:
    return full_args(SUBNETS, SG, **overrides)


INVALID = [
    ("cpu", {"cpu": 300}, "not a Fargate cpu value"),
    ("memory", {"cpu": 256, "memory": 4096}, "not allowed with cpu 256"),
    ("memory", {"cpu": 1024, "memory": 1024}, "not allowed with cpu 1024"),
    ("desired_count", {"desired_count": 5, "autoscaling": {"min_count": 1, "max_count": 3}}, "outside autoscaling"),
    ("autoscaling", {"autoscaling": {"min_count": 4, "max_count": 2}, "desired_count": 3}, "min_count"),
    ("desired_count", {"desired_count": -1}, "greater than or equal to 0"),
    ("log_retention_days", {"log_retention_days": 13}, "not a CloudWatch Logs retention"),
    ("agent_name", {"agent_name": "Support_Agent"}, "not a valid agent name on ECS"),
    ("agent_name", {"agent_name": "a" * 40}, "1-32 lower-case letters"),
    ("environment", {"environment": "prod env"}, "not a valid environment name on ECS"),
    ("cluster_name", {"cluster_name": "bad/cluster"}, "pattern"),
    ("service_name", {"service_name": "-svc"}, "pattern"),
    ("image", {"image": "support:v1"}, "full reference"),
    ("image", {"image": f"{'1' * 12}.dkr.ecr.us-east-1.amazonaws.com/agents"}, "full reference"),
    ("image", {"image": ":v1"}, "needs ecr_repository"),
    ("subnets", {"subnets": []}, "at least 1"),
    ("subnets", {"subnets": ["subnet-zz"]}, "not subnet ids"),
    ("security_groups", {"security_groups": ["default"]}, "not security group ids"),
    ("provider_keys", {"provider_keys": {"openai-key": "x"}}, "not an environment variable name"),
    ("provider_keys", {"provider_keys": {"LIVEKIT_TOKEN": "x"}}, "is reserved"),
    ("provider_keys", {"provider_keys": {"OPENAI_API_KEY": ""}}, "empty value"),
    ("provider_keys", {"provider_keys": {"OPENAI_API_KEY": {"nested": "x"}}}, "valid string"),
    ("livekit_api_secret", {"livekit_api_secret": ""}, "at least 1"),
    ("livekit_url", {"livekit_url": "https://voice.example.com"}, "pattern"),
    ("extra_env", {"extra_env": {"SIPHON_DEFAULT_LLM": "x"}}, "is reserved"),
    ("extra_env", {"extra_env": {"SIPHON_MAX_JOBS": "9"}}, "is reserved"),  # max_calls sets it
    (
        "extra_env",
        {"extra_env": {"SIPHON_METRIC_SERVICE": "other"}},
        "is reserved",
    ),  # the calls scaling policy reads it
    ("extra_env", {"extra_env": {"OPENAI_API_KEY": "x"}}, "also set in provider_keys"),
    # #32: what the worker's own settings refuse, read from the container's environment, stops every task at start
    ("extra_env", {"extra_env": {"SIPHON_HTTP_PORT": "eighty"}}, "SIPHON_HTTP_PORT: Input should be a valid integer"),
    ("extra_env", {"extra_env": {"SIPHON_AUDIO_TIMEOUT": "500"}}, "SIPHON_AUDIO_TIMEOUT: Input should be less than"),
    ("extra_env", {"extra_env": {"SIPHON_DRAIN_TIMOUT": "60"}}, "did you mean SIPHON_DRAIN_TIMEOUT"),
    ("extra_env", {"extra_env": {"SIPHON_HTTP_PORT": "9000"}}, "health check probes 127.0.0.1:8081"),
    ("extra_env", {"extra_env": {"SIPHON_HTTP_HOST": "10.0.0.7"}}, "health check probes 127.0.0.1:8081"),
    ("max_calls", {"cpu": 512, "memory": 1024, "max_calls": 9}, "lower max_calls to 4, or give the task cpu: 2048"),
    ("stop_timeout_seconds", {"stop_timeout_seconds": 300}, "less than or equal to 120"),
    ("health_check", {"health_check": {"command": ["echo", "ok"]}}, "CMD"),
    ("deployment", {"deployment": {"min_healthy_percent": 100, "max_percent": 100}}, "max_percent"),
    (
        "task_role_statements",
        {"task_role_statements": [{"actions": ["s3:*"], "resources": ["arn:aws:s3:::b/*"]}]},
        "'*'",
    ),
    ("tags", {"tags": {"aws:owner": "me"}}, "reserved"),
    ("unexpected", {"unexpected": 1}, "unknown field"),
    ("livekit_api_key", {"livekit_api_key": None}, "valid string"),
    # #31: a fallback chain's every entry is run as one spec is: its provider's key is given too
    (
        "worker",
        {"worker": {**WORKER_MODELS, "llm": ["openai/gpt-4o-mini", "anthropic/claude-haiku-4-5"]}},
        "worker.llm.1: anthropic/claude-haiku-4-5 needs ANTHROPIC_API_KEY",
    ),
]


@pytest.mark.parametrize(("field", "overrides", "reason"), INVALID, ids=[f"{c[0]}-{i}" for i, c in enumerate(INVALID)])
def test_invalid_arguments_are_rejected_naming_the_field_without_aws_calls(field, overrides, reason):
    provider = AgentWorkerProvider()
    with recorded_calls() as calls:
        result = provider.check({}, {**args(**overrides), "__provider": "x"})
    assert calls == []
    assert result.failures, f"{overrides} was accepted"
    matching = [f for f in result.failures if f.property == field and reason in f.reason]
    assert matching, [(f.property, f.reason) for f in result.failures]
    assert all("AgentWorkerDeployment" in f.reason for f in result.failures)
    for failure in result.failures:
        assert not any(s in failure.reason for s in ALL_SECRETS)


def test_there_are_at_least_fifteen_invalid_cases():
    assert len(INVALID) >= 15


def test_validate_error_names_the_deployment_and_never_quotes_secrets():
    with pytest.raises(InvalidArguments) as err:
        validate(args(cpu=300, provider_keys={"OPENAI_API_KEY": SECRET_OPENAI, "bad name": SECRET_OPENAI}))
    text = str(err.value)
    assert "AgentWorkerDeployment (agent_name 'support')" in text
    assert "cpu:" in text
    assert "provider_keys" in text
    assert SECRET_OPENAI not in text


def test_check_fills_defaults_and_keeps_secret_inputs():
    result = AgentWorkerProvider().check({}, {**args(), "__provider": "x"})
    assert result.failures == []
    inputs = result.inputs
    assert inputs["worker"]["llm"] == "openai/gpt-4o-mini"
    assert inputs["worker"]["end_call"] is None, "unset worker defaults stay unset: the worker's own defaults apply"
    assert inputs["health_check"]["interval_seconds"] == 30
    assert inputs["provider_keys"] == {"OPENAI_API_KEY": SECRET_OPENAI}
    assert inputs["deployment"] == {"min_healthy_percent": 100, "max_percent": 200, "rollback": True}


def test_check_defers_unknown_fields_to_apply_time():
    unknown = Unknown()
    news = {**args(), "subnets": unknown, "livekit_api_secret": unknown, "desired_count": unknown}
    news["autoscaling"] = {"min_count": 2, "max_count": 3}  # desired_count unknown: the range rule waits
    result = AgentWorkerProvider().check({}, news)
    assert result.failures == []
    assert result.inputs["subnets"] is unknown
    bad = AgentWorkerProvider().check({}, {**news, "cpu": 300})
    assert [f.property for f in bad.failures] == ["cpu"]


def outputs_for(**overrides: Any) -> dict[str, Any]:
    """State as create would record it (without AWS): public fields plus fingerprints."""
    model = validate(args(**overrides))
    salt = "00" * 16
    return {
        **model.public_fields(),
        "__provider": "serialized",
        "ecs_service_name": model.effective_service_name,
        "region": "us-east-1",
        "secret_salt": salt,
        "secret_fingerprints": {k: operations.fingerprint(salt, k, v) for k, v in model.secret_values().items()},
        "drift": [],
    }


def checked(**overrides: Any) -> dict[str, Any]:
    return AgentWorkerProvider().check({}, {**args(**overrides), "__provider": "other"}).inputs


def test_diff_no_change_ignores_provider_and_outputs():
    d = AgentWorkerProvider().diff("id", outputs_for(), checked())
    assert d.changes is False
    assert d.replaces == []


@pytest.mark.parametrize(
    ("overrides", "replaces"),
    [
        ({"image": "registry.example.com/agents/support:v2"}, []),
        ({"worker": {"llm": "openai/gpt-4.1"}}, []),
        ({"desired_count": 3}, []),
        ({"autoscaling": {"min_count": 1, "max_count": 4}}, []),
        ({"provider_keys": {"OPENAI_API_KEY": "sk-other"}}, []),
        ({"provider_keys": {}}, []),
        ({"livekit_api_secret": "new-secret"}, []),
        ({"service_name": "custom"}, ["service_name"]),
        ({"cluster_name": "other"}, ["cluster_name"]),
        ({"agent_name": "sales"}, ["agent_name", "service_name"]),
    ],
)
def test_diff_changes_and_replaces(overrides, replaces):
    d = AgentWorkerProvider().diff("id", outputs_for(), checked(**overrides))
    assert d.changes is True
    assert sorted(d.replaces) == sorted(replaces)
    assert d.delete_before_replace is True


def test_diff_naming_the_default_service_name_explicitly_is_no_replace():
    d = AgentWorkerProvider().diff("id", outputs_for(), checked(service_name="siphon-test-support"))
    assert d.replaces == []


def test_diff_with_unknowns_and_drift():
    provider = AgentWorkerProvider()
    assert provider.diff("id", outputs_for(), {**checked(), "image": Unknown()}).changes is True
    assert provider.diff("id", outputs_for(), {**checked(), "livekit_api_key": Unknown()}).changes is True
    drifted = {**outputs_for(), "drift": ["log group /siphon/test/support is missing"]}
    assert provider.diff("id", drifted, checked()).changes is True


def test_state_fingerprints_do_not_contain_secret_values():
    state = repr(outputs_for())
    assert not any(s in state for s in ALL_SECRETS)


def test_resource_props_mark_secrets_and_seed_outputs():
    import asyncio

    from infra.ecs.resource import deployment_props

    asyncio.set_event_loop(asyncio.new_event_loop())  # Outputs need a loop; an earlier asyncio.run() cleared it

    props = deployment_props(args())
    assert all(type(props[k]).__name__ == "Output" for k in ("livekit_api_key", "livekit_api_secret", "provider_keys"))
    assert props["service_arn"] is None
    assert props["task_definition_arn"] is None
    assert AgentWorkerDeployment._resource_type_name == "dynamic/siphon-aws:AgentWorkerDeployment"


def test_provider_pickles_by_reference_into_a_fresh_interpreter():
    import base64

    import dill

    payload = base64.b64encode(dill.dumps(AgentWorkerProvider(), recurse=True)).decode()
    assert len(payload) < 200  # by reference: no code, no captured state
    code = (
        "import base64, dill, sys; p = dill.loads(base64.b64decode(sys.argv[1])); "
        "print(type(p).__module__, type(p).__name__, vars(p))"
    )
    out = subprocess.run([sys.executable, "-c", code, payload], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "infra.ecs.provider AgentWorkerProvider {}"


# -- steady-state waiting (moto never rolls out, so this is exercised with scripted responses) ----------

TD = "arn:aws:ecs:us-east-1:123456789012:task-definition/f:2"
OLD = "arn:aws:ecs:us-east-1:123456789012:task-definition/f:1"


def svc(*deployments: dict[str, Any]) -> dict[str, Any]:
    return {"serviceName": "s", "deployments": list(deployments)}


def scripted(responses: list[dict[str, Any]]) -> tuple[Any, Any, list[float]]:
    it = iter(responses)
    slept: list[float] = []
    now = [0.0]

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    return (lambda: next(it)), (sleep, lambda: now[0]), slept


def test_wait_returns_when_the_new_revision_completes():
    describe, (sleep, clock), slept = scripted([
        svc({"status": "PRIMARY", "taskDefinition": TD, "rolloutState": "IN_PROGRESS"},
            {"status": "ACTIVE", "taskDefinition": OLD, "rolloutState": "COMPLETED"}),
        svc({"status": "PRIMARY", "taskDefinition": TD, "rolloutState": "COMPLETED"}),
    ])  # fmt: skip
    rollout.wait_for_steady_state(describe, TD, 60, poll_seconds=5, sleep=sleep, clock=clock)
    assert slept == [5]


def test_wait_raises_when_the_circuit_breaker_fails_the_rollout():
    describe, (sleep, clock), _ = scripted([
        svc({"status": "PRIMARY", "taskDefinition": OLD, "rolloutState": "IN_PROGRESS"},
            {"status": "ACTIVE", "taskDefinition": TD, "rolloutState": "FAILED",
             "rolloutStateReason": "tasks failed to start"}),
    ])  # fmt: skip
    with pytest.raises(rollout.RolloutFailed, match="tasks failed to start"):
        rollout.wait_for_steady_state(describe, TD, 60, sleep=sleep, clock=clock)


def test_wait_times_out_naming_the_setting():
    stuck = svc({"status": "PRIMARY", "taskDefinition": TD, "rolloutState": "IN_PROGRESS"})
    describe, (sleep, clock), slept = scripted([stuck] * 10)
    with pytest.raises(rollout.RolloutTimeout, match="steady_state_timeout_seconds"):
        rollout.wait_for_steady_state(describe, TD, 30, poll_seconds=10, sleep=sleep, clock=clock)
    assert slept == [10, 10, 10]


def test_rollout_state_without_rollout_state_field():
    one = svc({"status": "PRIMARY", "taskDefinition": TD, "runningCount": 2, "desiredCount": 2})
    assert rollout.rollout_state(one, TD) == "done"
    assert rollout.rollout_state(one, OLD) == "pending"


def test_a_health_server_moved_where_a_custom_health_check_probes_is_accepted():
    """Moving the health server is fine when the health check follows it (the stack declares both)."""
    command = ["CMD-SHELL", "python3 -c \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:9000/')\""]
    result = AgentWorkerProvider().check({}, {**args(extra_env={"SIPHON_HTTP_PORT": "9000"},
                                                     health_check={"command": command}), "__provider": "x"})  # fmt: skip
    assert not result.failures, result.failures


def test_worker_settings_in_extra_env_that_the_worker_accepts_are_accepted():
    result = AgentWorkerProvider().check({}, {**args(extra_env={"SIPHON_AUDIO_TIMEOUT": "30", "LOG_LEVEL": "debug"}),
                                              "__provider": "x"})  # fmt: skip
    assert not result.failures, result.failures
