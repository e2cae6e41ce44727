"""`siphon-infra verify`: refuses clearly without a SIP bridge; proves routes with sipp when one runs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from infra.verify import scenario


def test_verify_without_a_sip_bridge_says_what_to_set(monkeypatch):
    env = {k: v for k, v in __import__("os").environ.items() if k != "SIPHON_SIP_ADDRESS"}
    run = subprocess.run([sys.executable, "-m", "infra.cli", "verify", "local"], env=env, capture_output=True,
                         text=True, timeout=60, check=False)  # fmt: skip
    assert run.returncode == 2
    assert "SIPHON_SIP_ADDRESS" in run.stderr


def test_sipp_scenario_carries_caller_headers_and_sdp():
    xml = scenario("+15005550006", {"X-Customer-Tier": "gold"}, hold_ms=1234)
    assert "From: <sip:15005550006@[local_ip]:[local_port]>" in xml
    assert "X-Customer-Tier: gold\nContent-Type: application/sdp" in xml
    assert "m=audio [media_port] RTP/AVP 0" in xml and '<pause milliseconds="1234"/>' in xml


@pytest.mark.engine
def test_verify_passes_for_every_local_route_and_fails_for_a_broken_one(
    sip_endpoints, local_env, aws, tmp_path, pulumi_env
):
    import asyncio
    import copy
    import json
    import os
    from pathlib import Path

    import yaml
    from livekit import api

    from localenv.deploy import start_workers
    from localenv.reset import wipe_sip
    from tests.stack_harness import StackUnderTest
    from worker.config import defaults_env

    wipe_sip()
    doc = yaml.safe_load((Path(__file__).parents[1] / "stacks" / "local.yaml").read_text())
    sut = StackUnderTest(tmp_path, pulumi_env, "local", copy.deepcopy(doc))
    outputs = {k: v.value for k, v in sut.stack.up().outputs.items()}
    (tmp_path / "outputs.json").write_text(json.dumps(outputs))
    workers = start_workers(local_env, {k: defaults_env(a.defaults) for k, a in sut.stack_file().agents.items()})
    env = {**os.environ, "SIPHON_SIP_ADDRESS": sip_endpoints.sip_address, "SIPHON_STACKS_DIR": str(sut.work / "stacks")}
    try:
        ok = subprocess.run([sys.executable, "-m", "infra.cli", "verify", "local", "--outputs", str(tmp_path / "outputs.json")],
                            env=env, capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert ok.stdout.count("| ok") == len(outputs["routing_table"])

        broken = outputs["routing_table"]["+15550100101"]["rule_id"]

        async def misroute() -> None:
            lk = api.LiveKitAPI()
            try:
                rule = (
                    await lk.sip.list_dispatch_rule(api.ListSIPDispatchRuleRequest(dispatch_rule_ids=[broken]))
                ).items[0]
                rule.room_config.agents[0].agent_name = "ghost-agent"
                await lk.sip.update_dispatch_rule(broken, rule)
            finally:
                await lk.aclose()

        asyncio.run(misroute())
        bad = subprocess.run([sys.executable, "-m", "infra.cli", "verify", "local", "--outputs", str(tmp_path / "outputs.json")],
                             env=env, capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
        assert bad.returncode == 1
        lines = {
            line.split("|")[1].strip(): line
            for line in bad.stdout.splitlines()
            if line.startswith("| ") and "route" not in line
        }
        assert "FAIL" in lines["sales"] and "no agent answered" in lines["sales"]
        assert "| ok" in lines["support"]
    finally:
        for w in workers:
            w.stop()
        sut.stack.destroy()
