"""SIP trunks and dispatch rules through the real Pulumi engine against the local livekit-server."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
from pulumi import automation as auto

from tests.sip_harness import livekit_canonical, livekit_objects, set_spec, sip_stack

PASSWORD = "s3cret-Trunk-Passw0rd-7Q"

FULL = {
    "inbound": {
        "main-in": {
            "name": "main-in",
            "metadata": '{"team": "support"}',
            "numbers": ["+1 (555) 010-0100", "+15550100101"],
            "allowed_addresses": ["127.0.0.1/32", "sip.carrier.example"],
            "allowed_numbers": ["+14155550000"],
            "auth_username": "carrier",
            "auth_password": "$password",
            "auth_realm": "siphon",
            "headers": {"X-Siphon": "in"},
            "headers_to_attributes": {"X-Tier": "customer.tier"},
            "attributes_to_headers": {"customer.id": "X-Customer"},
            "include_headers": "x_headers",
            "ringing_timeout": 25,
            "max_call_duration": 1800,
            "krisp_enabled": True,
            "media": {"only_listed_codecs": True, "codecs": [{"name": "PCMU", "rate": 8000}, {"name": "G722"}],
                      "encryption": "allow", "media_timeout": 20},
        }
    },
    "outbound": {
        "main-out": {
            "name": "main-out",
            "metadata": "reminders",
            "address": "sip.carrier.example:5060",
            "transport": "tcp",
            "destination_country": "us",
            "numbers": ["+15550100200"],
            "auth_username": "out-user",
            "auth_password": "$password",
            "headers": {"X-Out": "1"},
            "headers_to_attributes": {"X-Carrier-Id": "carrier.id"},
            "attributes_to_headers": {"campaign": "X-Campaign"},
            "include_headers": "all",
            "from_host": "calls.example.com",
            "media": {"codecs": [{"name": "PCMA"}], "encryption": "disable", "media_timeout": 30},
        }
    },
    "rules": {
        "support": {
            "name": "support",
            "metadata": '{"route": "support"}',
            "attributes": {"route": "support"},
            "rule": {"type": "individual", "room_prefix": "support", "pin": "", "no_randomness": False},
            "trunk_refs": ["main-in"],
            "hide_phone_number": False,
            "inbound_numbers": ["+14155550000"],
            "numbers": ["+15550100100"],
            "room_preset": "",
            "room_config": {"empty_timeout": 60, "departure_timeout": 10, "max_participants": 4, "metadata": "m",
                            "min_playout_delay": 0, "max_playout_delay": 200, "sync_streams": True,
                            "agents": [{"agent_name": "support-agent", "metadata": '{"route": "support"}',
                                        "attributes": {"tier": "gold"}}]},
            "krisp_enabled": True,
            "media": {"encryption": "allow"},
        },
        "sales": {
            "name": "sales",
            "rule": {"type": "callee", "room_prefix": "sales", "pin": "1234", "randomize": True},
            "trunk_refs": ["main-in"],
            "numbers": ["+15550100101"],
            "hide_phone_number": True,
        },
        "lobby": {
            "name": "lobby",
            "rule": {"type": "direct", "room_name": "lobby", "pin": "42"},
            "trunk_refs": ["main-in"],
            "numbers": ["+15550100100"],
            "inbound_numbers": ["+14155550001"],
        },
    },
}  # fmt: skip


def _declared(kind: str, res: str) -> dict:
    from infra.livekit.dispatch_rule import DispatchRuleArgs
    from infra.livekit.inbound_trunk import InboundTrunkArgs
    from infra.livekit.kind import declared
    from infra.livekit.outbound_trunk import OutboundTrunkArgs

    model = {"inbound": InboundTrunkArgs, "outbound": OutboundTrunkArgs, "rules": DispatchRuleArgs}[kind]
    args = {k: (PASSWORD if v == "$password" else v) for k, v in FULL[kind][res].items() if k != "trunk_refs"}
    return declared(model.model_validate(args))


def _export(stack: auto.Stack) -> str:
    """Every state file the file:// backend holds for the stack (current, backups, history), as stored."""
    backend = Path(stack.workspace.env_vars["PULUMI_BACKEND_URL"].removeprefix("file://"))
    files = [p for p in backend.rglob("*") if p.is_file()]
    assert any(p.suffix == ".json" and "stacks" in p.parts for p in files), "no state file found"
    return "\n".join(p.read_text(errors="replace") for p in files)


