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
from infra.stack.plan import plan_file
from tests.import_harness import adoption_cycle, deployed, run_import, secret_commands
from tests.sip_harness import livekit_objects, wipe_livekit

N = 10


@pytest.fixture
def clean_livekit(endpoints):
    wipe_livekit()
    yield endpoints
    wipe_livekit()


@pytest.mark.engine
def test_siphons_own_loop_is_adopted_with_no_write(clean_livekit, tmp_path, pulumi_env, capsys):
    siphon_loop.run(N, "siphon", 7_000_000)
    rules = {r.name: r for r in livekit_objects()["rules"]}
    assert len(rules) == N and len(livekit_objects()["inbound"]) == N
    out = tmp_path / "imported.yaml"
    t0 = time.perf_counter()
    code, output = run_import(capsys, out)
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
    sut, calls = deployed(tmp_path / "deploy", pulumi_env, out.read_text(), {})
    plan_file(sut.work / "stacks" / "local.yaml")

    key = next(iter(doc["inbound_routes"]))

    def edit() -> None:
        doc["inbound_routes"][key]["agent_config"]["system_instructions"] = "You answer, version two."
        sut.write(doc)

    figures = adoption_cycle(sut, calls, edit)
    changed = next(r for r in livekit_objects()["rules"] if r.name == doc["inbound_routes"][key].get("name"))
    payload = json.loads(changed.room_config.agents[0].metadata)
    assert payload["agent_config"]["system_instructions"] == "You answer, version two."
    assert set(payload) == {"agent_config", "inbound_trunk_id", "agent_number"}, "still SIPHON's shape"
    print(f"import of {N} SIPHON numbers: {seconds:.2f}s; first up LiveKit calls: {figures['first_up_calls']}")
