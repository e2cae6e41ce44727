"""The SIP resource providers without a server: check() rejects invalid arguments naming the field, state written
by 0.1.0 loads them, and credentials come from stack config before the environment."""

from __future__ import annotations

import pytest

from infra.livekit.dispatch_rule import DispatchRuleProvider
from infra.livekit.inbound_trunk import InboundTrunkProvider
from infra.livekit.outbound_trunk import OutboundTrunkProvider

IN = {"name": "in", "numbers": ["+15550100100"]}
OUT = {"name": "out", "address": "sip.example.com", "numbers": ["+15550100200"]}
RULE = {"name": "r", "rule": {"type": "individual"}}

# (provider, arguments, field named in the failure, words the reason must contain)
CASES = [
    ("in", {**IN, "numbers": ["5550100"]}, "numbers", "country code"),
    ("in", {**IN, "numbers": ["+0123"]}, "numbers", "E.164"),
    ("in", {**IN, "numbers": ["+1555abc"]}, "numbers", "E.164"),
    ("in", {"name": "in"}, "(root)", "must be restricted"),
    ("in", {**IN, "auth_username": "u"}, "(root)", "auth_password"),
    ("in", {**IN, "auth_password": "p"}, "(root)", "auth_username"),
    ("in", {**IN, "allowed_addresses": ["10.0.0.0/33"]}, "allowed_addresses", "CIDR"),
    ("in", {**IN, "allowed_numbers": ["12"]}, "allowed_numbers", "E.164"),
    ("in", {**IN, "headers": {"Call-ID": "x"}}, "headers", "managed by the SIP stack"),
    ("in", {**IN, "headers": {"X Bad": "x"}}, "headers", "characters SIP does not allow"),
    ("in", {**IN, "headers": {"X-Ok": "line\r\nbreak"}}, "headers", "control characters"),
    ("in", {**IN, "headers": {"X-Ok": "v" * 1025}}, "headers", "too long"),
    ("in", {**IN, "headers_to_attributes": {"X-Tier": "bad attr"}}, "headers_to_attributes", "SIP token"),
    ("in", {**IN, "media": {"codecs": [{"name": "PCMU/8000"}]}}, "media", "must not contain '/'"),
    ("in", {**IN, "media": {"media_timeout": 601}}, "media", "less than or equal to 600"),
    ("in", {**IN, "media": {"only_listed_codecs": True}}, "media", "no codecs are listed"),
    ("in", {**IN, "media": {"encryption": "maybe"}}, "media", "'disable', 'allow' or 'require'"),
    ("in", {**IN, "ringing_timeout": 0}, "ringing_timeout", "greater than 0"),
    ("in", {**IN, "include_headers": "some"}, "include_headers", "'none', 'x_headers' or 'all'"),
    ("in", {**IN, "numbrs": ["+15550100100"]}, "numbrs", "unknown field"),
    ("in", {**IN, "numbers": ["+15550100100", "+1 555 010 0100"]}, "(root)", "same number twice"),
    ("out", {**OUT, "address": "sip:carrier@example.com"}, "address", "SIP URI"),
    ("out", {**OUT, "address": "carrier.example.com;transport=tcp"}, "address", "transport"),
    ("out", {**OUT, "address": "carrier.example.com:99999"}, "address", "invalid port"),
    ("out", {**OUT, "numbers": []}, "(root)", "caller-ID"),
    ("out", {**OUT, "destination_country": "USA"}, "destination_country", "ISO 3166"),
    ("out", {**OUT, "transport": "sctp"}, "transport", "'auto', 'udp', 'tcp' or 'tls'"),
    ("out", {"name": "out", "numbers": ["+15550100200"]}, "address", "Field required"),
    ("rule", {"name": "r"}, "rule", "Field required"),
    ("rule", {**RULE, "rule": {"type": "broadcast"}}, "rule", "does not match any of the expected tags"),
    ("rule", {**RULE, "rule": {"type": "direct"}}, "rule", "Field required"),
    ("rule", {**RULE, "rule": {"type": "individual", "pin": "12ab"}}, "rule", "1 to 16 digits"),
    ("rule", {**RULE, "rule": {"type": "direct", "room_name": "lobby"},
              "room_config": {"agents": [{"agent_name": "a"}]}}, "(root)", "individual or callee"),
    ("rule", {**RULE, "room_config": {"agents": [{"agent_name": ""}]}}, "room_config", "not a LiveKit agent name"),
    ("rule", {**RULE, "numbers": ["+15550100100", "0800"]}, "numbers", "national number"),
    ("rule", {**RULE, "room_config": {"min_playout_delay": 500, "max_playout_delay": 100}}, "room_config", "larger"),
]  # fmt: skip

PROVIDERS = {"in": InboundTrunkProvider, "out": OutboundTrunkProvider, "rule": DispatchRuleProvider}


