"""place_call on the real local livekit-server: dispatch with schema metadata, idempotency, clean failure."""

from __future__ import annotations

import asyncio
import json

import pytest
from livekit import api

from contract.metadata import RouteMetadata, parse_metadata
from infra.calls import CallError, place_call

ROUTES = {
    "reminders": {
        "trunk": "carrier",
        "trunk_id": "ST_notarealtrunk",
        "caller_ids": ["+15550100200"],
        "agent_name": "reminders-agent",
        "ring_timeout": 20,
        "metadata": RouteMetadata(route="reminders", direction="outbound", context={"campaign": "spring"}).to_json(),
    }
}


async def _dispatches(room: str) -> list:
    lk = api.LiveKitAPI()
    try:
        if not (await lk.room.list_rooms(api.ListRoomsRequest(names=[room]))).rooms:
            return []
        return list(await lk.agent_dispatch.list_dispatch(room))
    except api.TwirpError as e:
        if e.code == "not_found":
            return []
        raise
    finally:
        await lk.aclose()


async def _rooms() -> list[str]:
    lk = api.LiveKitAPI()
    try:
        return [r.name for r in (await lk.room.list_rooms(api.ListRoomsRequest())).rooms]
    finally:
        await lk.aclose()


def test_call_creates_one_dispatch_with_metadata_and_a_retry_does_not_dial_again(endpoints):
    first = place_call(ROUTES, "reminders", "+1 (555) 010-0999", call_id="appt-42",
                       overrides={"greeting_instructions": "Hi Sam"}, context={"customer": "sam"})  # fmt: skip
    assert first.room == "call-appt-42" and not first.already_placed
    dispatches = asyncio.run(_dispatches("call-appt-42"))
    assert [d.agent_name for d in dispatches] == ["reminders-agent"]
    parsed = parse_metadata(dispatches[0].metadata)
    meta = json.loads(dispatches[0].metadata)
    assert meta["called_number"] == "+15550100999" and meta["caller_number"] == "+15550100200"
    assert meta["outbound_trunk_id"] == "ST_notarealtrunk" and meta["number_to_call"] == "+15550100999"
    assert meta["overrides"]["greeting_instructions"] == "Hi Sam"
    assert meta["context"] == {"campaign": "spring", "customer": "sam"}
    assert parsed.warnings == [] or all("unknown" not in str(w) for w in parsed.warnings)

    again = place_call(ROUTES, "reminders", "+15550100999", call_id="appt-42")
    assert again.already_placed and again.dispatch_id == first.dispatch_id
    assert len(asyncio.run(_dispatches("call-appt-42"))) == 1


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"to": "555-0100"}, "country code"),
        ({"to": "+15550100999", "overrides": {"llm": "skynet/t-800"}}, "cannot resolve"),
        ({"to": "+15550100999", "overrides": {"system_prompt": "x"}}, "overrides.system_prompt"),
        ({"to": "+15550100999", "call_id": "bad id!"}, "call_id"),
        ({"to": "+15550100999", "route": "nope"}, "no outbound route 'nope'"),
    ],
    ids=["number", "unresolvable-spec", "unknown-override", "call-id", "route"],
)
def test_invalid_calls_are_refused_before_anything_is_sent(endpoints, kwargs, words):
    before = asyncio.run(_rooms())
    args = {"route": "reminders", **kwargs}
    with pytest.raises(CallError) as err:
        place_call(ROUTES, args.pop("route"), args.pop("to"), **args)
    assert words in str(err.value)
    assert asyncio.run(_rooms()) == before


def test_failed_direct_dial_removes_the_dispatch(endpoints):
    with pytest.raises(CallError) as err:
        place_call(ROUTES, "reminders", "+15550100998", call_id="dial-fails", dial="direct", timeout=10)
    assert "dispatch was removed" in str(err.value)
    assert asyncio.run(_dispatches("call-dial-fails")) == []
