"""`siphon-infra import` of objects whose names collide once made stack keys (case, punctuation, the environment
prefix, one name on two objects): every object gets its own key, keeps its LiveKit name, and is adopted unchanged."""

from __future__ import annotations

import asyncio
import json

import pytest
import yaml
from livekit import api

from tests.import_harness import adoption_cycle, deployed, run_import
from tests.sip_harness import livekit_objects

NAMES = ["Main Line", "main-line", "MAIN_LINE", "local-main-line", "dup", "dup"]


async def _make() -> None:
    async with api.LiveKitAPI() as lk:
        for i, name in enumerate(NAMES):
            trunk = await lk.sip.create_inbound_trunk(api.CreateSIPInboundTrunkRequest(trunk=api.SIPInboundTrunkInfo(
                name=name, numbers=[f"+1555010300{i}"])))  # fmt: skip
            payload = {"agent_config": {"llm": None, "tts": None, "stt": None, "greeting_instructions": None,
                                        "system_instructions": f"Line {i}."}}  # fmt: skip
            await lk.sip.create_dispatch_rule(api.CreateSIPDispatchRuleRequest(dispatch_rule=api.SIPDispatchRuleInfo(
                name=name.replace("line", "route").replace("Line", "Route").replace("LINE", "ROUTE"),
                trunk_ids=[trunk.sip_trunk_id],
                rule=api.SIPDispatchRule(dispatch_rule_individual=api.SIPDispatchRuleIndividual(room_prefix="c")),
                room_config=api.RoomConfiguration(agents=[api.RoomAgentDispatch(
                    agent_name="line-agent", metadata=json.dumps(payload))]))))  # fmt: skip


@pytest.mark.engine
def test_colliding_names_get_their_own_keys_and_are_adopted_with_no_write(
    clean_livekit, tmp_path, pulumi_env, capsys, livekit_calls
):
    asyncio.run(_make())
    out = tmp_path / "imported.yaml"
    code, output = run_import(capsys, out, url=livekit_calls.url)
    assert code == 0, output
    doc = yaml.safe_load(out.read_text())
    trunks, routes = doc["inbound_trunks"], doc["inbound_routes"]
    assert len(trunks) == len(routes) == len(NAMES)
    assert sorted(trunks) == ["dup", "dup-2", "main-line", "main-line-2", "main-line-3", "main-line-4"]
    named = {k: t.get("name", f"local-{k}") for k, t in trunks.items()}
    assert [named[k] for k in ("main-line", "main-line-2", "main-line-3", "main-line-4")] == [
        "local-main-line", "main-line", "MAIN_LINE", "Main Line"], "keys go the same way on every import"  # fmt: skip
    live = {t.sip_trunk_id: t.name for t in livekit_objects()["inbound"]}
    names = sorted(t.get("name", f"local-{k}") for k, t in trunks.items())
    assert names == sorted(NAMES), "every trunk keeps its LiveKit name"
    for key in ("dup", "dup-2"):
        assert live[trunks[key]["adopt_id"]] == "dup", "a shared name is adopted by id"
    sut = deployed(tmp_path / "deploy", pulumi_env, out.read_text(), {}, livekit_calls)

    def edit() -> None:
        doc["inbound_routes"]["main-route"]["agent_config"]["system_instructions"] = "Line, version two."
        sut.write(doc)

    adoption_cycle(sut, livekit_calls, edit)
