"""LiveKit server API requests per worker per minute, idle and during a burst of calls: the old worker design beside
the new one, in one run.

LiveKit Cloud allows a project about 1,000 server API requests a minute (docs: shared/reference/livekit.md section
16); every worker of every agent spends from that one budget. Each worker here runs behind its own counting proxy
(``localenv/api_proxy.py``: its ``LIVEKIT_URL``, so its job processes' calls are counted too), so its requests are
its own.

- OLD: the worker of ``--old-ref`` (default 9616c27: the roster beats every 0.5 s), exported with ``git archive`` of
  worker/ and contract/ and run from there (its working directory and PYTHONPATH, with this checkout's virtualenv);
- NEW: the worker of ``--new-ref`` (default: this checkout's working tree).

Each design has a local environment of its own (Redis, livekit-server, livekit-sip): the designs run at the same
time and must not see each other's rooms (the old design's workers watch every agent's rosters, and would take the
other design's workers for dead ones when a busy worker's beat is late). For each number of workers (``--workers``,
default 1 2 4) both designs' pools grow to that size, then:

- idle: every worker of both designs idles for ``--idle`` seconds (the same window for both), and its requests are
  scaled to a minute;
- burst: ``--burst`` simultaneous real inbound calls (sipp through livekit-sip; each may ring 30 s, is held 3 s
  once answered, then hung up) to one design, then to the other (the order alternates): the requests of its workers
  from the first INVITE until every call ended and every worker is back to no job (plus 3 s for what a worker
  writes after a call), per call; and per call beyond the same workers' idle rate over the burst's duration (below
  0 when a busy worker's periodic calls slowed down during the burst).

Every figure is printed with its ratio new / old, measured in the same run.

    PATH=$(python3 -m localenv.tools path):$PATH .venv/bin/python -m bench.api_budget [--idle 60] [--workers 1 2 4]
        [--burst 20] [--old-ref 9616c27] [--new-ref REF] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.duration_pb2 import Duration
from livekit import api

from contract.metadata import AgentConfig, RouteMetadata
from infra import sipp
from localenv.api_proxy import ApiProxy
from localenv.manager import Endpoints, LocalEnv
from tests.test_worker_live import WorkerProc, _active_jobs, start_worker

ROOT = Path(__file__).resolve().parent.parent
OLD_REF = "9616c27"  # main before the call ledger: worker/roster.py beats every 0.5 s
NUMBERS = {"old": "+15550300401", "new": "+15550300402"}
RINGING = 30  # s a call may ring (the trunks' ringing_timeout). 120 s was tried: on an overloaded box the calls lost
# were those whose job gave up (and hung up, 486), not late answers; it only made each burst last 2 minutes.
HOLD = 3.0  # s each answered call is held before the caller hangs up
AFTER_CALLS = 3.0  # s counted after the last job ended: what a worker writes once its calls are gone
WARM = 5.0  # s after workers start before measuring: idle job processes warm up, periodic tasks start


def export(ref: str, dest: Path) -> Path:
    """worker/ and contract/ of ``ref``, extracted into ``dest``; checks that they import from there."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "worker", "contract"], check=True,
                             capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    probe = "import contract, worker, worker.server; print(contract.__file__, worker.__file__, worker.server.__file__)"
    where = subprocess.run([sys.executable, "-c", probe], cwd=dest, env={**os.environ, "PYTHONPATH": str(dest)},
                           check=True, capture_output=True, text=True).stdout.split()  # fmt: skip
    assert all(Path(p).resolve().is_relative_to(dest.resolve()) for p in where), f"{ref} imports from {where}"
    return dest


@dataclass
class Member:
    """One worker of a design and its own proxy."""

    worker: WorkerProc
    proxy: ApiProxy


@dataclass
class Design:
    """A worker version under measurement: its code, agent, number and running workers."""

    label: str  # "old" | "new"
    ref: str
    code: Path
    env: LocalEnv  # its own: the designs' workers never see each other's rooms (both may watch every roster)
    agent: str
    number: str
    members: list[Member] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def ep(self) -> Endpoints:
        assert self.env.endpoints is not None
        return self.env.endpoints

    def grow(self, n: int) -> None:
        """Start workers (each behind a new proxy) until ``n`` run."""
        missing = n - len(self.members)
        if missing <= 0:
            return
        first = len(self.members)
        with concurrent.futures.ThreadPoolExecutor(missing) as pool:
            list(pool.map(lambda i: self._start(first + i), range(missing)))

    def _start(self, i: int) -> None:
        proxy = ApiProxy.start(self.ep.livekit_url)
        try:
            log = self.env.run_dir / f"worker-{self.label}-{i + 1}.log"
            proxied = dataclasses.replace(self.ep, livekit_url=proxy.url)
            # start_worker's test settings, but an inbound job waits for its caller as in production (10 s, not 1 s):
            # on a loaded 2-core box, callers of a burst join late, and a job that gives up hangs its call up.
            worker = start_worker(proxied, log, self.agent, code=self.code, SIPHON_PARTICIPANT_WAIT="10")
        except BaseException:
            proxy.stop()
            raise
        with self._lock:
            self.members.append(Member(worker, proxy))

    def stop(self) -> None:
        for m in self.members:
            with contextlib.suppress(Exception):
                m.worker.stop()
            m.proxy.stop()
        self.members.clear()