@pytest.mark.engine
def test_every_field_deploys_updates_in_place_and_destroys(clean_livekit, tmp_path, pulumi_env):
    stack = sip_stack(tmp_path, pulumi_env, FULL, PASSWORD)
    logs: list[str] = []

    preview = stack.preview(on_output=logs.append)
    assert preview.change_summary == {"create": 6}
    assert livekit_objects() == {"inbound": [], "outbound": [], "rules": []}, "preview must not change LiveKit"

    up = stack.up(on_output=logs.append)
    assert up.summary.result == "succeeded"
    live = livekit_canonical()
    trunk_id = up.outputs["main-in.id"].value
    for kind, resources in FULL.items():
        for res in resources:
            got = dict(live[kind][res])
            if kind == "rules":
                assert got.pop("trunk_ids") == [trunk_id]
                want = _declared(kind, res)
                want.pop("trunk_ids")
            else:
                want = _declared(kind, res)
            assert got == want, f"{kind}/{res} read back differs"
    assert live["inbound"]["main-in"]["numbers"] == ["+15550100100", "+15550100101"], "numbers normalised to E.164"

    ids = {k: v.value for k, v in up.outputs.items()}
    changed = copy.deepcopy(FULL)
    changed["rules"]["support"]["room_config"]["agents"][0]["metadata"] = '{"route": "support", "v": 2}'
    set_spec(stack, changed)
    preview = stack.preview(diff=True, on_output=logs.append)
    assert preview.change_summary == {"same": 5, "update": 1}
    assert "~ room_config" in preview.stdout
    assert "+ v    : 2" in preview.stdout
    up = stack.up(on_output=logs.append)
    assert up.summary.resource_changes == {"same": 5, "update": 1}
    assert {k: v.value for k, v in up.outputs.items()} == ids, "ids unchanged: updated in place"
    assert (
        livekit_canonical()["rules"]["support"]["room_config"]["agents"][0]["metadata"]
        == '{"route": "support", "v": 2}'
    )

    assert stack.preview(expect_no_changes=True).change_summary == {"same": 6}

    state = _export(stack)
    destroy = stack.destroy(on_output=logs.append)
    assert destroy.summary.resource_changes == {"delete": 6}
    assert livekit_objects() == {"inbound": [], "outbound": [], "rules": []}

    for text, where in ((state, "state"), ("\n".join(logs), "engine output")):
        assert PASSWORD not in text, f"password in plain text in {where}"
    assert re.search(r'"auth_password":\s*\{\s*"4dabf18193072939515e22adb298388d"', state), "stored as a secret"


@pytest.mark.engine
def test_refresh_reports_drift_and_deletion_and_up_repairs(clean_livekit, tmp_path, pulumi_env):
    spec = {
        "inbound": {
            "in": {"name": "drift-in", "numbers": ["+15550100300"], "auth_username": "u", "auth_password": "$password"}
        },
        "rules": {
            "r": {"name": "drift-rule", "rule": {"type": "individual", "room_prefix": "d"}, "trunk_refs": ["in"]}
        },
    }
    stack = sip_stack(tmp_path, pulumi_env, spec, PASSWORD)
    ids = {k: v.value for k, v in stack.up().outputs.items()}

    import asyncio

    from livekit import api

    async def tamper():
        lk = api.LiveKitAPI()
        try:
            trunk = (await lk.sip.list_inbound_trunk(api.ListSIPInboundTrunkRequest(trunk_ids=[ids["in.id"]]))).items[0]
            trunk.numbers.append("+15550100399")
            await lk.sip.update_inbound_trunk(ids["in.id"], trunk)
            await lk.sip.delete_dispatch_rule(api.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=ids["r.id"]))
        finally:
            await lk.aclose()

    asyncio.run(tamper())
    refresh = stack.refresh()
    assert refresh.summary.resource_changes == {"same": 1, "update": 1, "delete": 1}
    preview = stack.preview(diff=True)
    assert preview.change_summary == {"same": 1, "update": 1, "create": 1}
    assert "+15550100399" in preview.stdout

    stack.up()
    live = livekit_canonical()
    assert live["inbound"]["drift-in"]["numbers"] == ["+15550100300"]
    assert list(live["rules"]) == ["drift-rule"]
    assert stack.preview(refresh=True).change_summary == {"same": 3}
    assert PASSWORD not in _export(stack)
    stack.destroy()


@pytest.mark.engine
def test_conflicting_rules_name_both_resources(clean_livekit, tmp_path, pulumi_env):
    spec = {
        "inbound": {"in": {"name": "conf-in", "numbers": ["+15550100400"]}},
        "rules": {
            "first": {"name": "first-rule", "rule": {"type": "individual"}, "trunk_refs": ["in"]},
        },
    }
    stack = sip_stack(tmp_path, pulumi_env, spec, PASSWORD)
    stack.up()
    spec["rules"]["second"] = {"name": "second-rule", "rule": {"type": "callee"}, "trunk_refs": ["in"]}
    set_spec(stack, spec)
    with pytest.raises(auto.errors.CommandError) as err:
        stack.up()
    text = str(err.value)
    assert "second-rule" in text
    assert "first-rule" in text
    assert "Dispatch rule for the same trunk" in text, "LiveKit's own message is surfaced verbatim"
    assert [m.name for m in livekit_objects()["rules"]] == ["first-rule"]
    stack.destroy()


