"""Pure logic behind provisioning at scale: conflict keys, key claims and the shared name index (no server)."""

from __future__ import annotations

import asyncio

from livekit import api

from infra.livekit.conflicts import Claims, conflict_keys, normalize_number
from infra.livekit.names import NameIndex


def _trunk(name: str, numbers: list[str], allowed: list[str] | None = None) -> api.SIPInboundTrunkInfo:
    return api.SIPInboundTrunkInfo(name=name, numbers=numbers, allowed_numbers=allowed or [])


def _rule(name: str, trunks: list[str], numbers: list[str] | None = None, pin: str = "") -> api.SIPDispatchRuleInfo:
    return api.SIPDispatchRuleInfo(
        name=name,
        trunk_ids=trunks,
        numbers=numbers or [],
        rule=api.SIPDispatchRule(dispatch_rule_individual=api.SIPDispatchRuleIndividual(pin=pin)),
    )


def test_numbers_normalise_as_livekit_does():
    assert normalize_number("+1 (555) 010-0100") == "+15550100100"
    assert normalize_number("15550100100") == "+15550100100"
    assert normalize_number("alice") == "alice"


def test_trunks_share_a_key_exactly_when_livekit_would_call_them_conflicting():
    a = conflict_keys("in", _trunk("a", ["+15550100100", "+15550100101"]))
    assert not a.isdisjoint(conflict_keys("in", _trunk("b", ["15550100101"]))), "same number, no allowed numbers"
    assert a.isdisjoint(conflict_keys("in", _trunk("c", ["+15550100102"]))), "other number"
    assert a.isdisjoint(conflict_keys("in", _trunk("d", ["+15550100100"], ["+14155550000"]))), "separated by caller"
    assert a.isdisjoint(conflict_keys("in", _trunk("e", [], ["+14155550000"]))), "no numbers is its own cell"
    assert not a.isdisjoint(conflict_keys("in", _trunk("a", ["+15550100199"]))), "same name"


def test_rules_share_a_key_exactly_when_livekit_would_call_them_conflicting():
    r = conflict_keys("rule", _rule("r", ["ST_1", "ST_2"]))
    assert not r.isdisjoint(conflict_keys("rule", _rule("s", ["ST_2"])))
    assert r.isdisjoint(conflict_keys("rule", _rule("s", ["ST_3"])))
    assert r.isdisjoint(conflict_keys("rule", _rule("s", ["ST_1"], pin="42"))), "a pin separates rules"
    assert r.isdisjoint(conflict_keys("rule", _rule("s", ["ST_1"], numbers=["+15550100100"])))
    assert not conflict_keys("rule", _rule("w", [])).isdisjoint(conflict_keys("rule", _rule("v", []))), "wildcards"


def test_outbound_trunks_only_claim_their_name():
    keys = conflict_keys("out", api.SIPOutboundTrunkInfo(name="o", numbers=["+15550100200"], address="x.example"))
    assert keys == {("out", "name", "o")}


def test_claims_run_disjoint_writes_together_and_overlapping_ones_apart():
    async def scenario() -> tuple[int, int]:
        claims = Claims()
        running: set[str] = set()
        most_disjoint = 0
        overlaps = 0
        gate = asyncio.Event()

        async def write(name: str, keys: frozenset[object]) -> None:
            nonlocal most_disjoint, overlaps
            async with claims.hold(keys):
                running.add(name)
                if name.startswith("x") and len([r for r in running if r.startswith("x")]) > 1:
                    overlaps += 1
                most_disjoint = max(most_disjoint, len([r for r in running if r.startswith("d")]))
                await gate.wait() if name.startswith("d") else await asyncio.sleep(0)
                running.discard(name)

        disjoint = [asyncio.create_task(write(f"d{i}", frozenset({("k", i)}))) for i in range(5)]
        shared = [asyncio.create_task(write(f"x{i}", frozenset({("shared",), ("x", i)}))) for i in range(5)]
        while len([r for r in running if r.startswith("d")]) < 5:
            await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(*disjoint, *shared)
        every_key = frozenset({("shared",), *(("k", i) for i in range(5)), *(("x", i) for i in range(5))})
        async with asyncio.timeout(1), claims.hold(every_key):  # every key was given back: a write of all goes in
            pass
        return most_disjoint, overlaps

    most_disjoint, overlaps = asyncio.run(scenario())
    assert most_disjoint == 5, "writes with disjoint keys were all in flight at once"
    assert overlaps == 0, "writes sharing a key never overlapped"


def test_name_index_lists_once_for_many_concurrent_creates_and_relists_only_when_stale():
    async def scenario() -> None:
        listings = 0
        stored = [api.SIPInboundTrunkInfo(sip_trunk_id="ST_a", name="a")]

        async def lister() -> list[api.SIPInboundTrunkInfo]:
            nonlocal listings
            listings += 1
            await asyncio.sleep(0)
            return list(stored)

        index = NameIndex(lambda m: m.sip_trunk_id)
        found = await asyncio.gather(*(index.lookup(n, lister) for n in ["a", "b", "c"] * 10))
        assert listings == 1
        assert found[0] == (["ST_a"], 1)
        assert found[1] == ([], 1)

        index.added("b", "ST_b")
        assert (await index.lookup("b", lister))[0] == ["ST_b"]
        stored.append(api.SIPInboundTrunkInfo(sip_trunk_id="ST_c", name="c"))
        await asyncio.gather(index.refresh(1, lister), index.refresh(1, lister))
        assert listings == 2, "two refreshes of the same stale listing list once"
        assert (await index.lookup("c", lister))[0] == ["ST_c"]
        index.removed("ST_a")
        assert (await index.lookup("a", lister))[0] == []
        assert listings == 2

    asyncio.run(scenario())
