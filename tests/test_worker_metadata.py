"""contract.metadata / contract.resolve / contract.models / contract.settings: schema, SIPHON compatibility, merge rule, hostile input.

Pure logic, no servers. HOSTILE_CASES is reused by the live worker tests (tests/test_worker_live.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from contract import metadata as md
from contract import models as specs
from contract.deployment import defaults_env
from contract.deployment import worker_env as deployment_env
from contract.metadata import (
    AgentConfig,
    AllowedOverrides,
    CallMetadata,
    ProviderSpec,
    RouteMetadata,
    parse_agent_config,
    parse_metadata,
)
from contract.resolve import (
    BUILTIN_DEFAULTS,
    CallFacts,
    MergedConfig,
    ResolvedCall,
    SipFacts,
    call_facts,
    is_set,
    merge_layers,
    resolve_call,
    worker_defaults,
)
from contract.settings import SettingsError, WorkerSettings
from localenv.siphon_payloads import SIPHON_INBOUND, SIPHON_OUTBOUND
from worker.models import registry

SIPHON_INBOUND_DEFAULTS = {
    "agent_config": {"llm": None, "tts": None, "stt": None, "greeting_instructions": None, "system_instructions": None},
    "inbound_trunk_id": "ST_inboundAbc123",
    "agent_number": "+15550100",
}

_big_instructions = "x" * (md.MAX_INSTRUCTIONS_CHARS + 1)
HOSTILE_CASES: dict[str, tuple[str, set[str]]] = {
    # name: (raw job metadata, warning codes that must be reported)
    "empty": ("", set()),
    "whitespace": ("   \n", set()),
    "not_json": ("hello world", {"invalid_json"}),
    "truncated_json": ('{"route": "a"', {"invalid_json"}),
    "json_null": ("null", {"not_an_object"}),
    "json_list": ("[1, 2, 3]", {"not_an_object"}),
    "json_number": ("42", {"not_an_object"}),
    "json_string": ('"agent_config"', {"not_an_object"}),
    "unknown_keys_only": (json.dumps({"foo": 1, "bar": {"baz": [1]}}), {"unknown_keys"}),
    "agent_config_string": (json.dumps({"agent_config": "openai"}), {"invalid_field"}),
    "agent_config_list": (json.dumps({"agent_config": [1, 2]}), {"invalid_field"}),
    "llm_number": (json.dumps({"agent_config": {"llm": 42}}), {"invalid_field"}),
    "provider_missing": (json.dumps({"agent_config": {"llm": {"model": "gpt-4o"}}}), {"invalid_field"}),
    "provider_nested_param": (
        json.dumps({"agent_config": {"tts": {"provider": "x", "o": {"a": 1}}}}),
        {"invalid_field"},
    ),
    "provider_secret_param": (
        json.dumps({"agent_config": {"llm": {"provider": "openai", "model": "m", "api_key": "sk-LEAKME"}}}),
        {"secret_param"},
    ),
    "unknown_provider": (json.dumps({"agent_config": {"llm": {"provider": "skynet", "model": "t-800"}}}), set()),
    "unknown_model_string": (json.dumps({"agent_config": {"tts": "local/nonexistent-voice"}}), set()),
    "unknown_agent_config_key": (
        json.dumps({"agent_config": {"voice": "x", "llm": "local/scripted"}}),
        {"unknown_keys"},
    ),
    "instructions_too_long": (
        json.dumps({"agent_config": {"system_instructions": _big_instructions}}),
        {"invalid_field"},
    ),
    "oversized_metadata": (json.dumps({"context": {"blob": "y" * (md.MAX_METADATA_CHARS + 10)}}), {"too_large"}),
    "context_too_large": (json.dumps({"context": {"blob": "z" * (md.MAX_CONTEXT_CHARS + 10)}}), {"invalid_field"}),
    "context_not_object": (json.dumps({"context": [1, 2]}), {"invalid_field"}),
    "deep_nesting": ("[" * 5000 + "]" * 5000, {"invalid_json"}),
    "deep_nesting_in_object": ('{"context": ' + '{"a":' * 3000 + "1" + "}" * 3001, {"invalid_json"}),
    "direction_bogus": (json.dumps({"direction": "sideways"}), {"invalid_field"}),
    "direction_number": (json.dumps({"direction": 1}), {"invalid_field"}),
    "number_as_int": (json.dumps({"number_to_call": 15550199}), {"invalid_field"}),
    "number_with_newline": (json.dumps({"caller_number": "+1555\n0100"}), {"invalid_field"}),
    "trunk_path_traversal": (json.dumps({"inbound_trunk_id": "ST_../../etc/passwd"}), {"invalid_field"}),
    "schema_newer": (json.dumps({"schema_version": 999, "route": "future"}), {"newer_schema"}),
    "schema_version_string": (json.dumps({"schema_version": "one"}), {"invalid_field"}),
    "nan_ring_timeout": ('{"ring_timeout": NaN}', {"invalid_field"}),
    "negative_ring_timeout": (json.dumps({"ring_timeout": -5}), {"invalid_field"}),
    "many_keys": (json.dumps({f"k{i}": i for i in range(2000)}), {"unknown_keys"}),
    "control_chars_in_key": (json.dumps({"\u0000evil\u001b[31m": 1}), {"unknown_keys"}),
    "invalid_utf8_escape": ('{"route": "\\ud800"}', {"invalid_field"}),
    "direction_conflicts_trunks": (
        json.dumps({"direction": "inbound", "outbound_trunk_id": "ST_out"}),
        {"direction_conflict"},
    ),
    "siphon_inbound": (json.dumps(SIPHON_INBOUND), set()),
    "siphon_outbound": (json.dumps(SIPHON_OUTBOUND), set()),
    "siphon_inbound_defaults": (json.dumps(SIPHON_INBOUND_DEFAULTS), set()),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_CASES))
def test_hostile_metadata_never_raises_and_warns(name: str) -> None:
    raw, expected_codes = HOSTILE_CASES[name]
    parsed = parse_metadata(raw)
    assert isinstance(parsed.metadata, CallMetadata)
    codes = {w.code for w in parsed.warnings}
    assert expected_codes <= codes, (name, parsed.warnings)
    # The result is always re-serialisable and re-readable strictly.
    CallMetadata.model_validate_json(parsed.metadata.model_dump_json())
    # Warnings never carry values (secrets, payloads).
    for w in parsed.warnings:
        assert "sk-LEAKME" not in json.dumps(w.as_dict())
        assert len(w.detail) < 600


def test_hostile_cases_are_many() -> None:
    assert len(HOSTILE_CASES) >= 25


def test_unknown_keys_are_named_and_known_fields_kept() -> None:
    parsed = parse_metadata(json.dumps({"route": "sales", "colour": "blue", "agent_config": {"llm": "local/scripted"}}))
    assert parsed.metadata.route == "sales"
    assert parsed.metadata.agent_config == AgentConfig(llm="local/scripted")
    assert [(w.code, w.detail) for w in parsed.warnings] == [("unknown_keys", "colour")]


def test_secret_provider_params_are_dropped_not_the_spec() -> None:
    raw = {"agent_config": {"llm": {"provider": "openai", "model": "gpt-4o", "api_key": "sk-1", "temperature": 0.2}}}
    parsed = parse_metadata(json.dumps(raw))
    llm = parsed.metadata.agent_config.llm
    assert isinstance(llm, ProviderSpec)
    assert llm.params == {"model": "gpt-4o", "temperature": 0.2}
    assert [w.code for w in parsed.warnings] == ["secret_param"]
    with pytest.raises(ValidationError):  # strict producers may not emit credentials at all
        AgentConfig.model_validate(raw["agent_config"])


# ---------------------------------------------------------------------------------------------- SIPHON shapes


def test_siphon_inbound_payload_is_understood_as_is() -> None:
    parsed = parse_metadata(json.dumps(SIPHON_INBOUND))
    m = parsed.metadata
    assert parsed.warnings == ()
    assert parsed.siphon_shape
    assert m.direction == "inbound"  # from inbound_trunk_id, not from the presence of agent_config
    assert m.called_number == "+15550100"  # agent_number is the dialled number inbound
    assert m.caller_number is None  # SIPHON carries no caller number: it comes from sip.phoneNumber
    assert m.inbound_trunk_id == "ST_inboundAbc123"
    assert isinstance(m.agent_config.llm, ProviderSpec)
    assert specs.parse_spec("llm", m.agent_config.llm).label == "openai/gpt-4.1-mini"
    assert specs.parse_spec("tts", m.agent_config.tts).params["voice"].startswith("794f")
    assert specs.parse_spec("stt", m.agent_config.stt).params == {"language": "en-US"}


def test_siphon_outbound_payload_is_understood_as_is() -> None:
    parsed = parse_metadata(json.dumps(SIPHON_OUTBOUND))
    m = parsed.metadata
    assert parsed.warnings == ()
    assert m.direction == "outbound"
    assert (m.caller_number, m.called_number) == ("+15550100", "+15550199")
    assert m.outbound_trunk_id == "ST_outboundXyz789"
    assert m.standalone_call is True  # the dispatcher (SIPHON Call) dials: the worker must not dial again
    # SIPHON's all-null agent_config changes nothing: every field inherits the worker default.
    merged = merge_layers(("default", _defaults()), ("route", m.agent_config))
    assert set(merged.sources.values()) == {"default"}


def test_route_metadata_to_json_is_readable_by_siphon_and_by_us() -> None:
    route = RouteMetadata(
        route="dental-frontdesk",
        direction="inbound",
        called_number="+15550100",
        inbound_trunk_id="ST_abc",
        agent_config=AgentConfig(llm="openai/gpt-4.1-mini", system_instructions="Be brief."),
        context={"clinic": "north", "tier": 2},
    )
    data = json.loads(route.to_json())
    # SIPHON reads agent_config / inbound_trunk_id / agent_number.
    assert data["agent_number"] == "+15550100"
    assert data["inbound_trunk_id"] == "ST_abc"
    assert data["agent_config"]["system_instructions"] == "Be brief."
    assert "number_to_call" not in data
    back = parse_metadata(route.to_json())
    assert back.warnings == ()
    assert back.metadata.route == "dental-frontdesk"
    assert back.metadata.context == {"clinic": "north", "tier": 2}
    assert json.loads(route.to_json(siphon_keys=False)).keys() >= {"schema_version", "route", "called_number"}
    assert "agent_number" not in json.loads(route.to_json(siphon_keys=False))


def test_outbound_call_metadata_to_json_emits_siphon_keys() -> None:
    call = CallMetadata(
        direction="outbound", caller_number="+15550100", called_number="+15550199", outbound_trunk_id="ST_o"
    )
    data = json.loads(call.to_json())
    assert (data["agent_number"], data["number_to_call"]) == ("+15550100", "+15550199")
    assert parse_metadata(call.to_json()).warnings == ()


def test_strict_models_forbid_unknown_keys() -> None:
    with pytest.raises(ValidationError):
        RouteMetadata.model_validate({"route": "x", "colour": "blue"})
    with pytest.raises(ValidationError):
        AgentConfig.model_validate({"voice": "x"})


# ---------------------------------------------------------------------------------------------- JSON Schema


def test_published_json_schema_is_up_to_date() -> None:
    assert md.SCHEMA_PATH.read_text() == md.json_schema_text(), "run: python -m contract.metadata"
    schema = json.loads(md.SCHEMA_PATH.read_text())
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(CallMetadata.model_fields)  # derived, never hand-written


def test_metadata_module_is_import_light() -> None:
    code = (
        "import sys, contract.metadata, contract.resolve, contract.models, contract.settings, worker.models.registry;"
        "bad = [m for m in sys.modules if m.startswith(('livekit', 'pulumi', 'infra'))];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


# ---------------------------------------------------------------------------------------------- merge rule


def _defaults() -> AgentConfig:
    return worker_defaults(AgentConfig(), offline=True)


@pytest.fixture
def worker_env(monkeypatch: pytest.MonkeyPatch):
    """Set the worker's environment to exactly these SIPHON_* variables (none of the test process's own)."""
    import os

    def set_env(**values: str) -> None:
        for name in [n for n in os.environ if n.startswith("SIPHON_") or n == "LIVEKIT_AGENT_NAME"]:
            monkeypatch.delenv(name)
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return set_env


def test_worker_settings_and_defaults_come_from_the_environment(worker_env) -> None:
    worker_env(
        SIPHON_ENVIRONMENT="local",
        SIPHON_AGENT_NAME="a1",
        SIPHON_DEFAULT_LLM='{"provider": "openai", "model": "gpt-4o"}',
        SIPHON_DEFAULT_TTS="local/espeak-ng:en-gb",
        SIPHON_SEND_GREETING="false",
        SIPHON_MAX_JOBS="4",
        SIPHON_JOB_EXECUTOR="thread",
        SIPHON_MIN_SILENCE_DURATION="0.4",
        SIPHON_SYSTEM_INSTRUCTIONS="",
    )
    s = WorkerSettings.from_env()
    assert (s.agent_name, s.max_jobs, s.job_executor, s.ring_timeout) == ("a1", 4, "thread", 30.0)
    assert s.defaults.llm == ProviderSpec(provider="openai", model="gpt-4o")
    assert s.defaults.tts == "local/espeak-ng:en-gb"
    assert s.defaults.stt == "local/silent"
    assert s.defaults.send_greeting is False
    assert s.defaults.min_silence_duration == 0.4
    assert s.defaults.system_instructions == BUILTIN_DEFAULTS.system_instructions, "an empty variable is unset"
    worker_env(LIVEKIT_AGENT_NAME="lk-name", SIPHON_ENVIRONMENT="local")
    assert WorkerSettings.from_env().agent_name == "lk-name"
    assert WorkerSettings.from_env().defaults == BUILTIN_DEFAULTS


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        ("SIPHON_RING_TIMEOUT", "soon", "seconds an outbound call may ring"),
        ("SIPHON_MAX_JOBS", "0", "greater than or equal to 1"),
        ("SIPHON_JOB_EXECUTOR", "fork", "'process' or 'thread'"),
        ("SIPHON_AGENT_NAME", "two words", "not a LiveKit agent name"),
        ("SIPHON_DEFAULT_LLM", "has spaces in it", "a model string provider[/model][:variant]"),
        ("SIPHON_MIN_SILENCE_DURATION", "99", "less than or equal to 10"),
        ("SIPHON_SEND_GREETING", "perhaps", "valid boolean"),
    ],
)
def test_a_bad_worker_setting_stops_the_worker_naming_the_variable(worker_env, variable, value, words) -> None:
    worker_env(**{variable: value})
    with pytest.raises(SettingsError) as err:
        WorkerSettings.from_env()
    assert f"{variable}: " in str(err.value) and words in str(err.value), str(err.value)


def test_outside_local_unset_default_models_are_unset_not_test_models(worker_env) -> None:
    worker_env(SIPHON_ENVIRONMENT="prod", SIPHON_DEFAULT_LLM="openai/gpt-4.1-mini")
    s = WorkerSettings.from_env()
    assert (s.offline_models, s.defaults.llm, s.defaults.stt, s.defaults.tts) == (
        False,
        "openai/gpt-4.1-mini",
        None,
        None,
    )
    assert s.defaults.system_instructions == BUILTIN_DEFAULTS.system_instructions
    worker_env()
    assert WorkerSettings.from_env().offline_models is False, "no environment is not `local`"


def _start_worker(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    keep = {k: v for k, v in os.environ.items() if not k.startswith("SIPHON_") and not k.endswith("_API_KEY")}
    return subprocess.run([sys.executable, "-m", "worker.main", "start"], env={**keep, **env}, capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip


def test_outside_local_a_worker_whose_default_models_cannot_be_built_stops_at_start_naming_each() -> None:
    run = _start_worker({"SIPHON_ENVIRONMENT": "prod", "SIPHON_DEFAULT_LLM": "openai/gpt-4.1-mini",
                         "SIPHON_DEFAULT_TTS": "local/espeak-ng", "LIVEKIT_URL": "ws://127.0.0.1:9"})  # fmt: skip
    assert run.returncode == 1, run.stdout + run.stderr
    err = run.stderr
    assert "Traceback" not in err and "registered worker" not in run.stdout + err, err
    assert "SIPHON_ENVIRONMENT=prod" in err, err
    assert "SIPHON_DEFAULT_LLM: " in err and "OPENAI_API_KEY" in err, err
    assert "SIPHON_DEFAULT_STT: not set" in err and "deepgram/nova-3:en" in err, err
    assert "SIPHON_DEFAULT_TTS: local/espeak-ng is an offline test model" in err, err


def test_outside_local_the_worker_builds_its_default_models_at_start() -> None:
    """With the plugins installed and a (dummy) key per provider, the check passes and names the plugins to preload."""
    from worker.server import check_default_models

    env = {"SIPHON_ENVIRONMENT": "prod", "SIPHON_DEFAULT_LLM": "openai/gpt-4.1-mini",
           "SIPHON_DEFAULT_STT": "deepgram/nova-3:en", "SIPHON_DEFAULT_TTS": "cartesia/sonic-2"}  # fmt: skip
    keys = {"OPENAI_API_KEY": "sk-dummy", "DEEPGRAM_API_KEY": "dg-dummy", "CARTESIA_API_KEY": "ca-dummy"}
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {**env, **keys}.items():
            mp.setenv(name, value)
        modules = check_default_models(WorkerSettings.from_env())
    assert modules == ["livekit.plugins.cartesia", "livekit.plugins.deepgram", "livekit.plugins.openai"]


def test_the_worker_process_refuses_to_start_on_a_bad_setting(worker_env) -> None:
    import os

    worker_env(SIPHON_PARTICIPANT_WAIT="ten seconds")
    run = subprocess.run([sys.executable, "-m", "worker.main", "start"], env=dict(os.environ), capture_output=True,
                         text=True, timeout=120, check=False)  # fmt: skip
    assert run.returncode == 1, run.stdout + run.stderr
    assert "SIPHON_PARTICIPANT_WAIT: " in run.stderr and "Traceback" not in run.stderr, run.stderr


def test_the_deployments_environment_gives_the_worker_exactly_the_declared_defaults(worker_env) -> None:
    """defaults_env (what ECS and local deployments set) read back by the worker = worker_defaults (what verify
    predicts), for every agent of the committed stack files."""
    from infra.stack.load import STACKS_DIR, load

    layers = [a.defaults for f in sorted(STACKS_DIR.glob("[!P]*.yaml")) for a in load(f)[0].agents.values()]
    layers.append(AgentConfig(llm=ProviderSpec(provider="openai", model="gpt-4o", temperature=None), end_call=False))
    for layer in layers:
        for environment, offline in (("local", True), ("prod", False)):
            worker_env(**defaults_env(layer), SIPHON_ENVIRONMENT=environment)
            assert WorkerSettings.from_env().defaults == worker_defaults(layer, offline=offline)


def test_every_setting_a_deployment_gives_reaches_the_worker(worker_env) -> None:
    """contract.deployment.worker_env (ECS, local processes, rehearsal containers) names the variables the worker's
    settings read: each setting given comes back as given."""
    layer = AgentConfig(llm="openai/gpt-4.1-mini", send_greeting=False, min_silence_duration=0.4)
    given = {"agent_name": "a1", "environment": "prod", "max_jobs": 3, "drain_timeout": 50, "metric_cluster": "c",
             "metric_service": "s", "call_protection_minutes": 30, "http_port": 9001, "http_host": "127.0.0.1",
             "death_queue_url": "https://sqs.us-east-1.amazonaws.com/123456789012/siphon-prod-worker-deaths"}  # fmt: skip
    worker_env(**deployment_env(**{"max_calls" if k == "max_jobs" else k: v for k, v in given.items()}, defaults=layer))
    settings = WorkerSettings.from_env()
    assert {k: getattr(settings, k) for k in given} == given
    assert settings.defaults == worker_defaults(layer, offline=False)


def test_merge_each_layer_wins_over_the_one_below() -> None:
    defaults = AgentConfig(llm="local/scripted", stt="local/silent", tts="local/espeak-ng", system_instructions="D")
    route = AgentConfig(tts="local/espeak-ng:en-gb", system_instructions="R", greeting_instructions="Hi from route")
    call = AgentConfig(system_instructions="C")
    m = merge_layers(("default", defaults), ("route", route), ("call", call))
    assert m.config.system_instructions == "C"
    assert m.config.tts == "local/espeak-ng:en-gb"
    assert m.config.greeting_instructions == "Hi from route"
    assert m.config.llm == "local/scripted"
    assert m.sources == {
        "llm": "default",
        "stt": "default",
        "tts": "route",
        "system_instructions": "call",
        "greeting_instructions": "route",
    }


@pytest.mark.parametrize("empty", [None, "", "   "])
def test_merge_explicit_empty_string_inherits(empty: str | None) -> None:
    """SIPHON truthy-wins: an explicit empty value does NOT blank out the layer below."""
    m = merge_layers(
        ("default", AgentConfig(system_instructions="D")), ("route", AgentConfig(system_instructions=empty))
    )
    assert m.config.system_instructions == "D"
    assert m.sources["system_instructions"] == "default"
    assert not is_set(empty)


def test_merge_explicit_false_wins() -> None:
    m = merge_layers(("default", AgentConfig(send_greeting=True)), ("call", AgentConfig(send_greeting=False)))
    assert m.config.send_greeting is False
    assert m.sources["send_greeting"] == "call"


def test_merge_replaces_provider_dicts_whole() -> None:
    low = AgentConfig(llm=ProviderSpec(provider="openai", model="gpt-4o", temperature=0.1))
    high = AgentConfig(llm=ProviderSpec(provider="openai", max_completion_tokens=50))
    merged = merge_layers(("route", low), ("call", high)).config.llm
    assert isinstance(merged, ProviderSpec)
    assert merged.params == {"max_completion_tokens": 50}  # no deep merge: model/temperature are not inherited


def test_merge_field_list_is_derived_from_the_model() -> None:
    full = AgentConfig(**{k: ("local/scripted" if k == "llm" else "x") for k in ("llm", "system_instructions")})
    assert set(merge_layers(("route", full)).sources) == {"llm", "system_instructions"}
    assert set(AgentConfig.model_fields) >= {"llm", "stt", "tts", "system_instructions", "greeting_instructions"}


def test_per_call_override_attribute_is_read_leniently() -> None:
    cfg, warns = parse_agent_config('{"system_instructions": "VIP caller", "bogus": 1}')
    assert cfg.system_instructions == "VIP caller"
    assert [w.code for w in warns] == ["unknown_keys"]
    cfg, warns = parse_agent_config("{{{")
    assert cfg == AgentConfig()
    assert [w.code for w in warns] == ["invalid_json"]


# ---------------------------------------------------------------------------------------------- direction and numbers


def _sip(**attrs: str) -> SipFacts:
    return SipFacts.from_attributes("sip_caller", attrs)


def test_inbound_numbers_come_from_sip_attributes() -> None:
    meta = parse_metadata(json.dumps(SIPHON_INBOUND)).metadata
    facts = call_facts(
        meta,
        _sip(
            **{
                "sip.phoneNumber": "+15557654321",
                "sip.trunkPhoneNumber": "+15550100",
                "sip.trunkID": "ST_inboundAbc123",
                "sip.callStatus": "active",
            }
        ),
    )
    assert facts == CallFacts(
        "inbound",
        "+15557654321",
        "+15550100",
        "ST_inboundAbc123",
        {"direction": "metadata", "caller_number": "sip", "called_number": "sip", "trunk_id": "sip"},
    )


def test_outbound_numbers_swap_sip_roles() -> None:
    meta = parse_metadata(json.dumps(SIPHON_OUTBOUND)).metadata
    facts = call_facts(
        meta, _sip(**{"sip.phoneNumber": "+15550199", "sip.trunkPhoneNumber": "+15550100", "sip.trunkID": "ST_o"})
    )
    assert (facts.direction, facts.caller_number, facts.called_number, facts.trunk_id) == (
        "outbound",
        "+15550100",
        "+15550199",
        "ST_o",
    )


def test_direction_without_metadata_comes_from_sip_participant_not_guessed() -> None:
    empty = parse_metadata("").metadata
    assert call_facts(empty, None).direction is None  # nothing known: reported as unknown
    assert call_facts(empty, _sip(**{"sip.callStatus": "active"})).direction == "inbound"
    assert call_facts(empty, _sip(**{"sip.callStatus": "active"}), dialled=True).direction == "outbound"
    # SIPHON's quirk (agent_config present => outbound) is not reproduced:
    assert parse_metadata(json.dumps(SIPHON_INBOUND_DEFAULTS)).metadata.direction == "inbound"


def test_resolve_call_merges_the_layers_with_the_sip_participants_facts_and_attributes() -> None:
    """The one resolution the worker answers with and verify predicts: defaults, route, the layer the caller's
    header attribute selects and its siphon.overrides attribute; numbers from the SIP attributes; models requested."""
    meta = CallMetadata(
        route="support", inbound_trunk_id="ST_in", agent_config=AgentConfig(tts="local/espeak-ng:en-gb"),
        attribute_overrides={"sip.h.x-tier": {"gold": AgentConfig(llm="openai/gpt-4.1-mini")}},
        allowed_overrides=AllowedOverrides(instructions=True),  # the caller's attribute may replace instructions
    )  # fmt: skip
    sip = SipFacts("", phone_number="+15557654321", trunk_phone_number="+15550100", trunk_id="ST_in")
    attributes = {**sip.as_attributes(), "sip.h.x-tier": "gold", "siphon.overrides": '{"system_instructions": "C"}'}
    assert SipFacts.from_attributes("", attributes) == sip
    resolved = resolve_call(meta, attributes, _defaults(), agent_name="support-agent")
    assert (resolved.agent_name, resolved.route, resolved.resumed) == ("support-agent", "support", False)
    assert (resolved.facts.direction, resolved.facts.caller_number, resolved.facts.called_number) == (
        "inbound", "+15557654321", "+15550100"
    )  # fmt: skip
    assert resolved.models == {"llm": "openai/gpt-4.1-mini", "stt": "local/silent", "tts": "local/espeak-ng:en-gb"}
    assert resolved.merged.config.system_instructions == "C" and resolved.merged.sources["llm"] == "call"
    assert resolved.attributes()["siphon.called_number"] == "+15550100"
    dialled = resolve_call(CallMetadata(), sip.as_attributes(), _defaults(), agent_name="a", dialled=True)
    assert (dialled.facts.direction, dialled.facts.caller_number) == ("outbound", "+15550100")
    nobody = resolve_call(CallMetadata(overrides=AgentConfig(llm="nope/x")), None, _defaults(), agent_name="a")
    assert nobody.facts.direction is None and "llm" not in nobody.models  # unparseable: the worker falls back


# ---------------------------------------------------------------------------------------------- registry


@pytest.mark.parametrize(
    ("kind", "spec", "label"),
    [
        ("llm", "openai/gpt-4.1-mini", "openai/gpt-4.1-mini"),
        ("stt", "deepgram/nova-3", "deepgram/nova-3"),
        ("stt", "deepgram/nova-3:en", "deepgram/nova-3:en"),
        ("tts", "cartesia/sonic-2:794f9389", "cartesia/sonic-2:794f9389"),
        ("llm", {"provider": "anthropic", "model": "claude-x"}, "anthropic/claude-x"),
        ("llm", "local/scripted", "local/scripted"),
        ("llm", "local", "local"),
        ("tts", "local/espeak-ng:en-gb", "local/espeak-ng:en-gb"),
        ("stt", {"provider": "local", "model": "silent"}, "local/silent"),
    ],
)
def test_registry_accepts_livekit_strings_and_siphon_dicts(kind: md.ModelKind, spec: object, label: str) -> None:
    assert specs.can_resolve(kind, spec)
    assert specs.check_spec(kind, spec) is None
    assert specs.parse_spec(kind, spec).label == label


@pytest.mark.parametrize(
    ("kind", "spec"),
    [
        ("llm", "skynet/t-800"),
        ("llm", "openai:gpt-4o"),  # LLM strings take no variant
        ("tts", "local/robot"),
        ("stt", "elevenlabs/x"),  # known for TTS, not for STT
        ("llm", {"model": "gpt-4o"}),
        ("llm", 42),
        ("llm", "openai/"),
        ("tts", "has space/x"),
    ],
)
def test_registry_rejects_unknown_specs(kind: md.ModelKind, spec: object) -> None:
    assert not specs.can_resolve(kind, spec)
    assert specs.check_spec(kind, spec)


def test_registry_in_local_falls_back_to_the_default_then_to_the_test_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    r = registry.resolve("llm", "openai/gpt-4.1-mini", "local/scripted", offline=True, timeout=5)
    assert (r.label, r.requested) == ("local/scripted", "openai/gpt-4.1-mini")
    assert "OPENAI_API_KEY" in (r.fallback_reason or "")
    r = registry.resolve(
        "tts", "skynet/x", "also-bad/x", offline=True, timeout=5
    )  # default broken too: offline last resort
    assert r.label == "local/espeak-ng"
    r = registry.resolve("tts", "local/espeak-ng:en-gb", None, offline=True, timeout=5)
    assert (r.label, r.fallback_reason) == ("local/espeak-ng:en-gb", None)
    r = registry.resolve("llm", {"provider": "local", "model": "scripted", "bogus_param": 1}, "local/scripted",
                         offline=True, timeout=5)  # fmt: skip
    assert r.fallback_reason
    assert "TypeError" in r.fallback_reason


def test_registry_outside_local_falls_back_to_the_default_and_never_to_a_test_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    r = registry.resolve("llm", "anthropic/claude-x", "openai/gpt-4.1-mini", offline=False, timeout=5)
    assert (r.label, r.requested) == ("openai/gpt-4.1-mini", "anthropic/claude-x")
    assert "ANTHROPIC_API_KEY" in (r.fallback_reason or "")
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(registry.SpecUnavailable) as err:
        registry.resolve("llm", "anthropic/claude-x", "openai/gpt-4.1-mini", offline=False, timeout=5)
    assert "ANTHROPIC_API_KEY" in str(err.value) and "OPENAI_API_KEY" in str(err.value)
    with pytest.raises(registry.SpecUnavailable, match="offline test model"):
        registry.resolve("tts", "local/espeak-ng", None, offline=False, timeout=5)
    with pytest.raises(registry.SpecUnavailable, match="none is configured"):
        registry.resolve("stt", None, None, offline=False, timeout=5)


def test_registry_availability_reports_missing_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    norm = specs.parse_spec("llm", "openai/gpt-4o")
    monkeypatch.setattr(registry.importlib.util, "find_spec", lambda name: object())
    assert "OPENAI_API_KEY" in (registry.availability(norm, env={}) or "")
    assert registry.availability(norm, env={"OPENAI_API_KEY": "x"}) is None


def test_every_provider_builds_from_a_model_string_with_its_model_and_variant(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``provider/model[:variant]`` reaches each plugin's own constructor parameters (``voice_id``, ``speaker``,
    ``languages``, ``model_name``, ...), given a dummy credential; providers that take no variant refuse one."""
    credentials = tmp_path / "google.json"
    credentials.write_text(json.dumps({"type": "authorized_user", "client_id": "c", "client_secret": "s",
                                       "refresh_token": "r"}))  # fmt: skip
    failures = []
    for kind, providers in specs.PROVIDERS.items():
        for name, provider in providers.items():
            if provider.offline:
                continue
            for variable in provider.env:
                monkeypatch.setenv(variable, str(credentials) if variable.startswith("GOOGLE_APP") else "dummy")
            variant = provider.variant_for(kind)
            model = "universal-3-6-pro" if name == "assemblyai" else "m-1"  # its language needs a multilingual model
            spec = f"{name}/{model}" + (":en" if variant else "")
            try:
                registry.build(specs.parse_spec(kind, spec))
            except registry.SpecUnavailable as err:
                failures.append(f"{kind} {spec}: {err}")
            if not variant:
                assert specs.check_spec(kind, f"{name}/m-1:x"), f"{kind} {name} takes no variant"
    assert failures == []


