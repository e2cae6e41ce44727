"""Every route of the `local` stack, called for real: sipp -> livekit-sip -> LiveKit -> the route's worker.

The module deploys stacks/local.yaml (its committed secrets included) once through the real engine, starts
one worker per agent under the stack's own agent names (no other test uses them), and places real SIP
calls: inbound through the bridge, outbound from the worker to a sipp carrier that demands digest auth.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from livekit import api

from contract.resolve import text_sha
from infra import sipp
from infra.calls import place_call
from infra.verify import TEST_CALLER, Observation, agent_attributes, observe
from localenv import engine
from localenv.carrier import Carrier
from localenv.deploy import LOCAL_PASSPHRASE, start_workers
from localenv.manager import LocalEnv
from localenv.ports import free_port_range
from localenv.process import Supervised
from localenv.reset import wipe_sip
from tests.stack_harness import REPO, StackUnderTest

pytestmark = pytest.mark.engine
SUPPORT, SALES, PARTNERS = "+15550100100", "+15550100101", "+15550100102"
WAIT = 20.0  # bound for an answer (a failure bound, not a performance assertion)
CALLS_PLACED: list[str] = []  # every real call this module places (reported at the end)


@dataclass
class Deployed:
    """The local stack as deployed for this module."""

    sut: StackUnderTest
    outputs: dict[str, Any]
    workers: dict[str, Supervised]
    carrier_port: int
    env: dict[str, str]  # for `siphon-infra` subprocesses: engine settings, LiveKit, the SIP bridge

    def config(self, key: str) -> str:
        return self.sut.stack.get_config(key).value


@pytest.fixture(scope="module")
def deployed(local_env: LocalEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    assert local_env.endpoints is not None
    wipe_sip()
    tmp = tmp_path_factory.mktemp("local-stack")
    doc = yaml.safe_load((REPO / "stacks" / "local.yaml").read_text())
    carrier_port = free_port_range(1)
    doc["outbound_trunks"]["carrier"]["address"] = f"127.0.0.1:{carrier_port}"
    penv = engine.engine_env(tmp / "state", LOCAL_PASSPHRASE, tmp / "pulumi-home")
    sut = StackUnderTest(tmp, penv, "local", doc)
    outputs = {k: v.value for k, v in sut.stack.up().outputs.items()}
    stack = sut.stack_file()
    workers = start_workers(local_env, {k: a.worker_env(stack.environment) for k, a in stack.agents.items()})
    env = {**os.environ, **penv, "SIPHON_STACKS_DIR": str(sut.work / "stacks"), "PYTHONPATH": str(REPO)}
    try:
        yield Deployed(sut, outputs, {w.name.removeprefix("worker-"): w for w in workers}, carrier_port, env)
    finally:
        killed = [w.name for w in workers if not local_env.release(w, grace=30)]
        sut.stack.destroy()
        local_env.reset_aws()
        print(f"\nreal calls placed by {Path(__file__).name}: {len(CALLS_PLACED)}")
    assert killed == [], f"workers that did not exit on SIGTERM within 30 s: {killed}"


def verify(d: Deployed, *routes: str) -> tuple[int, dict[str, str], str]:
    """Run `siphon-infra verify local` as a user would (outputs and secrets read through the Pulumi CLI)."""
    argv = [sys.executable, "-m", "infra.cli", "verify", "local", *(a for r in routes for a in ("--route", r))]
    run = subprocess.run(argv, cwd=d.sut.work, env=d.env, capture_output=True, text=True, timeout=300, check=False)
    rows = {}
    for line in run.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] not in ("route", "") and not set(cells[0]) <= {"-"}:
            rows[cells[0]] = line
            CALLS_PLACED.append(f"verify {cells[0]}")
    return run.returncode, rows, run.stdout + run.stderr


def inbound_call(
    number: str, *, headers: dict[str, str] | None = None, auth: tuple[str, str] | None = None,
    source_ip: str = "127.0.0.1",
) -> tuple[Observation, sipp.CallEnd]:  # fmt: skip
    """Place one inbound call through the bridge, wait for its own room's agent, hang up from LiveKit (BYE)."""

    async def run() -> tuple[Observation, sipp.CallEnd]:
        lk = api.LiveKitAPI()
        try:
            known = {r.name for r in (await lk.room.list_rooms(api.ListRoomsRequest())).rooms}
            call = sipp.place(os.environ["SIPHON_SIP_ADDRESS"], number, caller=TEST_CALLER, headers=headers,
                              auth=auth, source_ip=source_ip, hold_s=WAIT + 15, answer_timeout_s=8)  # fmt: skip
            CALLS_PLACED.append(number)
            seen = await observe(lk, call, known, WAIT)
            if seen.room:
                await lk.room.delete_room(api.DeleteRoomRequest(room=seen.room))
            return seen, await asyncio.to_thread(call.wait, 15)
        finally:
            await lk.aclose()

    return asyncio.run(run())


# ------------------------------------------------------------------------------------------------ inbound


def test_verify_local_passes_for_every_inbound_route_with_its_agent_and_configuration(deployed: Deployed) -> None:
    code, rows, out = verify(deployed)
    assert code == 0, out
    assert set(rows) == {"support", "sales", "partners"}, out
    for line in rows.values():
        assert "| ok" in line, line
    times = {route: float(re.search(r"\| ([\d.]+)s", line).group(1)) for route, line in rows.items()}
    print(f"\nverify local, INVITE to agent answered: {times}")