@pytest.mark.engine
def test_unreachable_livekit_gives_the_url_and_a_hint(clean_livekit, tmp_path, pulumi_env):
    env = {**pulumi_env, "LIVEKIT_URL": "ws://127.0.0.1:9"}
    stack = sip_stack(tmp_path, env, {"inbound": {"in": {"name": "x-in", "numbers": ["+15550100500"]}}})
    with pytest.raises(auto.errors.CommandError) as err:
        stack.up()
    assert "cannot reach LiveKit at ws://127.0.0.1:9" in str(err.value)
    assert "livekit:url" in str(err.value)


INVALID_AT_PREVIEW = [
    # (spec, words the engine output must contain: the resource name and the field)
    ({"inbound": {"bad-in": {"name": "bad-in", "numbers": ["555-0100"]}}}, ["bad-in", "numbers.0", "country code"]),
    ({"inbound": {"open-in": {"name": "open-in"}}}, ["open-in", "must be restricted"]),
    ({"outbound": {"bad-out": {"name": "bad-out", "address": "sip:x@carrier.example", "numbers": ["+15550100200"]}}},
     ["bad-out", "address", "SIP URI"]),
    ({"inbound": {"ok-in": {"name": "ok-in", "numbers": ["+15550100600"]}},
      "rules": {"bad-rule": {"name": "bad-rule", "rule": {"type": "direct"}, "trunk_refs": ["ok-in"]}}},
     ["bad-rule", "rule.direct.room_name", "Field required"]),
    ({"inbound": {"ok-in": {"name": "ok-in", "numbers": ["+15550100600"]}},
      "rules": {"typo-rule": {"name": "typo-rule", "rule": {"type": "individual"}, "trunk_refs": ["ok-in"],
                              "hide_phone_numbr": True}}},
     ["typo-rule", "hide_phone_numbr", "unknown field"]),
]  # fmt: skip


@pytest.mark.engine
@pytest.mark.parametrize(
    ("spec", "words"), INVALID_AT_PREVIEW, ids=lambda v: "-".join(v) if isinstance(v, list) else ""
)
def test_invalid_declarations_fail_preview_and_change_nothing(clean_livekit, tmp_path, pulumi_env, spec, words):
    stack = sip_stack(tmp_path, pulumi_env, spec)
    with pytest.raises(auto.errors.CommandError) as err:
        stack.preview()
    for word in words:
        assert word in str(err.value)
    assert "Traceback" not in str(err.value), "bad input gets a message, not a traceback"
    assert livekit_objects() == {"inbound": [], "outbound": [], "rules": []}


@pytest.mark.engine
def test_livekit_killed_during_up_converges_without_duplicates(clean_livekit, local_env, tmp_path, pulumi_env):
    import threading
    import time

    n = 12
    spec = {
        "inbound": {f"t{i}": {"name": f"crash-t{i}", "numbers": [f"+1555020{i:04d}"]} for i in range(n)},
        "rules": {
            f"r{i}": {"name": f"crash-r{i}", "rule": {"type": "individual"}, "trunk_refs": [f"t{i}"]} for i in range(n)
        },
    }
    stack = sip_stack(tmp_path, pulumi_env, spec)
    killed = threading.Event()

    def kill_when_started():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed.is_set():
            try:
                if livekit_objects()["inbound"]:
                    local_env.service("livekit-server").kill()
                    killed.set()
                    return
            except Exception:
                pass
            time.sleep(0.01)

    killer = threading.Thread(target=kill_when_started)
    killer.start()
    try:
        with pytest.raises(auto.errors.CommandError) as err:
            stack.up()
        assert killed.is_set()
        assert "cannot reach LiveKit" in str(err.value)
    finally:
        killed.set()
        killer.join()
        local_env.restart("livekit-server")

    stack.up()
    live = livekit_objects()
    names = sorted(m.name for kind in live.values() for m in kind)
    assert names == sorted([f"crash-t{i}" for i in range(n)] + [f"crash-r{i}" for i in range(n)]), "no duplicates"
    assert stack.preview(refresh=True).change_summary == {"same": 2 * n + 1}
    stack.destroy()


@pytest.mark.engine
def test_credentials_come_from_stack_config_before_the_environment(clean_livekit, endpoints, tmp_path, pulumi_env):
    env = {**pulumi_env, "LIVEKIT_URL": "ws://127.0.0.1:9", "LIVEKIT_API_SECRET": "wrong-" * 8}
    stack = sip_stack(tmp_path, env, {"inbound": {"in": {"name": "cfg-in", "numbers": ["+15550100700"]}}})
    stack.set_config("livekit:url", auto.ConfigValue(endpoints.livekit_url))
    stack.set_config("livekit:apiKey", auto.ConfigValue(endpoints.api_key))
    stack.set_config("livekit:apiSecret", auto.ConfigValue(endpoints.api_secret, secret=True))
    logs: list[str] = []
    stack.up(on_output=logs.append)
    assert [t.name for t in livekit_objects()["inbound"]] == ["cfg-in"]
    state = _export(stack)
    assert endpoints.api_secret not in state, "API secret in plain text in state"
    assert endpoints.api_secret not in "\n".join(logs)
    assert endpoints.api_secret not in (tmp_path / "program" / "Pulumi.test.yaml").read_text()
    stack.destroy()
