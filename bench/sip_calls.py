"""Real calls through the SIP bridge: time to answer for the packaged worker vs a livekit-agents baseline.

Baselines (``--against``): ``baseline``, a bare worker that publishes a silent track and does not listen
(``bench/baseline_worker.py``); ``stock``, the voice agent a user would write with livekit-agents alone, on the
same offline models, capacity and load function (``bench/stock_agent.py``).

One run, one local environment (Redis, livekit-server, livekit-sip): each worker behind its own trunk
number and dispatch rule; sipp places every call. Time to answer is what the caller experiences:
from the INVITE sent to the 200 OK (livekit-sip answers only once the agent's audio is in the room, so
this includes dispatch, job start, metadata, configuration and the agent's first track). Reports:

- sequential calls: p50 / p95 of N calls;
- bursts of 10, 20, 40 simultaneous INVITEs: answered / refused (a SIP status: the bridge's 486 once the
  trunk's 30 s ringing timeout passes) / lost (neither), p50 / p95 / max;
and every figure as the ratio ours / baseline. Then abandonment: N dispatches whose caller never joins,
the time until the packaged worker holds no job, and the next call.

Against ``stock``: ``--rounds`` bursts of ``--burst-size`` per worker, the order rotating each round, each
burst from idle (every worker reports 0 active jobs and its processes are quiet); per burst and in total:
answered / refused / lost, p50 / p95 / max, CPU per answered call of the job processes (read from /proc: the
calls' processes and the idle ones that replace them) and of the main process; then each worker's timeline
from its log (job process initialization, joining the room, agent ready) and the ratios to the stock agent.

    PATH=$(python3 -m localenv.tools path):$PATH .venv/bin/python -m bench.sip_calls [-n 30] [--bursts 10 20 40]
    PATH=$(python3 -m localenv.tools path):$PATH .venv/bin/python -m bench.sip_calls --against stock [--rounds 5] \
        [--ours-variant LABEL:VAR=VALUE]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


WORKERS = {
    "ours": ([sys.executable, "-m", "worker.main", "start"],
             {"SIPHON_AGENT_NAME": "bench-ours", "SIPHON_ENVIRONMENT": "local", "SIPHON_MAX_JOBS": str(CAPACITY)}),
    "baseline": ([sys.executable, "-m", "bench.baseline_worker", "start"],
                 {"BASELINE_AGENT_NAME": "bench-baseline", "BASELINE_MAX_JOBS": str(CAPACITY)}),
    "stock": ([sys.executable, "-m", "bench.stock_agent", "start"],
              {"STOCK_AGENT_NAME": "bench-stock", "STOCK_MAX_JOBS": str(CAPACITY)}),
}  # fmt: skip
"""Each worker's command and settings: the same capacity and load function (jobs / capacity) for all."""
NUMBERS = {"ours": "+15550300001", "baseline": "+15550300002", "stock": "+15550300003"}


@dataclass
class Running:
    """A started worker: its HTTP port (``/worker`` reports its active jobs) and its process id."""

    port: int
    pid: int