@dataclass
class Idle:
    """One idle window of one design: requests per minute of each worker, and per method (all workers)."""

    per_worker: list[float]
    methods: dict[str, float]

    @property
    def mean(self) -> float:
        return sum(self.per_worker) / len(self.per_worker)


@dataclass
class Burst:
    """One burst of calls to one design."""

    calls: int
    answered: int
    refused: int
    lost: int
    seconds: float
    requests: int
    beyond_idle: float  # requests beyond the workers' idle rate over the same duration
    methods: dict[str, int]

    @property
    def per_call(self) -> float:
        return self.requests / self.calls

    @property
    def beyond_per_call(self) -> float:
        return self.beyond_idle / self.calls


async def _route(lk: api.LiveKitAPI, name: str, number: str, agent: str, metadata: str) -> None:
    info = api.SIPInboundTrunkInfo(name=name, numbers=[number], allowed_addresses=["127.0.0.1/32"],
                                   ringing_timeout=Duration(seconds=RINGING))  # fmt: skip
    trunk = await lk.sip.create_inbound_trunk(api.CreateSIPInboundTrunkRequest(trunk=info))
    rule = api.SIPDispatchRuleInfo(
        name=name,
        trunk_ids=[trunk.sip_trunk_id],
        rule=api.SIPDispatchRule(dispatch_rule_individual=api.SIPDispatchRuleIndividual(room_prefix=name)),
        room_config=api.RoomConfiguration(agents=[api.RoomAgentDispatch(agent_name=agent, metadata=metadata)]),
    )
    await lk.sip.create_dispatch_rule(api.CreateSIPDispatchRuleRequest(dispatch_rule=rule))


def calls(ep: Endpoints, number: str, n: int) -> tuple[int, int, int]:
    """n simultaneous calls, each held HOLD s once answered: (answered, refused with a SIP status, lost)."""
    placed = [sipp.place(ep.sip_address, number, caller="+15005550006", hold_s=HOLD, answer_timeout_s=RINGING + 10)
              for _ in range(n)]  # fmt: skip
    ends = [c.wait(RINGING + HOLD + 60) for c in placed]
    answered = sum(1 for e in ends if e.answered_after is not None)
    refused = [e.reason[:80] for e in ends if e.answered_after is None and re.search(r"\b[3-6]\d\d\b", e.reason)]
    lost = n - answered - len(refused)
    if refused or lost:
        why = collections.Counter(e.reason[:80] for e in ends if e.answered_after is None)
        print(f"  calls to {number} not answered: {dict(why)}", flush=True)
    return answered, len(refused), lost


