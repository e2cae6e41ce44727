"""`siphon-infra import` of objects made through livekit.api (every rule type, header maps, digest auth, media),
adopted by the real engine with zero LiveKit writes on the first up."""

from __future__ import annotations

import asyncio
import json

import pytest
import yaml
from livekit import api

from contract.metadata import AgentConfig, RouteMetadata
from infra.stack.plan import plan_file
from tests.import_harness import adoption_cycle, deployed, run_import, secret_commands

IN_PASSWORD = "Digest-Inbound-Pa55word-7781"
OUT_PASSWORD = "Carrier-Outbound-Pa55word-4410"
SALES_PROMPT = "You are the sales line of Acme. Be brief."
SIPHON_PAYLOAD = {"agent_config": {"llm": {"provider": "openai", "model": "gpt-4.1-mini", "temperature": 0.3},
                                   "tts": None, "stt": None, "greeting_instructions": "Hello from Acme sales!",
                                   "system_instructions": SALES_PROMPT},
                  "inbound_trunk_id": "ST_placeholder", "agent_number": "+15550101000"}  # fmt: skip


async def _make() -> dict[str, str]:
    async with api.LiveKitAPI() as lk:
        media = api.SIPMediaConfig(only_listed_codecs=True, codecs=[api.SIPCodec(name="PCMU", rate=8000)])
        main = await lk.sip.create_inbound_trunk(api.CreateSIPInboundTrunkRequest(trunk=api.SIPInboundTrunkInfo(
            name="Carrier In", numbers=["+15550101000", "+15550101001"], allowed_addresses=["127.0.0.1/32"],
            headers={"X-Org": "acme"}, headers_to_attributes={"X-Customer-Tier": "customer.tier"},
            attributes_to_headers={"siphon.ticket": "X-Ticket"}, include_headers=api.SIP_X_HEADERS,
            ringing_timeout={"seconds": 20}, max_call_duration={"seconds": 3600}, krisp_enabled=True, media=media,
            metadata="carrier: main")))  # fmt: skip
        digest = await lk.sip.create_inbound_trunk(api.CreateSIPInboundTrunkRequest(trunk=api.SIPInboundTrunkInfo(
            name="digest-line", numbers=["+15550101002"], auth_username="carrier", auth_password=IN_PASSWORD,
            auth_realm="acme.example")))  # fmt: skip
        await lk.sip.create_outbound_trunk(api.CreateSIPOutboundTrunkRequest(trunk=api.SIPOutboundTrunkInfo(
            name="carrier-out", address="127.0.0.1:5080", transport=api.SIP_TRANSPORT_UDP, numbers=["+15550101100"],
            auth_username="acme", auth_password=OUT_PASSWORD, destination_country="US", headers={"X-Org": "acme"},
            from_host="sip.acme.example")))  # fmt: skip
        payload = json.dumps({**SIPHON_PAYLOAD, "inbound_trunk_id": main.sip_trunk_id})
        rules = [
            api.SIPDispatchRuleInfo(name="front-desk", trunk_ids=[main.sip_trunk_id], rule=api.SIPDispatchRule(
                dispatch_rule_direct=api.SIPDispatchRuleDirect(room_name="lobby", pin="4321"))),
            api.SIPDispatchRuleInfo(name="Sales", trunk_ids=[main.sip_trunk_id], numbers=["+15550101000"],
                hide_phone_number=True, rule=api.SIPDispatchRule(dispatch_rule_individual=api.SIPDispatchRuleIndividual(
                    room_prefix="sales", no_randomness=False)),
                room_config=api.RoomConfiguration(agents=[api.RoomAgentDispatch(agent_name="sales-agent",
                                                                                metadata=payload)])),
            api.SIPDispatchRuleInfo(name="support", trunk_ids=[main.sip_trunk_id], numbers=["+15550101001"],
                inbound_numbers=["+15550109999"], attributes={"team": "support"},
                rule=api.SIPDispatchRule(dispatch_rule_callee=api.SIPDispatchRuleCallee(
                    room_prefix="support", randomize=True)),
                room_config=api.RoomConfiguration(empty_timeout=30, max_participants=3,
                                                  agents=[api.RoomAgentDispatch(agent_name="support-agent")])),
            api.SIPDispatchRuleInfo(name="digest", trunk_ids=[digest.sip_trunk_id], krisp_enabled=True, media=media,
                rule=api.SIPDispatchRule(dispatch_rule_individual=api.SIPDispatchRuleIndividual(room_prefix="d")),
                room_config=api.RoomConfiguration(agents=[api.RoomAgentDispatch(agent_name="support-agent",
                                                                                metadata=payload)])),
        ]  # fmt: skip
        ours = RouteMetadata(route="billing", direction="inbound", agent_config=AgentConfig(
            system_instructions="You handle billing."), context={"tier": "gold"}).to_json()  # fmt: skip
        rules.append(api.SIPDispatchRuleInfo(name="billing", trunk_ids=[main.sip_trunk_id],
            inbound_numbers=["+15550108888"], metadata=ours, attributes={"siphon.route": "billing"},
            rule=api.SIPDispatchRule(dispatch_rule_individual=api.SIPDispatchRuleIndividual(room_prefix="b")),
            room_config=api.RoomConfiguration(agents=[api.RoomAgentDispatch(agent_name="sales-agent",
                                                                            metadata=ours)])))  # fmt: skip
        for rule in rules:
            await lk.sip.create_dispatch_rule(api.CreateSIPDispatchRuleRequest(dispatch_rule=rule))
        return {"main": main.sip_trunk_id}


