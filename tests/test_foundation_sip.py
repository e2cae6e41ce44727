"""A real SIP INVITE from sipp reaches livekit-sip, and LiveKit puts the caller in a room."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time

import pytest
from livekit import api

from localenv.manager import Endpoints

NUMBER = "+15550100"


async def _setup(ep: Endpoints) -> tuple[str, str]:
    lk = api.LiveKitAPI(ep.livekit_url, ep.api_key, ep.api_secret)
    try:
        trunk = await lk.sip.create_inbound_trunk(
            api.CreateSIPInboundTrunkRequest(
                trunk=api.SIPInboundTrunkInfo(name="sipp-in", numbers=[NUMBER], allowed_addresses=["127.0.0.1/32"])
            )
        )
        rule = await lk.sip.create_dispatch_rule(
            api.CreateSIPDispatchRuleRequest(
                dispatch_rule=api.SIPDispatchRuleInfo(
                    name="sipp-rule",
                    trunk_ids=[trunk.sip_trunk_id],
                    rule=api.SIPDispatchRule(
                        dispatch_rule_individual=api.SIPDispatchRuleIndividual(room_prefix="call")
                    ),
                )
            )
        )
        return trunk.sip_trunk_id, rule.sip_dispatch_rule_id
    finally:
        await lk.aclose()


async def _sip_participants(ep: Endpoints) -> list[tuple[str, api.ParticipantInfo]]:
    lk = api.LiveKitAPI(ep.livekit_url, ep.api_key, ep.api_secret)
    try:
        found = []
        for room in (await lk.room.list_rooms(api.ListRoomsRequest())).rooms:
            parts = await lk.room.list_participants(api.ListParticipantsRequest(room=room.name))
            found += [(room.name, p) for p in parts.participants if p.kind == api.ParticipantInfo.Kind.SIP]
        return found
    finally:
        await lk.aclose()


async def _delete_rooms(ep: Endpoints) -> None:
    lk = api.LiveKitAPI(ep.livekit_url, ep.api_key, ep.api_secret)
    try:
        for room in (await lk.room.list_rooms(api.ListRoomsRequest())).rooms:
            await lk.room.delete_room(api.DeleteRoomRequest(room=room.name))
    finally:
        await lk.aclose()


async def _cleanup(ep: Endpoints, trunk_id: str, rule_id: str) -> None:
    lk = api.LiveKitAPI(ep.livekit_url, ep.api_key, ep.api_secret)
    try:
        await lk.sip.delete_dispatch_rule(api.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=rule_id))
        await lk.sip.delete_trunk(api.DeleteSIPTrunkRequest(sip_trunk_id=trunk_id))
        for room in (await lk.room.list_rooms(api.ListRoomsRequest())).rooms:
            await lk.room.delete_room(api.DeleteRoomRequest(room=room.name))
    finally:
        await lk.aclose()


def test_sipp_invite_creates_a_room_with_the_sip_participant(endpoints: Endpoints, tmp_path):
    sipp = shutil.which("sipp")
    assert sipp, "sipp (Debian sip-tester) is installed by ./dev setup"
    trunk_id, rule_id = asyncio.run(_setup(endpoints))
    call = subprocess.Popen(  # sipp's own UAC: INVITE, then (once answered) hold 4 s and BYE
        [sipp, "-sn", "uac", "-i", "127.0.0.1", "-s", NUMBER, "-m", "1", "-d", "4000",
         "-timeout", "40", "-nostdin", "-trace_err", endpoints.sip_address],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        found: list[tuple[str, api.ParticipantInfo]] = []
        while time.monotonic() < deadline and not found:
            found = asyncio.run(_sip_participants(endpoints))
            time.sleep(0.1)
        assert found, "no SIP participant appeared in any room"
        room, participant = found[0]
        assert room.startswith("call_")
        assert participant.attributes["sip.trunkID"] == trunk_id
        assert participant.attributes["sip.ruleID"] == rule_id
        assert participant.attributes["sip.trunkPhoneNumber"] == NUMBER
        # No agent publishes a track, so the bridge keeps the caller ringing; deleting the room ends the call
        # from the bridge's side (an error status to the INVITE), and sipp exits by itself.
        assert participant.attributes["sip.callStatus"] == "ringing"
        asyncio.run(_delete_rooms(endpoints))
        assert call.wait(timeout=20) == 1, "sipp should see its ringing call refused, not hang"
    finally:
        if call.poll() is None:
            call.terminate()
            call.wait(timeout=10)
        asyncio.run(_cleanup(endpoints, trunk_id, rule_id))


@pytest.mark.parametrize("binary", ["sipp", "redis-server"])
def test_debian_tools_are_installed(binary):
    assert shutil.which(binary), f"{binary} missing: ./dev setup installs it"
