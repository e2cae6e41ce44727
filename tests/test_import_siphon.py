"""`siphon-infra import` of what SIPHON 0.1.4's own `Dispatch(...).agent_dispatch()` loop makes for 10 numbers
(siphon-ai installed from PyPI into its own virtualenv): one trunk per number, every trunk named after the agent,
one rule per trunk with SIPHON's JSON payload. The import keeps every object as it is (trunks adopted by id, since
they share one name), the first up writes nothing, and a prompt change is one update."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from bench import siphon_loop
from contract.metadata import AgentConfig
from infra.stack.model import Agent, LocalWorker
from infra.stack.plan import plan_file
from localenv.deploy import start_workers
from tests.import_harness import adoption_cycle, bridge_call, deployed, run_import, secret_commands
from tests.sip_harness import livekit_objects

N = 10


@pytest.fixture
def siphon_worker(local_env):
    """Our worker registered under SIPHON's agent name, on the offline models."""
    defaults = AgentConfig(llm="local/scripted", stt="local/silent", tts="local/espeak-ng")
    settings = Agent(defaults=defaults, local=LocalWorker()).worker_env("local")
    (worker,) = start_workers(local_env, {"siphon-agent": settings})
    yield worker
    assert local_env.release(worker, grace=30), "the worker did not stop on SIGTERM"


def _resolved(attributes: dict[str, str]) -> dict[str, str]:
    """The agent's resolved configuration: its siphon.* attributes, without the per-call counters."""
    per_call = ("siphon.caller_speech", "siphon.agent_utterances", "siphon.interrupted")
    return {k: v for k, v in attributes.items() if k.startswith("siphon.") and k not in per_call}


@pytest.mark.engine
def test_siphons_own_loop_is_adopted_with_no_write(
    clean_livekit, siphon_worker, tmp_path, pulumi_env, capsys, livekit_calls
):
    siphon_loop.run(N, "siphon", 7_000_000)
    number = "+15557000003"
    before = _resolved(bridge_call(number))
    assert before["siphon.agent_name"] == "siphon-agent", before
    assert before["siphon.direction"] == "inbound", before
    after: dict[str, str] = {}
    rules = {r.name: r for r in livekit_objects()["rules"]}
    assert len(rules) == N and len(livekit_objects()["inbound"]) == N
    out = tmp_path / "imported.yaml"
    t0 = time.perf_counter()
    code, output = run_import(capsys, out, url=livekit_calls.url)
    seconds = time.perf_counter() - t0
    assert code == 0, output
    assert secret_commands(output) == []
    doc = yaml.safe_load(out.read_text())
    assert len(doc["inbound_trunks"]) == N and len(doc["inbound_routes"]) == N
    assert set(doc["agents"]) == {"siphon-agent"}
    for key, route in doc["inbound_routes"].items():
        live = rules[route.get("name", f"local-{key}")]
        payload = json.loads(live.room_config.agents[0].metadata)
        assert route["metadata_format"] == "siphon"
        assert route["agent"] == "siphon-agent"
        assert route["agent_config"]["system_instructions"] == payload["agent_config"]["system_instructions"]
        assert route["context"] == {k: v for k, v in payload.items() if k != "agent_config"}
        (trunk,) = route["trunks"]
        assert doc["inbound_trunks"][trunk]["adopt_id"] == live.trunk_ids[0]
    sut = deployed(tmp_path / "deploy", pulumi_env, out.read_text(), {}, livekit_calls)
    plan_file(sut.work / "stacks" / "local.yaml")

    key = next(iter(doc["inbound_routes"]))

    def edit() -> None:
        doc["inbound_routes"][key]["agent_config"]["system_instructions"] = "You answer, version two."
        sut.write(doc)

    figures = adoption_cycle(sut, livekit_calls, edit, after_up=lambda: after.update(_resolved(bridge_call(number))))
    assert after == before, "the same number reaches the same agent with the same resolved configuration"
    changed = next(r for r in livekit_objects()["rules"] if r.name == doc["inbound_routes"][key].get("name"))
    payload = json.loads(changed.room_config.agents[0].metadata)
    assert payload["agent_config"]["system_instructions"] == "You answer, version two."
    assert set(payload) == {"agent_config", "inbound_trunk_id", "agent_number"}, "still SIPHON's shape"
    print(f"import of {N} SIPHON numbers: {seconds:.2f}s; first up LiveKit calls: {figures['first_up_calls']}")
    print(f"published before and after import (equal): {before}")
