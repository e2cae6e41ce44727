"""`siphon-infra import` refuses, writing nothing, what the stack file cannot reproduce (listed with the object's
id) unless --allow-changes, and bad input gets one line, never a traceback or a secret."""

from __future__ import annotations

import asyncio
import os

from livekit import api

from infra.stack.plan import plan_file
from tests.import_harness import run_import

PASSWORD = "Refusal-Test-Pa55word-0042"


async def _make() -> dict[str, str]:
    async with api.LiveKitAPI() as lk:
        trunk = await lk.sip.create_inbound_trunk(api.CreateSIPInboundTrunkRequest(trunk=api.SIPInboundTrunkInfo(
            name="main", numbers=["+15550104000", "+15550104001", "+15550104002"], auth_username="c",
            auth_password=PASSWORD)))  # fmt: skip
        nameless = await lk.sip.create_inbound_trunk(api.CreateSIPInboundTrunkRequest(trunk=api.SIPInboundTrunkInfo(
            numbers=["+15550104009"])))  # fmt: skip
        ids = {"nameless": nameless.sip_trunk_id}

        def rule(name: str, number: str, room: api.RoomConfiguration) -> api.CreateSIPDispatchRuleRequest:
            return api.CreateSIPDispatchRuleRequest(dispatch_rule=api.SIPDispatchRuleInfo(
                name=name, trunk_ids=[trunk.sip_trunk_id], numbers=[number], room_config=room,
                rule=api.SIPDispatchRule(dispatch_rule_individual=api.SIPDispatchRuleIndividual(room_prefix="r"))))  # fmt: skip

        two = api.RoomConfiguration(
            agents=[api.RoomAgentDispatch(agent_name="a"), api.RoomAgentDispatch(agent_name="b")]
        )
        made = await lk.sip.create_dispatch_rule(rule("two-agents", "+15550104000", two))
        ids["two-agents"] = made.sip_dispatch_rule_id
        extra = api.RoomConfiguration(metadata="room", agents=[api.RoomAgentDispatch(agent_name="a")])
        made = await lk.sip.create_dispatch_rule(rule("room-metadata", "+15550104001", extra))
        ids["room-metadata"] = made.sip_dispatch_rule_id
        text = api.RoomConfiguration(agents=[api.RoomAgentDispatch(agent_name="a", metadata="call me maybe")])
        made = await lk.sip.create_dispatch_rule(rule("plain-text", "+15550104002", text))
        ids["plain-text"] = made.sip_dispatch_rule_id
        return ids


def test_what_the_file_cannot_reproduce_is_listed_and_refused(clean_livekit, tmp_path, capsys):
    ids = asyncio.run(_make())
    out = tmp_path / "local.yaml"
    code, output = run_import(capsys, out)
    assert code == 1 and not out.exists(), output
    assert "Not written" in output and "--allow-changes" in output
    for what, object_id, words in (("nameless", ids["nameless"], "no name"),
                                   ("two-agents", ids["two-agents"], "dispatches 2 agents"),
                                   ("room-metadata", ids["room-metadata"], "room_config.metadata"),
                                   ("plain-text", ids["plain-text"], "not a JSON object")):  # fmt: skip
        line = next((x for x in output.splitlines() if object_id in x), "")
        assert words in line, (what, output)
    assert PASSWORD not in output

    code, output = run_import(capsys, out, "--allow-changes")
    assert code == 0, output
    text = out.read_text()
    assert PASSWORD not in output and PASSWORD not in text
    assert ids["two-agents"] in output.split("Not reproduced")[-1], "listed at the end"
    assert ids["two-agents"] in text, "and in the file's header"
    plan_file(out, secrets=False)  # what it wrote compiles


def test_bad_input_gets_one_line(clean_livekit, tmp_path, capsys, monkeypatch):
    out = tmp_path / "local.yaml"
    cases = [
        (["--url", "notaurl"], "is not a LiveKit URL"),
        (["--url", "ws://127.0.0.1:9"], "cannot reach LiveKit at ws://127.0.0.1:9"),
    ]
    from infra.cli import main

    for args, words in cases:
        code = main(["import", "local", *args, "--out", str(out)])
        err = capsys.readouterr().err
        assert code != 0 and words in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert main(["import", "Bad_Env", "--url", os.environ["LIVEKIT_URL"]]) == 2
    assert "environment 'Bad_Env'" in capsys.readouterr().err
    code, output = run_import(capsys, tmp_path, "--force")
    assert code == 1 and output.count("\n") == 1 and f"{tmp_path} is a directory" in output, output
    out.write_text("environment: local\n")
    code, output = run_import(capsys, out)
    assert code == 1 and "exists: pass --force" in output
    monkeypatch.setenv("LIVEKIT_API_SECRET", "x" * 40)
    code, output = run_import(capsys, out, "--force")
    assert code == 1 and output.count("\n") == 1 and "LIVEKIT_API_SECRET are this project's" in output, output
    assert "x" * 40 not in output


def test_outside_local_the_import_says_what_to_fill_in(clean_livekit, tmp_path, capsys):
    async def make() -> None:
        async with api.LiveKitAPI() as lk:
            trunk = await lk.sip.create_inbound_trunk(api.CreateSIPInboundTrunkRequest(
                trunk=api.SIPInboundTrunkInfo(name="staging-main", numbers=["+15550105000"])))  # fmt: skip
            await lk.sip.create_dispatch_rule(api.CreateSIPDispatchRuleRequest(dispatch_rule=api.SIPDispatchRuleInfo(
                name="staging-sales", trunk_ids=[trunk.sip_trunk_id],
                rule=api.SIPDispatchRule(dispatch_rule_individual=api.SIPDispatchRuleIndividual(
                    room_prefix="staging-sales")),
                room_config=api.RoomConfiguration(agents=[api.RoomAgentDispatch(agent_name="sales-agent")]))))  # fmt: skip

    asyncio.run(make())
    out = tmp_path / "staging.yaml"
    code, output = run_import(capsys, out, environment="staging")
    assert code == 0, output
    text = out.read_text()
    assert "  main:\n" in text and "name:" not in text, "the environment prefix is the default name: dropped"
    assert "  sales:\n" in text and "rule:" not in text, "the default rule is not written"
    fill_in = output.split("fill in")[-1]
    assert "agents.sales-agent.defaults" in fill_in, output
    assert "agents.sales-agent.local" in fill_in and "add `ecs: {image:" in fill_in, "the worker stanza to complete"
    assert "inbound_trunks.main" in fill_in and "allowed_addresses" in fill_in, output
