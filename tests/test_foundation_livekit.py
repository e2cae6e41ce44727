"""livekit-api talks to the local livekit-server (with Redis for SIP): trunks and rules round-trip."""

from __future__ import annotations

import asyncio

import pytest
from livekit import api

from localenv.manager import Endpoints


def _run(coro):
    return asyncio.run(coro)


async def _with_client(ep: Endpoints, fn, secret: str | None = None):
    lk = api.LiveKitAPI(ep.livekit_url, ep.api_key, secret or ep.api_secret)
    try:
        return await fn(lk)
    finally:
        await lk.aclose()


def test_inbound_trunk_and_dispatch_rule_create_list_delete(endpoints: Endpoints):
    async def scenario(lk: api.LiveKitAPI):
        trunk = await lk.sip.create_inbound_trunk(
            api.CreateSIPInboundTrunkRequest(
                trunk=api.SIPInboundTrunkInfo(
                    name="foundation", numbers=["+15550100"], allowed_addresses=["127.0.0.1/32"]
                )
            )
        )
        rule = await lk.sip.create_dispatch_rule(
            api.CreateSIPDispatchRuleRequest(
                dispatch_rule=api.SIPDispatchRuleInfo(
                    name="foundation-rule",
                    trunk_ids=[trunk.sip_trunk_id],
                    rule=api.SIPDispatchRule(
                        dispatch_rule_individual=api.SIPDispatchRuleIndividual(room_prefix="call")
                    ),
                )
            )
        )
        trunks = await lk.sip.list_inbound_trunk(api.ListSIPInboundTrunkRequest(trunk_ids=[trunk.sip_trunk_id]))
        rules = await lk.sip.list_dispatch_rule(
            api.ListSIPDispatchRuleRequest(dispatch_rule_ids=[rule.sip_dispatch_rule_id])
        )
        await lk.sip.delete_dispatch_rule(
            api.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=rule.sip_dispatch_rule_id)
        )
        await lk.sip.delete_trunk(api.DeleteSIPTrunkRequest(sip_trunk_id=trunk.sip_trunk_id))
        after_trunks = await lk.sip.list_inbound_trunk(api.ListSIPInboundTrunkRequest(trunk_ids=[trunk.sip_trunk_id]))
        after_rules = await lk.sip.list_dispatch_rule(api.ListSIPDispatchRuleRequest())
        return trunk, rule, trunks, rules, after_trunks, after_rules

    trunk, rule, trunks, rules, after_trunks, after_rules = _run(_with_client(endpoints, scenario))
    assert trunk.sip_trunk_id.startswith("ST_")
    assert rule.sip_dispatch_rule_id.startswith("SDR_")
    assert [t.numbers[:] for t in trunks.items] == [["+15550100"]]
    assert [r.name for r in rules.items] == ["foundation-rule"]
    assert list(rules.items[0].trunk_ids) == [trunk.sip_trunk_id]
    assert list(after_trunks.items) == []
    assert rule.sip_dispatch_rule_id not in [r.sip_dispatch_rule_id for r in after_rules.items]


def test_wrong_secret_is_rejected(endpoints: Endpoints):
    async def scenario(lk: api.LiveKitAPI):
        await lk.sip.list_inbound_trunk(api.ListSIPInboundTrunkRequest())

    with pytest.raises(api.TwirpError) as err:
        _run(_with_client(endpoints, scenario, secret="x" * 40))
    assert err.value.status == 401, (err.value.code, err.value.message)