def idle_window(designs: list[Design], seconds: float) -> dict[str, Idle]:
    """Every worker of every design idles for ``seconds`` (the same window for all), from when no job runs (the
    warm-up calls' jobs have ended and written what they write at their end)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(_active_jobs(m.worker) for d in designs for m in d.members):
        time.sleep(0.2)
    time.sleep(AFTER_CALLS)
    mark = time.monotonic()
    time.sleep(seconds)
    out = {}
    for d in designs:
        scale = 60.0 / seconds
        methods: collections.Counter[str] = collections.Counter()
        per_worker = []
        for m in d.members:
            counts = m.proxy.counts(since=mark)
            per_worker.append(sum(counts.values()) * scale)
            methods.update(counts)
        out[d.label] = Idle(per_worker, {k: v * scale for k, v in methods.items()})
    return out


def burst(d: Design, size: int, idle: Idle, timeout: float = 120) -> Burst:
    """``size`` simultaneous calls to ``d``'s number; its workers' requests until every job ended (+AFTER_CALLS)."""
    mark = time.monotonic()
    answered, refused, lost = calls(d.ep, d.number, size)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_active_jobs(m.worker) for m in d.members):
        time.sleep(0.2)
    time.sleep(AFTER_CALLS)
    seconds = time.monotonic() - mark
    methods: collections.Counter[str] = collections.Counter()
    for m in d.members:
        methods.update(m.proxy.counts(since=mark))
    requests = sum(methods.values())
    beyond = requests - sum(idle.per_worker) * seconds / 60.0
    return Burst(size, answered, refused, lost, seconds, requests, beyond, dict(methods))


def _ratio(new: float, old: float, floor: float = 0.0) -> str:
    """new / old; none when old is not above ``floor`` (for a difference of two counts: noise around 0, or below)."""
    if old <= floor:
        return "x0" if old == new == 0 else f"n/a (old {old:.2f})"
    return f"x{new / old:.3f}"


def _methods(methods: dict[str, float], unit: str) -> str:
    top = sorted(methods.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{k.removeprefix('livekit.')} {v:.1f}{unit}" for k, v in top) or "none"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle", type=float, default=60.0, help="idle window in seconds (scaled to a minute)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="workers per design, increasing")
    parser.add_argument("--burst", type=int, default=20, help="simultaneous calls per burst")
    parser.add_argument("--old-ref", default=OLD_REF, help="git ref of the old design's worker")
    parser.add_argument("--new-ref", default=None, help="git ref of the new design's worker (default: working tree)")
    parser.add_argument("--quick", action="store_true", help="--idle 20 --workers 1 2 --burst 10")
    args = parser.parse_args()
    if args.quick:
        args.idle, args.workers, args.burst = 20.0, [1, 2], 10
    if sorted(args.workers) != args.workers:
        parser.error("--workers must be increasing (the pools grow)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        tag = uuid.uuid4().hex[:4]
        codes = {"old": export(args.old_ref, Path(tmp) / "old"),
                 "new": export(args.new_ref, Path(tmp) / "new") if args.new_ref else ROOT}  # fmt: skip
        envs: dict[str, LocalEnv] = {}
        with concurrent.futures.ThreadPoolExecutor(2) as pool:  # one environment per design, started together
            starting = {label: pool.submit(LocalEnv.start, Path(tmp) / f"env-{label}") for label in codes}
        failed = [err for f in starting.values() if (err := f.exception()) is not None]
        for label, f in starting.items():  # each one that started is stopped at the end, also when the other failed
            if f.exception() is None:
                envs[label] = stack.enter_context(f.result())
        if failed:
            raise failed[0]
        designs = [
            Design(label, ref, codes[label], envs[label], f"budget-{label}-{tag}", NUMBERS[label])
            for label, ref in (("old", args.old_ref), ("new", args.new_ref or "working tree"))
        ]
        asyncio.run(routes(designs))
        print(f"old: {designs[0].ref} ({designs[0].code}); new: {designs[1].ref} ({designs[1].code})", flush=True)
        results: list[tuple[int, dict[str, Idle], dict[str, Burst]]] = []
        try:
            for i, n in enumerate(args.workers):
                for d in designs:
                    d.grow(n)
                time.sleep(WARM)
                for d in designs:  # warm-up: one call each (a fresh worker's first job pays extra), not counted
                    calls(d.ep, d.number, 1)
                print(f"{n} worker(s) per design: idle {args.idle:.0f} s ...", flush=True)
                idle = idle_window(designs, args.idle)
                for d in designs:
                    print(f"  idle {d.label}: {_methods(idle[d.label].methods, '/min')}", flush=True)
                bursts = {}
                for d in designs if i % 2 == 0 else designs[::-1]:
                    b = burst(d, args.burst, idle[d.label])
                    bursts[d.label] = b
                    print(f"  burst {d.label}: {b.answered}/{b.calls} answered in {b.seconds:.1f} s, "
                          f"{b.requests} requests: {_methods(dict(b.methods), '')}", flush=True)  # fmt: skip
                results.append((n, idle, bursts))
        finally:
            for d in designs:
                d.stop()
    print(_table(results, args.burst))
    print(f"\nrun time {time.monotonic() - started:.0f} s; old = {designs[0].ref}, new = {designs[1].ref}")
    return 0


async def routes(designs: list[Design]) -> None:
    """One inbound trunk and dispatch rule per design, to its agent, in its environment."""
    route = RouteMetadata(route="budget", direction="inbound", agent_config=AgentConfig(greeting_instructions="Hi"))
    for d in designs:
        lk = api.LiveKitAPI(d.ep.livekit_url, d.ep.api_key, d.ep.api_secret)
        try:
            await _route(lk, f"budget-{d.label}", d.number, d.agent, route.to_json())
        finally:
            await lk.aclose()


def _table(results: list[tuple[int, dict[str, Idle], dict[str, Burst]]], size: int) -> str:
    out = [
        "\n| workers | design | idle req/min per worker (min-max) | idle req/min, all workers "
        f"| burst of {size}: answered/refused/lost | burst s | burst requests | per call | per call beyond idle |",
        "|" + "---|" * 9,
    ]
    for n, idle, bursts in results:
        for label in ("old", "new"):
            i, b = idle[label], bursts[label]
            out.append(
                f"| {n} | {label} | {i.mean:.1f} ({min(i.per_worker):.1f}-{max(i.per_worker):.1f}) | "
                f"{sum(i.per_worker):.1f} | {b.answered}/{b.refused}/{b.lost} | {b.seconds:.1f} | {b.requests} | "
                f"{b.per_call:.2f} | {round(b.beyond_per_call, 2) + 0.0:.2f} |"
            )
        i_old, i_new, b_old, b_new = idle["old"], idle["new"], bursts["old"], bursts["new"]
        out.append(
            f"| {n} | new / old | {_ratio(i_new.mean, i_old.mean)} | "
            f"{_ratio(sum(i_new.per_worker), sum(i_old.per_worker))} | | | {_ratio(b_new.requests, b_old.requests)} | "
            f"{_ratio(b_new.per_call, b_old.per_call)} | {_ratio(b_new.beyond_per_call, b_old.beyond_per_call, 0.1)} |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