@pytest.mark.parametrize(("kind", "args", "field", "reason"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_invalid_arguments_are_rejected_naming_the_field(kind, args, field, reason):
    result = PROVIDERS[kind]().check({}, {"__provider": "p", **args})
    assert result.failures, f"accepted: {args}"
    text = " | ".join(f.reason for f in result.failures)
    assert any(f.reason.startswith(field) for f in result.failures), text
    assert reason in text


def test_valid_arguments_are_normalised():
    result = InboundTrunkProvider().check(
        {},
        {"__provider": "p", "name": "in", "numbers": ["+1 (555) 010-0100"], "allowed_addresses": ["SIP.Example.COM"]},
    )
    assert result.failures == []
    assert result.inputs["numbers"] == ["+15550100100"]
    assert result.inputs["allowed_addresses"] == ["sip.example.com"]
    assert result.inputs["media"] is None
    assert result.inputs["include_headers"] == "none"


def test_password_never_appears_in_a_failure():
    secret = "hunter2-hunter2"
    result = InboundTrunkProvider().check(
        {}, {"__provider": "p", "name": "in", "auth_password": secret, "numbers": ["1"]}
    )
    assert result.failures
    assert all(secret not in f.reason for f in result.failures)


def test_unknown_values_during_preview_are_checked_later():
    from pulumi.output import Unknown

    # The engine hands a dynamic provider's check() an unknown input as an Unknown (deserialised, kept).
    result = DispatchRuleProvider().check({}, {"__provider": "p", **RULE, "trunk_ids": Unknown()})
    assert result.failures == []
    assert isinstance(result.inputs["trunk_ids"], Unknown)


def test_diff_ignores_provider_and_outputs_and_reports_changes():
    p = DispatchRuleProvider()
    base = p.check({}, {"__provider": "a", **RULE}).inputs
    olds = {**base, "__provider": "old-code", "sip_dispatch_rule_id": "SDR_1"}
    assert p.diff("SDR_1", olds, {**base, "__provider": "new-code"}).changes is False
    changed = p.check({}, {"__provider": "a", **RULE, "metadata": "x"}).inputs
    d = p.diff("SDR_1", olds, changed)
    assert d.changes is True
    assert d.replaces == []


# ``__provider`` as release 0.1.0 wrote it into state (pulumi's serialize_provider: dill, base64), per class.
STATE_0_1_0 = {
    InboundTrunkProvider: "gASVNgAAAAAAAACMFmluZnJhLmxpdmVraXQucHJvdmlkZXKUjBRJbmJvdW5kVHJ1bmtQcm92aWRlcpSTlCmBlC4=",
    OutboundTrunkProvider: "gASVNwAAAAAAAACMFmluZnJhLmxpdmVraXQucHJvdmlkZXKUjBVPdXRib3VuZFRydW5rUHJvdmlkZXKUk5QpgZQu",
    DispatchRuleProvider: "gASVNgAAAAAAAACMFmluZnJhLmxpdmVraXQucHJvdmlkZXKUjBREaXNwYXRjaFJ1bGVQcm92aWRlcpSTlCmBlC4=",
}


@pytest.mark.parametrize("cls", list(STATE_0_1_0), ids=lambda c: c.__name__)
def test_providers_recorded_by_0_1_0_state_load_as_the_kind_modules_providers(cls):
    import base64

    import dill
    from pulumi.dynamic.dynamic import serialize_provider

    recorded = STATE_0_1_0[cls]
    assert b"infra.livekit.provider" in base64.b64decode(recorded), "0.1.0 recorded the class by this path"
    assert type(dill.loads(base64.b64decode(recorded))) is cls
    now = serialize_provider(cls())
    assert type(dill.loads(base64.b64decode(now))) is cls
    assert cls.__module__.encode() in base64.b64decode(now), "new state records the kind module's path"


def test_credentials_come_from_config_then_the_environment(monkeypatch):
    from infra.livekit.client import Credentials, LiveKitError, lookup

    monkeypatch.setenv("LIVEKIT_URL", "ws://env:7880")
    monkeypatch.setenv("LIVEKIT_API_KEY", "env-key")
    monkeypatch.delenv("LIVEKIT_API_SECRET", raising=False)
    config = {"livekit:url": "ws://config:7880", "livekit:apiKey": ""}
    assert lookup(config) == {"livekit:url": "ws://config:7880", "livekit:apiKey": "env-key", "livekit:apiSecret": None}
    with pytest.raises(LiveKitError) as missing:
        Credentials.resolve(config)
    assert str(missing.value) == (
        "LiveKit credentials are missing: set `pulumi config set --secret livekit:apiSecret ...` "
        "(or LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET in the environment)"
    )
    monkeypatch.setenv("LIVEKIT_API_SECRET", "env-secret")
    assert Credentials.resolve(config) == Credentials("ws://config:7880", "env-key", "env-secret")
