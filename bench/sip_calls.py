"""Real calls through the SIP bridge: time to answer for the packaged worker vs a bare livekit-agents worker.

One run, one local environment (Redis, livekit-server, livekit-sip): two workers, each behind its own
trunk number and dispatch rule; sipp places every call. Time to answer is what the caller experiences:
from the INVITE sent to the 200 OK (livekit-sip answers only once the agent's audio is in the room, so
this includes dispatch, job start, metadata, configuration and the agent's first track). Reports:

- sequential calls: p50 / p95 of N calls;
- bursts of 10, 20, 40 simultaneous INVITEs: answered / refused (a SIP status: the bridge's 486 once the
  trunk's 30 s ringing timeout passes) / lost (neither), p50 / p95 / max;
and every figure as the ratio ours / baseline. Then abandonment: N dispatches whose caller never joins,
the time until the packaged worker holds no job, and the next call.

    PATH=$(python3 -m localenv.tools path):$PATH .venv/bin/python -m bench.sip_calls [-n 30] [--bursts 10 20 40]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from google.protobuf.duration_pb2 import Duration
from livekit import api

from bench.worker_dispatch import pct
from contract.metadata import AgentConfig, RouteMetadata
from infra import sipp
from localenv.manager import Endpoints, LocalEnv, http_ok
from localenv.ports import free_tcp_port

ROOT = Path(__file__).resolve().parent.parent
CAPACITY = 50  # per worker, above the largest burst: the bench measures answer time, not overflow
HOLD = 3.0  # seconds each answered call is held before the caller hangs up
RINGING = 30  # the trunks' ringing_timeout (s): a call not answered by then is refused by the bridge (486)


async def _route(lk: api.LiveKitAPI, name: str, number: str, agent: str, metadata: str) -> None:
    info = api.SIPInboundTrunkInfo(
        name=f"bench-{name}", numbers=[number], allowed_addresses=["127.0.0.1/32"],
        ringing_timeout=Duration(seconds=RINGING),
    )  # fmt: skip
    trunk = await lk.sip.create_inbound_trunk(api.CreateSIPInboundTrunkRequest(trunk=info))
    rule = api.SIPDispatchRuleInfo(
        name=f"bench-{name}",
        trunk_ids=[trunk.sip_trunk_id],
        rule=api.SIPDispatchRule(dispatch_rule_individual=api.SIPDispatchRuleIndividual(room_prefix=name)),
        room_config=api.RoomConfiguration(agents=[api.RoomAgentDispatch(agent_name=agent, metadata=metadata)]),
    )
    await lk.sip.create_dispatch_rule(api.CreateSIPDispatchRuleRequest(dispatch_rule=rule))


@contextmanager
def workers(env: LocalEnv) -> Iterator[dict[str, int]]:
    """Both workers, started and warm; their HTTP ports by name."""
    ep = env.endpoints
    assert ep is not None
    started, ports = [], {}
    for name, argv, extra in (
        ("ours", [sys.executable, "-m", "worker.main", "start"],
         {"SIPHON_AGENT_NAME": "bench-ours", "SIPHON_ENVIRONMENT": "local", "SIPHON_MAX_JOBS": str(CAPACITY)}),
        ("baseline", [sys.executable, "-m", "bench.baseline_worker", "start"],
         {"BASELINE_AGENT_NAME": "bench-baseline", "BASELINE_MAX_JOBS": str(CAPACITY)}),
    ):  # fmt: skip
        port = free_tcp_port()
        penv = {**os.environ, **ep.env(), **extra, "SIPHON_HTTP_PORT": str(port), "BASELINE_HTTP_PORT": str(port),
                "PYTHONPATH": str(ROOT)}  # fmt: skip
        svc = env.spawn(f"worker-{name}", argv, lambda port=port: http_ok(port), env=penv, cwd=ROOT)  # type: ignore[misc]
        svc.wait_healthy(60)
        started.append(svc)
        ports[name] = port
    time.sleep(3)  # idle job processes warm up
    try:
        yield ports
    finally:
        for svc in started:
            env.release(svc, grace=30)


def call_once(ep: Endpoints, number: str) -> sipp.SippCall:
    return sipp.place(ep.sip_address, number, caller="+15005550006", hold_s=HOLD, answer_timeout_s=RINGING + 10)


def calls(ep: Endpoints, number: str, n: int, *, together: bool) -> tuple[list[float], int, int]:
    """Place n calls (one after another, or all at once): answer times of the answered ones, the number refused
    with a SIP status (the bridge's 486 after the ringing timeout), and the number lost (neither)."""
    if together:
        placed = [call_once(ep, number) for _ in range(n)]
        ends = [c.wait(HOLD + 60) for c in placed]
    else:
        ends = [call_once(ep, number).wait(HOLD + 60) for _ in range(n)]
    times = [e.answered_after for e in ends if e.answered_after is not None]
    status = re.compile(r"\b[3-6]\d\d\b")  # sipp's reason names the SIP status of a refusal ("refused: 486 ...")
    refused = sum(1 for e in ends if e.answered_after is None and status.search(e.reason))
    lost = collections.Counter(e.reason[:80] for e in ends if e.answered_after is None and not status.search(e.reason))
    if lost:
        print(f"  lost calls to {number}: {dict(lost)}", flush=True)
    return times, refused, n - len(times) - refused


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=30, help="sequential calls per worker")
    parser.add_argument("--bursts", type=int, nargs="*", default=[10, 20, 40])
    parser.add_argument("--abandoned", type=int, default=30, help="dispatches whose caller never joins")
    args = parser.parse_args()
    numbers = {"ours": "+15550300001", "baseline": "+15550300002"}
    with tempfile.TemporaryDirectory() as tmp, LocalEnv.start(Path(tmp)) as env:
        ep = env.endpoints
        assert ep is not None
        os.environ.update(ep.env())
        route = RouteMetadata(route="bench", direction="inbound", agent_config=AgentConfig(greeting_instructions="Hi"))

        async def setup() -> None:
            lk = api.LiveKitAPI()
            try:
                await _route(lk, "ours", numbers["ours"], "bench-ours", route.to_json())
                await _route(lk, "baseline", numbers["baseline"], "bench-baseline", "")
            finally:
                await lk.aclose()

        asyncio.run(setup())
        with workers(env) as ports:
            for who in numbers:  # one call each before measuring: the first job of a fresh worker pays extra
                calls(ep, numbers[who], 1, together=False)
            rows = []
            for label, n, together in [("sequential", args.n, False), *((f"burst {b}", b, True) for b in args.bursts)]:
                result = {}
                for who in ("baseline", "ours"):  # same order every time; the baseline goes first
                    result[who] = calls(ep, numbers[who], n, together=together)
                    time.sleep(2)
                rows.append((label, n, result))
                print(_row(label, n, result), flush=True)
            log = env.run_dir / "worker-ours.log"
            print(abandonment(ep, ports["ours"], log, numbers["ours"], args.abandoned), flush=True)
        print(_in_job(env.run_dir / "worker-ours.log"))
    print("\n" + _table(rows))
    return 0


