"""`./dev rehearse <env>`: the repository's dev and prod stack files deployed to a throwaway local environment and
called for real; seeded mistakes in a copy of dev fail the rehearsal, naming them; Ctrl-C leaves nothing behind.

Each rehearsal runs as the command does (``python -m localenv.rehearse``, in a subprocess of its own) and starts
its own services: it does not use the session's shared environment.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.sipp import dtmf_pcaps, scenario
from infra.stack.errors import StackFileError
from infra.stack.plan import plan_file
from localenv.manager import Endpoints
from localenv.rehearse import OUTSIDER_ADDRESS, _own_processes, model_problems

pytestmark = pytest.mark.engine
REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 280  # seconds for one whole rehearsal (a failure bound)


def rehearse(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "localenv.rehearse", *args]
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT, check=False)


def call_rows(report: str) -> list[list[str]]:
    """The Calls table of a report: kind, route, number, call, expected, observed, answered in, result."""
    section = report.split("## Calls", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()]
    return [r for r in rows if len(r) == 8 and r[0] not in ("kind", "---")]


def copy_of_dev(tmp_path: Path, change: Any) -> Path:
    """A copy of stacks/dev.yaml (and its Pulumi config) with ``change(doc)`` applied."""
    doc = yaml.safe_load((REPO / "stacks" / "dev.yaml").read_text())
    change(doc)
    path = tmp_path / "dev.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    (tmp_path / "Pulumi.dev.yaml").write_text((REPO / "stacks" / "Pulumi.dev.yaml").read_text())
    return path


def assert_passes_with_every_number_and_route(environment: str) -> str:
    run = rehearse(environment)
    assert run.returncode == 0, run.stdout + run.stderr
    report = run.stdout
    assert f"# Rehearsal of `{environment}` ({environment}.yaml): PASS" in report
    doc = yaml.safe_load((REPO / "stacks" / f"{environment}.yaml").read_text())
    rows = call_rows(report)
    inbound = {(r[1], r[2]) for r in rows if r[0] == "inbound" and r[7] == "ok"}
    declared = {(key, n) for key, route in doc["inbound_routes"].items() for n in route["numbers"]}
    assert inbound == declared, report
    refused = {(r[1], r[2]) for r in rows if r[0] == "refusal" and r[7] == "ok" and OUTSIDER_ADDRESS in r[3]}
    assert refused == declared, report  # every trunk of the file restricts its source addresses
    headers = {r[1] for r in rows if r[0] == "header" and r[7] == "ok"}
    assert headers == {k for k, r in doc["inbound_routes"].items() if r.get("header_overrides")}, report
    outbound = {r[1]: r for r in rows if r[0] == "outbound"}
    assert set(outbound) == set(doc["outbound_routes"]), report
    for key, row in outbound.items():
        caller = doc["outbound_routes"][key]["caller_ids"][0]
        assert row[7] == "ok" and f"from {caller}" in row[5], report
    for where in ("environment", "allowed_addresses", "auth_password_secret", "address", "ecs", "defaults.llm"):
        assert re.search(rf"^\| \S*{re.escape(where)} \|", report, re.M), (where, report)
    timings = dict(re.findall(r"^- (start-up|deploy|calls|teardown|total): ([\d.]+)s$", report, re.M))
    assert set(timings) == {"start-up", "deploy", "calls", "teardown", "total"}, report
    print(f"\nrehearse {environment} timings: {timings}")
    return report


# ------------------------------------------------------------------------------------------------ the caller's PIN


def test_a_caller_keying_in_a_pin_offers_telephone_events_and_sends_one_new_event_per_digit() -> None:
    xml = scenario("+15005550006", dtmf="43#")
    assert "a=rtpmap:101 telephone-event/8000" in xml and "RTP/AVP 0 101" in xml
    assert [f'play_pcap_audio="dtmf_{i}.pcap"' in xml for i in range(3)] == [True] * 3
    events, stamps = [], []
    for pcap in dtmf_pcaps("43#"):
        rtp = pcap[24 + 16 + 42 :]  # the first packet, after the pcap headers and Ethernet, IPv4 and UDP
        events.append(rtp[12])
        stamps.append(int.from_bytes(rtp[4:8], "big"))
    assert events == [4, 3, 11]
    assert len(set(stamps)) == 3  # the bridge takes a repeated timestamp for the same key press
    assert "telephone-event" not in scenario("+15005550006")


# ------------------------------------------------------------------------------------------------ the files


def test_rehearse_dev_passes_and_calls_every_number_and_route_of_the_file() -> None:
    assert_passes_with_every_number_and_route("dev")


def test_rehearse_prod_passes_and_calls_every_number_and_route_of_the_file() -> None:
    report = assert_passes_with_every_number_and_route("prod")
    assert "| protect | True | false (a throwaway server) |" in report


# ------------------------------------------------------------------------------------------------ seeded mistakes


def test_a_wrong_outbound_caller_id_is_caught_by_validate_and_the_rehearsal_stops_there_naming_it(
    tmp_path: Path,
) -> None:
    """validate catches this one (a caller ID that is not the trunk's): the rehearsal fails at its first step."""

    def wrong_caller_id(doc: dict[str, Any]) -> None:
        doc["outbound_routes"]["appointment-reminders"]["caller_ids"] = ["+14155550199"]

    path = copy_of_dev(tmp_path, wrong_caller_id)
    with pytest.raises(StackFileError, match=r"caller_ids.0: \+14155550199 is not one of trunk"):
        plan_file(path, secrets=False)
    run = rehearse("dev", "--file", str(path))
    assert run.returncode == 1, run.stdout + run.stderr
    assert "FAIL" in run.stdout and "outbound_routes.appointment-reminders.caller_ids.0" in run.stdout, run.stdout
    assert "+14155550199 is not one of trunk 'carrier-out'" in run.stdout, run.stdout
    assert "## Calls" not in run.stdout  # nothing was deployed or called


@pytest.mark.parametrize(
    ("tts", "keys", "named"),
    [
        ("fal/voice-1", True, "unknown tts provider 'fal'"),
        ("cartesia/sonic-2", False, "cartesia/sonic-2 needs CARTESIA_API_KEY, which the workers are not given"),
    ],
    ids=["unknown-provider", "credential-not-given"],
)
def test_an_unbuildable_model_is_caught_by_validate_and_the_rehearsal_stops_there_naming_it(
    tmp_path: Path, tts: str, keys: bool, named: str
) -> None:
    """validate catches these (an unknown provider, a credential the workers are not given): nothing is deployed."""

    def seed(doc: dict[str, Any]) -> None:
        doc["agents"]["sales-agent"]["defaults"]["tts"] = tts
        if not keys:
            doc["agents"]["sales-agent"]["ecs"]["provider_key_secrets"].pop("CARTESIA_API_KEY")

    path = copy_of_dev(tmp_path, seed)
    with pytest.raises(StackFileError, match=re.escape(named)):
        plan_file(path, secrets=False)
    run = rehearse("dev", "--file", str(path))
    assert run.returncode == 1, run.stdout + run.stderr
    assert "agents.sales-agent.defaults.tts" in run.stdout and named in run.stdout, run.stdout
    assert "## Calls" not in run.stdout


def test_a_model_whose_plugin_the_environment_lacks_is_named_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """validate cannot see this one (it reads no installed packages): the rehearsal's own check names it."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "livekit.plugins.cartesia" else real(name, *a))  # fmt: skip
    doc = yaml.safe_load((REPO / "stacks" / "dev.yaml").read_text())
    problems = {where: why for where, _, why in model_problems(doc) if why != "buildable"}
    assert set(problems) == {f"agents.{a}.defaults.tts" for a in doc["agents"]}, problems
    assert all("plugin livekit.plugins.cartesia not installed" in why for why in problems.values()), problems


def test_a_header_the_trunk_does_not_map_still_selects_its_layer_and_a_pin_route_answers_only_with_its_pin(
    tmp_path: Path,
) -> None:
    """Two seeded changes to dev that validate passes, rehearsed once; both work, and the rehearsal proves it.

    A header override on a header the carrier trunk does not map (X-Language): this mistake cannot reach customers,
    because the program adds the trunk mapping itself (infra/stack/model.py, `StackFile.header_mappings`); the call with the header shows the
    layer. A PIN on sales-eu: the call keying in the PIN (RFC 4733 events) is answered as planned, the call keying in
    only # reaches no agent.
    """

    def seed(doc: dict[str, Any]) -> None:
        doc["inbound_routes"]["sales-us"]["header_overrides"] = [
            {"header": "X-Language", "values": {"fr": {"greeting_instructions": "Bonjour, ici Example."}}}
        ]
        doc["inbound_routes"]["sales-eu"]["pin"] = "4321"

    path = copy_of_dev(tmp_path, seed)
    assert "X-Language" not in yaml.safe_load(path.read_text())["inbound_trunks"]["carrier"]["headers_to_attributes"]
    plan_file(path, secrets=False)  # validate passes both
    run = rehearse("dev", "--file", str(path))
    report = run.stdout
    assert run.returncode == 0, report + run.stderr
    rows = call_rows(report)
    header = [r for r in rows if r[0] == "header" and r[1] == "sales-us"]
    assert header and header[0][7] == "ok" and "X-Language: fr" in header[0][3], report
    with_pin = [r for r in rows if r[0] == "inbound" and r[1] == "sales-eu"]
    assert with_pin and "keys in 4321#" in with_pin[0][3] and with_pin[0][7] == "ok", report
    without = [r for r in rows if r[0] == "pin" and r[1] == "sales-eu"]
    assert without and without[0][7] == "ok" and "no agent answered" in without[0][5], report


def test_a_pin_route_sharing_its_number_with_an_open_route_is_refused_before_anything_is_deployed(
    tmp_path: Path,
) -> None:
    """The author means +14155550102 to need a PIN (sales-eu) but also gives the number an open route. The
    rehearsal used to find it on real calls (a call keying in only # reached the open route); validate now refuses
    it at the PIN, naming the open route, by LiveKit's own ranking (``test_livekit_ranks_...`` below shows that
    ranking on the real bridge), and the rehearsal stops at validate."""

    def seed(doc: dict[str, Any]) -> None:
        doc["inbound_routes"]["sales-eu"]["pin"] = "4321"
        doc["inbound_routes"]["sales-eu-open"] = {"numbers": ["+14155550102"], "agent": "sales-agent"}

    path = copy_of_dev(tmp_path, seed)
    with pytest.raises(StackFileError) as refused:
        plan_file(path, secrets=False)
    (problem,) = [p for p in refused.value.problems if p.field == "inbound_routes.sales-eu.pin"]
    assert "'sales-eu-open'" in problem.message and "presses # alone" in problem.message, problem
    run = rehearse("dev", "--file", str(path))
    assert run.returncode == 1, run.stdout + run.stderr
    assert "inbound_routes.sales-eu.pin" in run.stdout + run.stderr


def test_livekit_ranks_a_pin_rule_first_and_gives_a_caller_keying_only_hash_to_the_open_rule(
    clean_livekit: Endpoints,
) -> None:
    """The ranking validate checks PIN routes with (``infra.livekit.dispatch_rule.rule_priority``), on the real
    bridge: with a PIN rule and an open rule on one trunk and number, a caller who keys in the PIN reaches the PIN
    rule's room, and one who keys in only # reaches the open rule's room."""
    import asyncio

    from livekit import api

    from infra import sipp
    from infra.verify import observe

    ep = clean_livekit
    number = "+15550100377"

    async def run() -> dict[str, str]:
        lk = api.LiveKitAPI(ep.livekit_url, ep.api_key, ep.api_secret)
        try:
            trunk = await lk.sip.create_inbound_trunk(api.CreateSIPInboundTrunkRequest(trunk=api.SIPInboundTrunkInfo(
                name="pin-ranking", numbers=[number], allowed_addresses=["127.0.0.1/32"])))  # fmt: skip
            rules = {}
            for kind, pin in (("pin", "4321"), ("open", "")):
                rule = await lk.sip.create_dispatch_rule(api.CreateSIPDispatchRuleRequest(
                    dispatch_rule=api.SIPDispatchRuleInfo(name=f"{kind}-ranking", trunk_ids=[trunk.sip_trunk_id],
                        numbers=[number], rule=api.SIPDispatchRule(dispatch_rule_individual=api.SIPDispatchRuleIndividual(
                            room_prefix=f"{kind}-ranking", pin=pin)))))  # fmt: skip
                rules[rule.sip_dispatch_rule_id] = kind
            reached = {}
            for keys in ("4321#", "#"):
                call = sipp.place(ep.sip_address, number, caller="+15550109001", dtmf=keys, hold_s=12)
                seen = await observe(lk, call, set(), 10)
                reached[keys] = rules.get(seen.rule_id, seen.rule_id or "no room")
                await asyncio.to_thread(call.wait, 30)
            return reached
        finally:
            await lk.aclose()

    assert asyncio.run(run()) == {"4321#": "pin", "#": "open"}


# ------------------------------------------------------------------------------------------------ Ctrl-C


def _bindable(port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.parametrize("during", ["deploying", "calling"], ids=["during-the-deploy", "during-a-call"])
def test_one_ctrl_c_leaves_no_process_port_or_run_folder_behind(tmp_path: Path, during: str) -> None:
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "localenv.rehearse", "dev", "--run-dir", str(run_dir)]
    with (tmp_path / "stderr").open("w") as err:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while during not in (tmp_path / "stderr").read_text():
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "stderr").read_text()
        time.sleep(0.1)
    services = run_dir / "services"
    ports = {
        int(p)
        for name in ("livekit-server.yaml", "livekit-sip.yaml")
        for p in re.findall(r'"(?:port|sip_port|health_port|tcp_port|udp_port)": (\d+)', (services / name).read_text())
    }
    assert len(ports) >= 4, ports
    time.sleep(2.0)  # the engine is running `pulumi up`, or sipp is calling and a worker answering
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends: the whole foreground process group
    out, _ = proc.communicate(timeout=120)
    stderr = (tmp_path / "stderr").read_text()
    assert proc.returncode == 130, out + stderr
    assert "everything was torn down" in stderr, stderr
    assert not run_dir.exists(), list(run_dir.rglob("*"))
    assert _own_processes(str(run_dir)) == [], "processes of the rehearsal still run"
    left = subprocess.run(["pgrep", "-f", str(run_dir)], capture_output=True, text=True, check=False).stdout.split()
    assert left == [], left
    busy = [p for p in ports if not _bindable(p, socket.SOCK_STREAM)]
    assert busy == [], f"ports still bound: {busy}"
