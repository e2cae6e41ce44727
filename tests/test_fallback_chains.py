"""Fallback chains (#31): a model kind of any configuration layer may be a list of specs, tried in order.

The schema takes a chain wherever a layer's model kind is read (a list of one is that spec), the merge rule replaces a
chain whole, a caller-sourced chain keeps only the entries the route allows (each without its routing parameters),
and the worker builds the chain's entries with livekit-agents' ``FallbackAdapter``, skipping (and saying why) an entry
it cannot build. Validation of each entry at its own field is in ``tests/test_stack_validation.py``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from contract.deployment import defaults_env
from contract.metadata import AgentConfig, AllowedOverrides, CallMetadata, parse_agent_config, parse_metadata
from contract.models import chain_label
from contract.resolve import BUILTIN_DEFAULTS, OVERRIDES_ATTRIBUTE, merge_layers, requested_models, resolve_call
from contract.settings import WorkerSettings

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