def test_known_providers_cover_siphon_lists() -> None:
    siphon = {
        "llm": "gemini groq openai openrouter xai anthropic deepseek ollama perplexity together mistralai cerebras",
        "stt": "assemblyai deepgram sarvam groq openai cartesia mistralai google",
        "tts": "cartesia elevenlabs deepgram gemini sarvam rime google openai groq",
    }
    for kind, names in siphon.items():
        assert set(names.split()) <= set(specs.known_providers(kind)), kind


# ---------------------------------------------------------------------------------------------- observability


def test_resolved_attributes_and_hash() -> None:
    merged = merge_layers(("default", _defaults()), ("route", AgentConfig(system_instructions="R")))
    facts = CallFacts("inbound", "+15557654321", "+15550100", "ST_x", {})
    models = {"llm": "local/scripted", "stt": "local/silent", "tts": "local/espeak-ng"}
    a = ResolvedCall("agent", "sales", facts, merged, models, {}, ())
    attrs = a.attributes()
    assert attrs["siphon.route"] == "sales"
    assert attrs["siphon.direction"] == "inbound"
    assert attrs["siphon.llm"] == "local/scripted"
    assert attrs["siphon.sources"].startswith("greeting_instructions=default,")
    assert all(k.startswith("siphon.") and isinstance(v, str) for k, v in attrs.items())
    assert "R" not in attrs.values()  # instructions are hashed, not published
    b = ResolvedCall("agent", "sales", facts, MergedConfig(merged.config, {}), models, {}, ())
    assert a.hash == b.hash
    c = ResolvedCall(
        "agent", "sales", facts, merge_layers(("route", AgentConfig(system_instructions="other"))), models, {}, ()
    )
    assert c.hash != a.hash
