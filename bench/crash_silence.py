"""The caller's silence after each fault, beside the time to answer a new call, in one run.

One local environment (Redis, livekit-server, livekit-sip), the local supervisor's death reports
(``localenv.deaths``, as ``./dev local`` runs them) watching every worker, and real calls through the bridge
(sipp). For each fault kind, N calls are answered and then:

- ``job kill``: the job process serving the call is killed (SIGKILL); one worker;
- ``worker kill, peer alive``: the serving worker's whole tree is killed while a second worker of the agent runs
  (the killed worker is started again before the next call, so that two run for every fault);
- ``only worker kill``: the only worker's whole tree is killed (it is started again before the next call).

Silence: from the kill until an agent that published ``siphon.resumed=true`` is ``speaking`` (``lk.agent.state``,
set when its first audio frame goes out to the room); for the last kind, until the caller received the BYE.
Time to answer: INVITE sent to 200 OK, from sipp's trace, of the same calls before their fault.

    PATH=$(python3 -m localenv.tools path):$PATH .venv/bin/python -m bench.crash_silence [-n 10]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from bench.worker_dispatch import pct
from localenv.deaths import DeathWatch
from localenv.manager import Endpoints, LocalEnv
from tests.test_crash_calls import Fault, fault_call, job_pid, kill_tree, serving
from tests.test_worker_live import WorkerProc, start_worker

NUMBER = "+15550100399"


def _row(label: str, faults: list[Fault], key: str) -> str:
    values = [getattr(f, key) for f in faults if getattr(f, key) is not None]
    answers = [f.end.answered_after for f in faults if f.end is not None and f.end.answered_after is not None]
    failed = len(faults) - len(values)
    return (
        f"| {label:<26} | {len(faults):>2} | {'BYE' if key == 'bye_s' else 'resumed':<7} | {pct(values, 50):6.2f} | "
        f"{pct(values, 95):6.2f} | {max(values, default=float('nan')):6.2f} | {failed:>6} | "
        f"{pct(answers, 50):6.2f} | {pct(answers, 95):6.2f} |"
    )


def _faults(n: int, label: str, one: Callable[[int], Fault]) -> list[Fault]:
    out = []
    for i in range(n):
        f = one(i)
        out.append(f)
        got = f.silence_s if f.silence_s is not None else f.bye_s
        print(f"  {label} #{i + 1}: silence {got if got is None else round(got, 2)} s "
              f"(resumed={f.silence_s is not None}, bye={f.bye_s is not None})", flush=True)  # fmt: skip
        time.sleep(1)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=10, help="faults of each kind")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, LocalEnv.start(Path(tmp)) as env:
        ep = env.endpoints
        assert ep is not None
        os.environ.update(ep.env())
        deaths = DeathWatch(ep.livekit_url, ep.api_key, ep.api_secret, say=lambda line: None)
        rows = [
            _row("job kill", job_kills(ep, Path(tmp), args.n), "silence_s"),
            _row("worker kill, peer alive", worker_kills(ep, Path(tmp), args.n, deaths), "silence_s"),
            _row("only worker kill", only_worker_kills(ep, Path(tmp), args.n, deaths), "bye_s"),
        ]
    print("\n| fault                      |  n | outcome | p50 s  | p95 s  | max s  | failed | answer p50 | p95 |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\nsilence: kill -> a resumed agent speaks (or -> BYE received); answer: INVITE -> 200 OK of the same calls")
    return 0


def _worker(ep: Endpoints, tmp: Path, agent: str, deaths: DeathWatch | None = None) -> WorkerProc:
    w = start_worker(ep, tmp / f"{agent}-{uuid.uuid4().hex[:4]}.log", agent)
    if deaths is not None:
        deaths.watch(w.proc, agent)
    return w


def job_kills(ep: Endpoints, tmp: Path, n: int) -> list[Fault]:
    w = _worker(ep, tmp, f"bench-job-{uuid.uuid4().hex[:4]}")
    try:

        def kill(room: str, attrs: dict[str, str]) -> None:
            os.kill(job_pid(w, room), signal.SIGKILL)

        return _faults(n, "job kill", lambda i: fault_call(ep, w.agent_name, NUMBER, kill, expect="resume"))
    finally:
        w.stop()


def worker_kills(ep: Endpoints, tmp: Path, n: int, deaths: DeathWatch) -> list[Fault]:
    agent = f"bench-pair-{uuid.uuid4().hex[:4]}"
    workers = [_worker(ep, tmp, agent, deaths) for _ in range(2)]

    def one(i: int) -> Fault:
        def kill(room: str, attrs: dict[str, str]) -> None:
            w = serving(workers, room)
            kill_tree(w)
            w.out.close()
            workers.remove(w)

        f = fault_call(ep, agent, NUMBER, kill, expect="resume")
        while len(workers) < 2:
            workers.append(_worker(ep, tmp, agent, deaths))
        time.sleep(3)  # the new worker's idle job processes warm up
        return f

    try:
        return _faults(n, "worker kill", one)
    finally:
        for w in workers:
            with contextlib.suppress(Exception):
                w.stop()


def only_worker_kills(ep: Endpoints, tmp: Path, n: int, deaths: DeathWatch) -> list[Fault]:
    agent = f"bench-only-{uuid.uuid4().hex[:4]}"
    current = [_worker(ep, tmp, agent, deaths)]

    def one(i: int) -> Fault:
        def kill(room: str, attrs: dict[str, str]) -> None:
            kill_tree(current[0])
            current[0].out.close()

        f = fault_call(ep, agent, NUMBER, kill, expect="bye")
        current[0] = _worker(ep, tmp, agent, deaths)
        time.sleep(3)
        return f

    try:
        return _faults(n, "only worker kill", one)
    finally:
        with contextlib.suppress(Exception):
            current[0].stop()


if __name__ == "__main__":
    raise SystemExit(main())