def _active_jobs(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/worker", timeout=5) as resp:
        return int(json.loads(resp.read()).get("active_jobs", 0))  # proto JSON leaves out zero


def abandonment(ep: Endpoints, port: int, log: Path, number: str, n: int) -> str:
    """n dispatches whose caller never joins (hung up while it rang): how long until the packaged worker holds
    no job again, and whether the next call is answered."""

    async def dispatch() -> None:
        lk = api.LiveKitAPI()
        try:
            await asyncio.gather(*(
                lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(
                    agent_name="bench-ours", room=f"abandoned-{i}-{time.time_ns()}", metadata=""))
                for i in range(n)
            ))  # fmt: skip
        finally:
            await lk.aclose()

    def ended() -> int:
        text = log.read_text(errors="replace")
        return len(re.findall(r'"message": "job ended".*"reason": "no caller joined within', text))

    before = ended()
    started = time.monotonic()
    asyncio.run(dispatch())
    peak = 0
    while time.monotonic() - started < 120:
        jobs = _active_jobs(port)
        peak = max(peak, jobs)
        if jobs == 0 and ended() - before >= n:
            break
        time.sleep(0.2)
    cleared, left = time.monotonic() - started, _active_jobs(port)
    times, refused, lost = calls(ep, number, 1, together=False)
    answer = f"answered in {times[0]:.2f} s" if times else f"NOT answered (refused {refused}, lost {lost})"
    return (
        f"abandonment (ours): {n} dispatches without a caller, at most {peak} jobs at once, {ended() - before} "
        f"ended saying why, {left} active after {cleared:.1f} s; the next call {answer}"
    )


def _in_job(log: Path) -> str:
    """Where the packaged worker's time goes inside a job, from its own log (p50 / p95 in ms)."""
    fields: dict[str, list[float]] = {"connect_ms": [], "resolve_ms": [], "from_caller_ms": [], "ready_ms": []}
    for line in log.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        for key, values in fields.items():
            if key in rec:
                values.append(float(rec[key]))
    parts = [f"{k} p50 {pct(v, 50):.1f} p95 {pct(v, 95):.1f}" for k, v in fields.items() if v]
    return "in-job (ours, ms): " + "; ".join(parts)


Outcome = tuple[list[float], int, int]  # answer times, refused with a SIP status, lost


def _fmt(times: list[float], refused: int, lost: int) -> dict[str, float]:
    nan = float("nan")
    return {
        "answered": len(times),
        "refused": refused,
        "lost": lost,
        "p50": pct(times, 50),
        "p95": pct(times, 95),
        "max": max(times) if times else nan,
    }


def _cells(f: dict[str, float]) -> str:
    return f"{f['answered']:.0f}/{f['refused']:.0f}/{f['lost']:.0f} | {f['p50']:.2f} / {f['p95']:.2f} / {f['max']:.2f}"


def _row(label: str, n: int, result: dict[str, Outcome]) -> str:
    o, b = _fmt(*result["ours"]), _fmt(*result["baseline"])
    return f"{label} (n={n}): ours {_cells(o)} | baseline {_cells(b)} | p50 x{o['p50'] / b['p50']:.2f}"


def _table(rows: list[tuple[str, int, dict[str, Outcome]]]) -> str:
    out = [
        "| calls | ours answered/refused/lost | ours p50 / p95 / max (s) | baseline answered/refused/lost "
        "| baseline p50 / p95 / max (s) | p50 ratio | p95 ratio |",
        "|" + "---|" * 7,
    ]
    for label, _, result in rows:
        o, b = _fmt(*result["ours"]), _fmt(*result["baseline"])
        out.append(f"| {label} | {_cells(o)} | {_cells(b)} | {o['p50'] / b['p50']:.2f} | {o['p95'] / b['p95']:.2f} |")
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
