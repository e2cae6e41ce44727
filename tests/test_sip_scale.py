"""Provisioning at scale against the real livekit-server: calls per object, shared adoption, concurrent creates."""

from __future__ import annotations

import asyncio
import copy
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from livekit import api

from infra.livekit.client import LiveKitError
from infra.livekit.dispatch_rule import DispatchRuleProvider
from infra.livekit.inbound_trunk import InboundTrunkProvider
from tests.sip_harness import livekit_objects, set_spec, sip_stack

N = 8


def _spec(n: int) -> dict[str, Any]:
    return {
        "inbound": {f"t{i}": {"name": f"scale-t{i}", "numbers": [f"+1555060{i:04d}"]} for i in range(n)},
        "rules": {
            f"r{i}": {
                "name": f"scale-r{i}",
                "rule": {"type": "individual", "room_prefix": "s"},
                "trunk_refs": [f"t{i}"],
                "room_config": {"agents": [{"agent_name": "a", "metadata": f'{{"prompt": "route {i}"}}'}]},
            }
            for i in range(n)
        },
    }


def _names(kind: str) -> list[str]:
    return sorted(m.name for m in livekit_objects()[kind])


@pytest.mark.engine
def test_cold_up_costs_one_call_per_object_and_a_prompt_change_one_update(
    clean_livekit, tmp_path, pulumi_env, livekit_calls
):
    stack = sip_stack(tmp_path, {**pulumi_env, **livekit_calls.env()}, _spec(N))

    stack.up()
    assert livekit_calls.take() == {
        "ListSIPInboundTrunk": 1,  # one listing per kind for the whole deployment (adoption by name)
        "ListSIPDispatchRule": 1,
        "CreateSIPInboundTrunk": N,
        "CreateSIPDispatchRule": N,
    }
    assert _names("inbound") == sorted(f"scale-t{i}" for i in range(N)), "no duplicates"
    assert _names("rules") == sorted(f"scale-r{i}" for i in range(N))

    assert stack.preview().change_summary == {"same": 2 * N + 1}
    assert livekit_calls.take() == {}, "a no-op preview calls LiveKit not at all"

    changed = copy.deepcopy(_spec(N))
    changed["rules"]["r3"]["room_config"]["agents"][0]["metadata"] = '{"prompt": "route 3, v2"}'
    set_spec(stack, changed)
    assert stack.up().summary.resource_changes == {"same": 2 * N, "update": 1}
    assert livekit_calls.take() == {"UpdateSIPDispatchRule": 1}

    stack.destroy()
    assert livekit_calls.take() == {"DeleteSIPDispatchRule": N, "DeleteSIPTrunk": N}
    assert livekit_objects() == {"inbound": [], "outbound": [], "rules": []}


@pytest.mark.engine
def test_existing_objects_are_adopted_from_the_one_listing(clean_livekit, tmp_path, pulumi_env, livekit_calls):
    async def precreate() -> list[str]:
        async with api.LiveKitAPI() as lk:
            made = [
                await lk.sip.create_inbound_trunk(
                    api.CreateSIPInboundTrunkRequest(
                        trunk=api.SIPInboundTrunkInfo(name=f"scale-t{i}", numbers=[f"+1555069{i:04d}"])
                    )
                )
                for i in range(3)
            ]
        return [t.sip_trunk_id for t in made]

    ids = asyncio.run(precreate())  # as an interrupted `up` would leave them
    spec = {"inbound": _spec(5)["inbound"]}
    stack = sip_stack(tmp_path, {**pulumi_env, **livekit_calls.env()}, spec)
    outputs = stack.up().outputs
    assert livekit_calls.take() == {"ListSIPInboundTrunk": 1, "UpdateSIPInboundTrunk": 3, "CreateSIPInboundTrunk": 2}
    assert [outputs[f"t{i}.id"].value for i in range(3)] == ids, "adopted: same ids"
    live = {t.name: list(t.numbers) for t in livekit_objects()["inbound"]}
    assert live == {f"scale-t{i}": [f"+1555060{i:04d}"] for i in range(5)}, "overwritten with the declaration"
    stack.destroy()


def _create_all(provider: Any, props: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Create concurrently from many threads, as the provider host's gRPC pool does; (ids, errors)."""

    def one(p: dict[str, Any]) -> str:
        try:
            return "id:" + provider.create(provider.check({}, p).inputs).id
        except LiveKitError as e:
            return "error:" + str(e)

    with ThreadPoolExecutor(max_workers=len(props)) as pool:
        results = list(pool.map(one, props))
    return [r[3:] for r in results if r.startswith("id:")], [r[6:] for r in results if r.startswith("error:")]


def test_concurrent_creates_make_no_duplicates_and_no_conflicts(clean_livekit):
    trunks = InboundTrunkProvider()
    ids, errors = _create_all(trunks, [{"name": f"par-t{i}", "numbers": [f"+1555061{i:04d}"]} for i in range(24)])
    assert errors == []
    assert len(set(ids)) == 24
    assert _names("inbound") == sorted(f"par-t{i}" for i in range(24)), "every create landed once"

    same_number = [{"name": f"clash-t{i}", "numbers": ["+15550629999"]} for i in range(12)]
    ids, errors = _create_all(trunks, same_number)
    assert len(ids) == 1, "creates that LiveKit would find conflicting are never in flight together"
    assert len(errors) == 11
    assert all("Conflicting inbound SIP Trunks" in e for e in errors)
    assert len([t for t in livekit_objects()["inbound"] if "+15550629999" in t.numbers]) == 1

    rules = DispatchRuleProvider()
    wildcard = [{"name": f"clash-r{i}", "rule": {"type": "individual"}} for i in range(12)]
    ids, errors = _create_all(rules, wildcard)
    assert len(ids) == 1
    assert all("Dispatch rule for the same trunk" in e for e in errors)
    assert _names("rules") == [next(m.name for m in livekit_objects()["rules"])]

    same_name = [{"name": "twin-t", "numbers": [f"+1555063{i:04d}"]} for i in range(6)]
    ids, errors = _create_all(trunks, same_name)
    assert errors == []
    assert len(set(ids)) == 1, "the same name is adopted, never duplicated"
    assert _names("inbound").count("twin-t") == 1
