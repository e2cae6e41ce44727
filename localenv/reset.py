"""Resetting LiveKit SIP state between tests and benchmark runs (the shared server keeps running)."""

from __future__ import annotations

import asyncio

from livekit import api


async def _wipe() -> None:
    lk = api.LiveKitAPI()  # LIVEKIT_URL / _API_KEY / _API_SECRET from the environment
    try:
        for r in (await lk.sip.list_dispatch_rule(api.ListSIPDispatchRuleRequest())).items:
            await lk.sip.delete_dispatch_rule(
                api.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=r.sip_dispatch_rule_id)
            )
        for t in (await lk.sip.list_inbound_trunk(api.ListSIPInboundTrunkRequest())).items:
            await lk.sip.delete_trunk(api.DeleteSIPTrunkRequest(sip_trunk_id=t.sip_trunk_id))
        for o in (await lk.sip.list_outbound_trunk(api.ListSIPOutboundTrunkRequest())).items:
            await lk.sip.delete_trunk(api.DeleteSIPTrunkRequest(sip_trunk_id=o.sip_trunk_id))
    finally:
        await lk.aclose()


def wipe_sip() -> None:
    """Delete every SIP trunk and dispatch rule on the LiveKit server the environment points at."""
    asyncio.run(_wipe())
