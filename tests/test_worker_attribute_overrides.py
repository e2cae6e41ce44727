"""Per-call layers selected by SIP participant attributes (mapped from SIP headers): merge and lenient parsing."""

from __future__ import annotations

import json

import pytest

from contract.metadata import AgentConfig, RouteMetadata, parse_metadata
from contract.resolve import attribute_layer, merge_layers

TABLE = {
    "customer.tier": {"gold": AgentConfig(greeting_instructions="Welcome back, gold customer.")},
    "customer.lang": {"fr": AgentConfig(tts="local/espeak-ng:fr", greeting_instructions="Bonjour !")},
}


@pytest.mark.parametrize(
    ("attributes", "greeting", "tts"),
    [
        ({"customer.tier": "gold"}, "Welcome back, gold customer.", None),
        ({"customer.lang": "fr"}, "Bonjour !", "local/espeak-ng:fr"),
        ({"customer.tier": "gold", "customer.lang": "fr"}, "Bonjour !", "local/espeak-ng:fr"),  # later wins
        ({"customer.tier": "silver"}, None, None),
        ({}, None, None),
    ],
)
def test_attribute_values_select_layers(attributes, greeting, tts):
    layer = attribute_layer(TABLE, attributes)
    if greeting is None:
        assert layer is None
        return
    assert layer is not None
    assert layer.greeting_instructions == greeting
    assert layer.tts == tts


def test_selected_layer_sits_between_metadata_overrides_and_the_overrides_attribute():
    merged = merge_layers(
        ("default", AgentConfig(greeting_instructions="default", llm="local/scripted")),
        ("route", AgentConfig(greeting_instructions="route")),
        ("call", AgentConfig(system_instructions="call")),
        ("call", attribute_layer(TABLE, {"customer.tier": "gold"})),
    )
    assert merged.config.greeting_instructions == "Welcome back, gold customer."
    assert merged.config.system_instructions == "call"
    assert merged.config.llm == "local/scripted"
    assert merged.sources["greeting_instructions"] == "call"


def test_route_metadata_round_trips_attribute_overrides():
    meta = RouteMetadata(route="support", attribute_overrides=TABLE)
    parsed = parse_metadata(meta.to_json())
    assert parsed.metadata.attribute_overrides == TABLE
    assert parsed.warnings == [] or not any("attribute_overrides" in str(w) for w in parsed.warnings)


@pytest.mark.parametrize(
    "bad",
    [
        "not a mapping",
        {"customer.tier": "gold"},
        {"customer.tier": {"gold": {"system_prompt": "x"}}},
        {"bad attribute!": {"gold": {}}},
        {f"a{i}": {"v": {}} for i in range(20)},
    ],
    ids=["string", "flat", "unknown-layer-key", "bad-name", "too-many"],
)
def test_hostile_attribute_overrides_are_dropped_with_a_warning(bad):
    raw = json.dumps({"route": "support", "attribute_overrides": bad, "agent_config": {"greeting_instructions": "hi"}})
    parsed = parse_metadata(raw)
    assert parsed.metadata.route == "support"
    assert parsed.metadata.agent_config is not None
    assert parsed.metadata.agent_config.greeting_instructions == "hi"
    assert parsed.warnings, "a dropped field is warned about"