@pytest.mark.engine
def test_objects_made_with_livekit_api_are_adopted_with_no_write(
    clean_livekit, tmp_path, pulumi_env, capsys, livekit_calls
):
    asyncio.run(_make())
    out = tmp_path / "imported.yaml"
    code, output = run_import(capsys, out, url=livekit_calls.url)
    assert code == 0, output
    text = out.read_text()
    for secret in (IN_PASSWORD, OUT_PASSWORD):
        assert secret not in text and secret not in output, "a password left LiveKit"
    doc = yaml.safe_load(text)
    routes = doc["inbound_routes"]
    assert routes["front-desk"]["rule"] == {"type": "direct", "room_name": "lobby", "pin": "4321"}
    assert "agent" not in routes["front-desk"]
    assert routes["sales"]["name"] == "Sales" and routes["sales"]["metadata_format"] == "siphon"
    assert routes["sales"]["agent_config"]["system_instructions"] == SALES_PROMPT
    assert routes["sales"]["agent_config"]["llm"] == SIPHON_PAYLOAD["agent_config"]["llm"]
    assert routes["support"]["metadata_format"] == "none"
    assert "metadata_format" not in routes["billing"], "siphon-infra's own metadata is the default format"
    assert routes["billing"]["agent_config"] == {"system_instructions": "You handle billing."}
    assert routes["billing"]["context"] == {"tier": "gold"} and "attributes" not in routes["billing"]
    assert routes["support"]["rule"] == {"type": "callee", "room_prefix": "support", "randomize": True}
    assert doc["inbound_trunks"]["carrier-in"]["numbers"] == ["+15550101000", "+15550101001"]
    assert set(doc["agents"]) == {"sales-agent", "support-agent"}
    keys = secret_commands(output)
    assert sorted(keys) == ["localCarrierOutPassword", "localDigestLinePassword"], output

    sut = deployed(tmp_path / "deploy", pulumi_env, text,
                   {"localDigestLinePassword": IN_PASSWORD, "localCarrierOutPassword": OUT_PASSWORD}, livekit_calls)  # fmt: skip
    plan_file(sut.work / "stacks" / "local.yaml")  # validates, secrets included

    def edit() -> None:
        doc["inbound_routes"]["sales"]["agent_config"]["system_instructions"] = "You are Acme sales, v2."
        sut.write(doc)

    figures = adoption_cycle(sut, livekit_calls, edit)
    # nowhere on disk either: the written file, state, the engine's logs and config (encrypted), the program copy
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.stat().st_size < 50_000_000]
    disk = "\n".join(p.read_text(errors="replace") for p in files)
    for secret in (IN_PASSWORD, OUT_PASSWORD):
        assert secret not in figures["logs"], "a password is in the up output"
        assert secret not in disk, "a password is written somewhere"
    print("first up LiveKit calls:", figures["first_up_calls"])