@contextmanager
def workers(env: LocalEnv, names: list[str]) -> Iterator[dict[str, Running]]:
    """The named workers, started and warm."""
    ep = env.endpoints
    assert ep is not None
    started, running = [], {}
    for name in names:
        argv, extra = WORKERS[name]
        port = free_tcp_port()
        penv = {**os.environ, **ep.env(), **extra, "PYTHONPATH": str(ROOT),
                **{f"{p}_HTTP_PORT": str(port) for p in ("SIPHON", "BASELINE", "STOCK")}}  # fmt: skip
        svc = env.spawn(f"worker-{name}", argv, lambda port=port: http_ok(port), env=penv, cwd=ROOT)  # type: ignore[misc]
        svc.wait_healthy(60)
        started.append(svc)
        assert svc.proc is not None
        running[name] = Running(port, svc.proc.pid)
    time.sleep(3)  # idle job processes warm up
    try:
        yield running
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
    if refused:
        why = collections.Counter(e.reason[:80] for e in ends if e.answered_after is None and status.search(e.reason))
        print(f"  refused calls to {number}: {dict(why)}", flush=True)
    return times, refused, n - len(times) - refused


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", choices=["baseline", "stock"], default="baseline",
                        help="baseline: the non-listening worker (sequential, bursts, abandonment); "
                             "stock: a stock livekit-agents voice agent, alternating bursts")  # fmt: skip
    parser.add_argument("-n", type=int, default=30, help="sequential calls per worker")
    parser.add_argument("--bursts", type=int, nargs="*", default=[10, 20, 40])
    parser.add_argument("--abandoned", type=int, default=30, help="dispatches whose caller never joins")
    parser.add_argument("--burst-size", type=int, default=20, help="stock: simultaneous INVITEs per burst")
    parser.add_argument("--rounds", type=int, default=5, help="stock: bursts per worker")
    parser.add_argument("--ours-variant", action="append", default=[], metavar="LABEL:VAR=VALUE[,VAR=VALUE]",
                        help="stock: also run the packaged worker with these settings, as ours-LABEL (what a "
                             "setting buys, in the same run), e.g. idle2:SIPHON_NUM_IDLE_PROCESSES=2")  # fmt: skip
    args = parser.parse_args()
    names = ["ours", args.against, *(_variant(v) for v in args.ours_variant)]
    with tempfile.TemporaryDirectory() as tmp, LocalEnv.start(Path(tmp)) as env:
        ep = env.endpoints
        assert ep is not None
        os.environ.update(ep.env())
        route = RouteMetadata(route="bench", direction="inbound", agent_config=AgentConfig(greeting_instructions="Hi"))

        async def setup() -> None:
            lk = api.LiveKitAPI()
            try:
                for who in names:
                    ours = who.startswith("ours")
                    await _route(lk, who, NUMBERS[who], f"bench-{who}", route.to_json() if ours else "")
            finally:
                await lk.aclose()

        asyncio.run(setup())
        with workers(env, names) as running:
            for who in names:  # one call each before measuring: the first job of a fresh worker pays extra
                calls(ep, NUMBERS[who], 1, together=False)
            if args.against == "stock":
                table = stock_rounds(ep, running, names, args.burst_size, args.rounds)
            else:
                table = baseline_rows(ep, running, env.run_dir / "worker-ours.log", args)
        for who in names:
            print(_in_job(who, env.run_dir / f"worker-{who}.log"))
        kept = ROOT / ".run" / "bench-sip-calls"  # the run's logs (workers, servers, bridge) outlive it, for a look
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(env.run_dir, kept, ignore=shutil.ignore_patterns("*.sock", "dump.rdb"))
        print(f"logs: {kept}")
    print("\n" + table)
    return 0


def baseline_rows(ep: Endpoints, running: dict[str, Running], log: Path, args: argparse.Namespace) -> str:
    """Sequential calls and bursts, the non-listening baseline first each time; then abandonment."""
    rows = []
    for label, n, together in [("sequential", args.n, False), *((f"burst {b}", b, True) for b in args.bursts)]:
        result = {}
        for who in ("baseline", "ours"):  # same order every time; the baseline goes first
            result[who] = calls(ep, NUMBERS[who], n, together=together)
            time.sleep(2)
        rows.append((label, n, result))
        print(_row(label, n, result), flush=True)
    print(abandonment(ep, running["ours"].port, log, NUMBERS["ours"], args.abandoned), flush=True)
    return _table(rows)


TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float, float] | None:
    """(parent pid, own CPU s, reaped children's CPU s) of a process, from /proc; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return int(fields[1]), (utime + stime) / TICK, (cutime + cstime) / TICK


def worker_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds so far of a worker: (its main process, its job processes), the second counting every process
    below the main one, living (own CPU plus their reaped children) or reaped (in their parent's count)."""
    stats = {int(d): st for d in os.listdir("/proc") if d.isdigit() and (st := _stat(int(d))) is not None}
    children: dict[int, list[int]] = collections.defaultdict(list)
    for child, (parent, _, _) in stats.items():
        children[parent].append(child)
    below, todo = 0.0, list(children[pid])
    while todo:
        p = todo.pop()
        below += stats[p][1] + stats[p][2]
        todo.extend(children[p])
    main = stats.get(pid, (0, 0.0, 0.0))
    return main[1], below + main[2]


