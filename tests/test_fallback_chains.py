"""Fallback chains (#31): a model kind of any configuration layer may be a list of specs, tried in order.

The schema takes a chain wherever a layer's model kind is read (a list of one is that spec), the merge rule replaces a
chain whole, a caller-sourced chain keeps only the entries the route allows (each without its routing parameters),
and the worker builds the chain's entries with livekit-agents' ``FallbackAdapter``, skipping (and saying why) an entry
it cannot build. Validation of each entry at its own field is in ``tests/test_stack_validation.py``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from livekit.agents import llm, stt, tts
from pydantic import ValidationError

from contract.deployment import defaults_env
from contract.metadata import AgentConfig, AllowedOverrides, CallMetadata, parse_agent_config, parse_metadata
from contract.models import chain_label
from contract.resolve import BUILTIN_DEFAULTS, OVERRIDES_ATTRIBUTE, merge_layers, requested_models, resolve_call
from contract.settings import SettingsError, WorkerSettings
from tests.openai_standin import OpenAIStandIn
from worker import turn_taking
from worker.models import registry
from worker.models.offline import ScriptedLLM

PRIMARY, SECOND = "openai/gpt-4.1-mini", "anthropic/claude-haiku-4-5"
SIP = {"sip.phoneNumber": "+15550100001", "sip.trunkPhoneNumber": "+15550100100", "sip.callStatus": "active"}


def _caller(meta: CallMetadata, overrides: object) -> Any:
    attributes = {**SIP, OVERRIDES_ATTRIBUTE: json.dumps(overrides)}
    return resolve_call(meta, attributes, BUILTIN_DEFAULTS, agent_name="a", identity="sip-caller")


# ------------------------------------------------------------------------------------------ schema


def test_a_layer_takes_a_list_of_specs_as_a_chain_in_order() -> None:
    cfg = AgentConfig.model_validate(
        {"tts": ["cartesia/sonic-2", {"provider": "elevenlabs", "model": "eleven_flash_v2_5"}]}
    )
    assert isinstance(cfg.tts, list) and cfg.tts[0] == "cartesia/sonic-2" and cfg.tts[1].provider == "elevenlabs"  # type: ignore[union-attr]


def test_a_list_of_one_spec_is_that_spec() -> None:
    assert AgentConfig.model_validate({"llm": [PRIMARY]}).llm == PRIMARY


def test_a_single_spec_is_read_as_before() -> None:
    assert AgentConfig.model_validate({"llm": PRIMARY}).llm == PRIMARY


@pytest.mark.parametrize(
    ("value", "words"),
    [([], "an empty list names no model"), ([PRIMARY, PRIMARY], "entry 1 repeats entry 0"),
     ([PRIMARY, "a/1", "b/2", "c/3", "d/4"], "at most 4 items")],
    ids=["empty", "repeated", "too-long"],
)  # fmt: skip
def test_a_chain_that_is_empty_repeats_an_entry_or_is_too_long_is_refused(value: list[str], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        AgentConfig.model_validate({"llm": value})


def test_the_lenient_reader_strips_a_credential_parameter_from_each_chain_entry() -> None:
    cfg, warnings = parse_agent_config(json.dumps({"llm": [PRIMARY, {"provider": "anthropic", "api_key": "sk-x"}]}))
    assert AgentConfig(llm=cfg.llm).model_dump(mode="json")["llm"] == [PRIMARY, {"provider": "anthropic"}]
    assert [(w.code, w.field) for w in warnings] == [("secret_param", "overrides.llm.1")]


def test_the_workers_default_chain_travels_in_its_environment_variable() -> None:
    layer = AgentConfig(llm=[PRIMARY, {"provider": "anthropic", "model": "claude-haiku-4-5"}])  # type: ignore[list-item]
    settings = WorkerSettings.from_env({**defaults_env(layer), "SIPHON_ENVIRONMENT": "local"})
    assert settings.defaults.llm == layer.llm


def test_a_chains_label_is_its_entries_labels_in_order() -> None:
    assert (
        chain_label("llm", [PRIMARY, {"provider": "anthropic", "model": "claude-haiku-4-5"}]) == f"{PRIMARY} > {SECOND}"
    )


# ------------------------------------------------------------------------------------------ merge


def test_a_higher_layers_chain_replaces_a_lower_spec_whole() -> None:
    merged = merge_layers(("default", AgentConfig(llm=PRIMARY)), ("route", AgentConfig(llm=[SECOND, PRIMARY])))
    assert merged.config.llm == [SECOND, PRIMARY] and merged.sources["llm"] == "route"


def test_a_higher_layers_spec_replaces_a_lower_chain_whole() -> None:
    merged = merge_layers(("default", AgentConfig(llm=[PRIMARY, SECOND])), ("call", AgentConfig(llm="groq/llama-3.3")))
    assert merged.config.llm == "groq/llama-3.3"


def test_the_resolved_call_publishes_the_requested_chain() -> None:
    meta = parse_metadata(json.dumps({"route": "r", "agent_config": {"llm": [PRIMARY, SECOND]}})).metadata
    r = resolve_call(meta, SIP, BUILTIN_DEFAULTS, agent_name="a")
    assert r.attributes()["siphon.llm"] == f"{PRIMARY} > {SECOND}"
    assert requested_models(r.merged.config)["llm"] == f"{PRIMARY} > {SECOND}"


# ------------------------------------------------------------------------------------------ trust (#30)


def test_a_caller_chain_keeps_only_the_entries_the_route_allows_and_says_which_it_dropped() -> None:
    meta = CallMetadata(route="r", allowed_overrides=AllowedOverrides(llm=[PRIMARY, SECOND]))
    r = _caller(meta, {"llm": [SECOND, "groq/llama-3.3", PRIMARY]})
    assert r.merged.config.llm == [SECOND, PRIMARY]
    assert [(w.code, w.field) for w in r.warnings] == [("not_allowed", f"{OVERRIDES_ATTRIBUTE}.llm.1")]


def test_a_caller_chain_entry_runs_the_routes_spec_whole_without_the_callers_host() -> None:
    proxy = {"provider": "openai", "model": "gpt-4o", "base_url": "https://llm-proxy.example.com/v1"}
    meta = CallMetadata(route="r", allowed_overrides=AllowedOverrides(llm=[SECOND, proxy]))  # type: ignore[list-item]
    hostile = {"provider": "openai", "model": "gpt-4o", "base_url": "http://attacker.example:9/v1"}
    r = _caller(meta, {"llm": [SECOND, hostile]})
    assert r.merged.config.llm[1].model_dump() == proxy  # type: ignore[index]
    assert [(w.code, w.field) for w in r.warnings] == [("routing_param", f"{OVERRIDES_ATTRIBUTE}.llm.1")]
    assert "attacker" not in json.dumps(r.describe())


def test_a_caller_chain_with_no_allowed_entry_leaves_the_lower_layers_spec() -> None:
    r = _caller(CallMetadata(route="r"), {"llm": [PRIMARY, SECOND]})
    assert r.merged.config.llm == BUILTIN_DEFAULTS.llm and r.merged.sources["llm"] == "default"
    assert [w.field for w in r.warnings] == [f"{OVERRIDES_ATTRIBUTE}.llm.0", f"{OVERRIDES_ATTRIBUTE}.llm.1"]


def test_a_caller_chain_reduced_to_one_allowed_entry_is_that_spec() -> None:
    meta = CallMetadata(route="r", allowed_overrides=AllowedOverrides(llm=[SECOND]))
    assert _caller(meta, {"llm": [PRIMARY, SECOND]}).merged.config.llm == SECOND


# ------------------------------------------------------------------------------------------ worker


CLOSED = "http://127.0.0.1:9/v1"  # nothing listens: the connection is refused


def test_a_chain_whose_first_entry_lacks_its_credential_is_served_by_the_next_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    r = registry.resolve("llm", [SECOND, "local/scripted"], None, offline=True, timeout=5)
    assert isinstance(r.component, ScriptedLLM)
    assert (r.label, r.requested) == ("local/scripted", f"{SECOND} > local/scripted")
    assert r.fallback_reason is not None and SECOND in r.fallback_reason and "ANTHROPIC_API_KEY" in r.fallback_reason


def test_the_entries_that_can_be_built_are_served_by_the_kinds_fallback_adapter_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    r = registry.resolve("llm", [SECOND, PRIMARY, "local/scripted"], None, offline=True, timeout=5)
    assert isinstance(r.component, llm.FallbackAdapter)
    assert r.label == f"{PRIMARY} > local/scripted" and [label for label, _ in r.entries] == [PRIMARY, "local/scripted"]
    assert "ANTHROPIC_API_KEY" in (r.fallback_reason or "")


def test_a_chain_none_of_whose_entries_can_be_built_falls_back_to_the_agents_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("GROQ_API_KEY", raising=False)
    r = registry.resolve("llm", [SECOND, "groq/llama-3.3"], "local/scripted", offline=True, timeout=5)
    assert r.label == "local/scripted" and "ANTHROPIC_API_KEY" in (r.fallback_reason or "")
    assert "GROQ_API_KEY" in (r.fallback_reason or "")


def test_an_stt_chain_streams_its_non_streaming_entry_with_the_vad(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    vad = turn_taking.session_options(AgentConfig())["vad"]
    r = registry.resolve("stt", ["openai/whisper-1", "local/silent"], None, offline=True, timeout=5, vad=vad)
    assert isinstance(r.component, stt.FallbackAdapter)
    assert isinstance(r.entries[0][1], stt.StreamAdapter) and r.label == "openai/whisper-1 > local/silent"


def test_a_tts_chain_is_served_by_the_tts_fallback_adapter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    r = registry.resolve("tts", ["openai/gpt-4o-mini-tts", "local/espeak-ng"], None, offline=True, timeout=5)
    assert isinstance(r.component, tts.FallbackAdapter) and r.label == "openai/gpt-4o-mini-tts > local/espeak-ng"


async def _answer(component: llm.LLM) -> str:
    ctx = llm.ChatContext()
    ctx.add_message(role="user", content="What is my balance?")
    text = ""
    async with component.chat(chat_ctx=ctx) as stream:
        async for chunk in stream:
            text += (chunk.delta.content or "") if chunk.delta else ""
    return text


def test_a_refused_first_entry_is_answered_by_the_second_and_the_switch_is_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Real openai plugins: the first at a port nobody listens on, the second at the loopback stand-in."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")

    async def scenario(base_url: str) -> tuple[str, list[str]]:
        chain = [{"provider": "openai", "model": "gpt-4.1-mini", "base_url": CLOSED},
                 {"provider": "openai", "model": "gpt-4o", "base_url": base_url}]  # fmt: skip
        r = registry.resolve("llm", chain, None, offline=False, timeout=5)
        served: list[str] = []
        stop = registry.watch_serving(r, served.append)
        try:
            return await _answer(r.component), served
        finally:
            stop()
            for _, entry in r.entries:
                await entry.aclose()
            await r.component.aclose()

    with OpenAIStandIn(reply=lambda body, n: "Your balance is twelve dollars.") as standin:
        answer, served = asyncio.run(scenario(standin.base_url))
        models = [q.body["model"] for q in standin.requests("/chat/completions") if q.body]
    assert answer == "Your balance is twelve dollars."
    assert served == ["openai/gpt-4o"] and models == ["gpt-4o"]


def test_the_worker_refuses_to_start_when_an_entry_of_its_default_chain_cannot_be_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker.server import check_default_models

    env = {"SIPHON_ENVIRONMENT": "prod", "SIPHON_DEFAULT_LLM": json.dumps([PRIMARY, SECOND]),
           "SIPHON_DEFAULT_STT": "deepgram/nova-3:en", "SIPHON_DEFAULT_TTS": "cartesia/sonic-2",
           "OPENAI_API_KEY": "sk-dummy", "DEEPGRAM_API_KEY": "dg-dummy", "CARTESIA_API_KEY": "ca-dummy"}  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(SettingsError) as err:
        check_default_models(WorkerSettings.from_env())
    assert "SIPHON_DEFAULT_LLM entry 1: credential missing: set ANTHROPIC_API_KEY" in str(err.value)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "an-dummy")
    assert "livekit.plugins.anthropic" in check_default_models(WorkerSettings.from_env())