def test_a_real_sip_header_selects_the_routes_header_override(deployed: Deployed) -> None:
    stack = deployed.sut.stack_file()
    gold_greeting = stack.inbound_routes["support"].header_overrides[0].values["gold"].greeting_instructions
    seen, end = inbound_call(SUPPORT, headers={"X-Customer-Tier": "gold"})
    assert seen.attributes, seen
    assert seen.attributes["siphon.agent_name"] == "support-agent"
    assert seen.attributes["siphon.greeting_instructions_sha"] == text_sha(gold_greeting)
    assert "greeting_instructions=call" in seen.attributes["siphon.sources"]
    assert end.completed, end

    french, end = inbound_call(SALES, headers={"X-Language": "fr"})
    assert french.attributes, french
    assert (french.attributes["siphon.agent_name"], french.attributes["siphon.tts"]) == (
        "sales-agent",
        "local/espeak-ng:fr",
    )
    assert end.completed, end


def test_the_bridge_refuses_an_invite_from_outside_the_trunks_allowed_addresses(deployed: Deployed) -> None:
    """`main` admits 127.0.0.1/32 only; 127.0.0.2 is another source address on loopback."""
    seen, end = inbound_call(SUPPORT, source_ip="127.0.0.2")
    assert not seen.room, f"a call from 127.0.0.2 reached room {seen.room}"
    assert not end.completed and end.reason, end


def test_a_digest_auth_trunk_refuses_an_invite_without_credentials_and_answers_one_with_them(
    deployed: Deployed,
) -> None:
    trunk = deployed.sut.stack_file().inbound_trunks["partners"]
    refused, end = inbound_call(PARTNERS)
    assert not refused.room, f"an unauthenticated call reached room {refused.room}"
    assert not end.completed and ("401" in end.reason or "407" in end.reason), end

    wrong, end = inbound_call(PARTNERS, auth=(trunk.auth_username, "not-the-password"))
    assert not wrong.room and not end.completed, (wrong, end)

    password = deployed.config(trunk.auth_password_secret)
    answered, end = inbound_call(PARTNERS, auth=(trunk.auth_username, password))
    assert answered.attributes, answered
    assert answered.attributes["siphon.route"] == "partners"
    assert answered.attributes["siphon.agent_name"] == "support-agent"
    assert end.completed, end


# ------------------------------------------------------------------------------------------------ outbound


def test_place_call_dials_the_carrier_with_digest_auth_and_the_agent_answers_with_the_call_overrides(
    deployed: Deployed,
) -> None:
    trunk = deployed.sut.stack_file().outbound_trunks["carrier"]
    carrier = Carrier(deployed.carrier_port, (trunk.auth_username, deployed.config(trunk.auth_password_secret))).start()
    routes = deployed.outputs["outbound_routes"]
    call_id = f"local-{int(time.time())}"
    try:
        first = place_call(routes, "reminders", "+15550100999", call_id=call_id,
                           overrides={"greeting_instructions": "Hi Sam, about tomorrow"})  # fmt: skip
        CALLS_PLACED.append("outbound reminders")

        attrs = asyncio.run(agent_attributes(first.room, WAIT))
        assert attrs.get("siphon.call_status") == "active", (attrs, carrier.messages()[-3000:])
        assert attrs["siphon.agent_name"] == "reminders-agent"
        assert attrs["siphon.direction"] == "outbound"
        assert attrs["siphon.called_number"] == "+15550100999"
        assert attrs["siphon.greeting_instructions_sha"] == text_sha("Hi Sam, about tomorrow")

        again = place_call(routes, "reminders", "+15550100999", call_id=call_id)
        assert again.already_placed and again.dispatch_id == first.dispatch_id
        time.sleep(1.0)  # a second dial would reach the carrier within this
        assert len(carrier.invites()) == 1, carrier.invites()
        assert "Authorization: Digest" in carrier.messages()

        async def hang_up() -> None:
            lk = api.LiveKitAPI()
            try:
                await lk.room.delete_room(api.DeleteRoomRequest(room=first.room))
            finally:
                await lk.aclose()

        asyncio.run(hang_up())
        assert carrier.wait(15) == 0, carrier.messages()[-3000:]  # the bridge hung up with BYE, the carrier said OK
    finally:
        carrier.close()


# ------------------------------------------------------------------------------------------------ verify fails


def test_verify_fails_only_the_route_whose_rule_was_repointed_and_names_what_was_dispatched(
    deployed: Deployed,
) -> None:
    rule_id = deployed.outputs["routing_table"][SALES]["rule_id"]

    async def point_sales_at(agent_name: str) -> None:
        lk = api.LiveKitAPI()
        try:
            rule = (await lk.sip.list_dispatch_rule(api.ListSIPDispatchRuleRequest(dispatch_rule_ids=[rule_id]))).items[
                0
            ]
            rule.room_config.agents[0].agent_name = agent_name
            await lk.sip.update_dispatch_rule(rule_id, rule)
        finally:
            await lk.aclose()

    asyncio.run(point_sales_at("ghost-agent"))
    try:
        code, rows, out = verify(deployed)
    finally:
        asyncio.run(point_sales_at("sales-agent"))
    assert code == 1, out
    assert "FAIL" in rows["sales"] and "'ghost-agent'" in rows["sales"] and "declared 'sales-agent'" in rows["sales"], (
        out
    )
    assert "| ok" in rows["support"] and "| ok" in rows["partners"], out


def test_verify_fails_only_the_route_whose_worker_is_stopped(deployed: Deployed, local_env: LocalEnv) -> None:
    worker = deployed.workers["sales-agent"]
    assert worker.stop(grace=30), "the worker should exit on SIGTERM"
    try:
        code, rows, out = verify(deployed, "sales", "support")
    finally:
        worker.start()
        worker.wait_healthy(60)
    assert code == 1, out
    assert "FAIL" in rows["sales"] and "no worker of that name took it" in rows["sales"], out
    assert "| ok" in rows["support"], out