def settle(running: dict[str, Running], timeout: float = 90) -> None:
    """Wait until every worker reports no active job and their processes are idle (below 5% of a core each, over
    1 s): the jobs of the last burst have ended and the idle processes that replace them are warm."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = sum(sum(worker_cpu(r.pid)) for r in running.values())
        time.sleep(1.0)
        busy = sum(sum(worker_cpu(r.pid)) for r in running.values()) - before
        if busy < 0.05 * len(running) and all(_active_jobs(r.port) == 0 for r in running.values()):
            return
    print(f"  (not idle after {timeout:.0f} s: measuring anyway)", flush=True)


@dataclass
class Burst:
    """One burst of one worker: the outcome and the CPU its processes spent on it."""

    who: str
    times: list[float]
    refused: int
    lost: int
    main_cpu: float  # s, the worker's main process
    job_cpu: float  # s, its job processes (the calls' jobs and the idle processes that replaced them)


def burst(ep: Endpoints, running: dict[str, Running], who: str, size: int) -> Burst:
    """One burst of ``size`` simultaneous INVITEs to one worker, from idle to idle."""
    settle(running)
    main0, jobs0 = worker_cpu(running[who].pid)
    times, refused, lost = calls(ep, NUMBERS[who], size, together=True)
    settle(running)
    main1, jobs1 = worker_cpu(running[who].pid)
    return Burst(who, times, refused, lost, main1 - main0, jobs1 - jobs0)


def _per_call(cpu: float, answered: int) -> float:
    return cpu / answered if answered else float("nan")


def _variant(spec: str) -> str:
    """Register ``LABEL:VAR=VALUE,...`` as the worker ``ours-LABEL``: the packaged worker with those settings."""
    label, _, settings = spec.partition(":")
    name = f"ours-{label}"
    argv, extra = WORKERS["ours"]
    WORKERS[name] = (argv, {**extra, "SIPHON_AGENT_NAME": f"bench-{name}",
                            **dict(kv.split("=", 1) for kv in settings.split(",") if kv)})  # fmt: skip
    NUMBERS[name] = f"+1555030010{len(NUMBERS)}"
    return name


def stock_rounds(ep: Endpoints, running: dict[str, Running], names: list[str], size: int, rounds: int) -> str:
    """``rounds`` bursts of ``size`` per worker, rotating which goes first, each from idle: a table of every burst,
    then the totals (answered, refused, p50/p95 over all answered calls, CPU per answered call) and each as the
    ratio to the stock agent's."""
    out = [
        "| round | worker | answered/refused/lost | p50 / p95 / max (s) | job CPU per call (s) "
        "| main CPU per call (s) |",
        "|" + "---|" * 6,
    ]
    done: list[Burst] = []
    for i in range(rounds):
        for who in names[i % len(names) :] + names[: i % len(names)]:
            b = burst(ep, running, who, size)
            done.append(b)
            f = _fmt(b.times, b.refused, b.lost)
            row = (f"| {i + 1} | {who} | {f['answered']:.0f}/{f['refused']:.0f}/{f['lost']:.0f} | "
                   f"{f['p50']:.2f} / {f['p95']:.2f} / {f['max']:.2f} | {_per_call(b.job_cpu, len(b.times)):.2f} | "
                   f"{_per_call(b.main_cpu, len(b.times)):.3f} |")  # fmt: skip
            out.append(row)
            print(row, flush=True)
    totals: dict[str, dict[str, float]] = {}
    for who in names:
        mine = [b for b in done if b.who == who]
        times = [t for b in mine for t in b.times]
        f = _fmt(times, sum(b.refused for b in mine), sum(b.lost for b in mine))
        f["job_cpu"] = _per_call(sum(b.job_cpu for b in mine), len(times))
        f["main_cpu"] = _per_call(sum(b.main_cpu for b in mine), len(times))
        totals[who] = f
        out.append(f"| all | {who} | {f['answered']:.0f}/{f['refused']:.0f}/{f['lost']:.0f} | {f['p50']:.2f} / "
                   f"{f['p95']:.2f} / {f['max']:.2f} | {f['job_cpu']:.2f} | {f['main_cpu']:.3f} |")  # fmt: skip
    s = totals["stock"]
    for who in (n for n in names if n != "stock"):
        o = totals[who]
        out.append(
            f"| {who} / stock | | refused {o['refused']:.0f} vs {s['refused']:.0f} | p50 x{o['p50'] / s['p50']:.2f}, "
            f"p95 x{o['p95'] / s['p95']:.2f} | x{o['job_cpu'] / s['job_cpu']:.2f} | "
            f"x{o['main_cpu'] / s['main_cpu']:.2f} |"
        )
    return "\n".join(out)


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


def _in_job(who: str, log: Path) -> str:
    """Where a worker's time goes, from its own log (p50 / p95 in ms): a job process's initialization (livekit-agents
    initializes at most as many at once as there are cores: a burst beyond the idle processes waits for them), then,
    inside the job, joining the room and the agent ready (its audio track published)."""
    keys = ("init_ms", "connect_ms", "resolve_ms", "from_caller_ms", "before_session_ms", "session_ms", "heard_ms",
            "ready_ms")  # fmt: skip
    fields: dict[str, list[float]] = {k: [] for k in keys}
    for line in log.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("message") == "process initialized" and "elapsed_time" in rec:
            fields["init_ms"].append(float(rec["elapsed_time"]) * 1000)
        for key, values in fields.items():
            if key in rec:
                values.append(float(rec[key]))
    parts = [f"{k} p50 {pct(v, 50):.1f} p95 {pct(v, 95):.1f}" for k, v in fields.items() if v]
    return f"timeline ({who}, ms): " + "; ".join(parts)


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
