"""Crash recovery against the faults of a production LiveKit: a stalled server harms no healthy call, and a job that
LiveKit re-dispatches itself (as LiveKit Cloud does) is answered as a resumption, with our own recovery standing down.

Real calls through the bridge (sipp -> livekit-sip -> livekit-server -> workers started with the image's command),
with the local supervisor's death reports (``localenv.deaths``) watching every worker, as ``./dev local`` runs them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from pathlib import Path

from livekit import api

from contract.resolve import text_sha
from localenv.manager import Endpoints, LocalEnv
from tests.test_crash_calls import (
    RESUME_MESSAGE,
    death_watch,
    fault_call,
    kill_tree,
    serving,
    utterance_shas,
    wait_for,
)
from tests.test_worker_live import WorkerProc, start_worker
from worker.recovery import local_worker_id, recover_worker


def _stop_all(workers: list[WorkerProc], dead: list[WorkerProc]) -> None:
    for w in workers:
        if w in dead:
            w.out.close()
        else:
            assert w.stop() == 0, w.text()[-3000:]


def test_a_livekit_server_paused_for_5_seconds_during_a_call_harms_no_call(
    local_env: LocalEnv, endpoints: Endpoints, tmp_path: Path
) -> None:
    """livekit-server is stopped (SIGSTOP) for 5 s during a healthy call on two workers, so every API call and every
    connection stalls together. Nothing treats a stall as a death: no worker's death is reported, nothing is taken
    over or resumed, and the call goes on with its agent until the caller's side hangs up."""
    name = f"siphon-pause-{uuid.uuid4().hex[:6]}"
    workers = [start_worker(endpoints, tmp_path / f"p{i}.log", name) for i in range(2)]
    deaths = death_watch(endpoints, *workers)
    server = local_env.service("livekit-server")
    assert server.proc is not None
    try:

        def pause(room: str, attrs: dict[str, str]) -> None:
            os.kill(server.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
            try:
                time.sleep(5)
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]

        f = fault_call(endpoints, name, "+15550100311", pause, expect="resume", timeout=15)
        assert f.bye_s is None, f"the call was ended by the stall: {f}"
        assert f.resumed is None and f.silence_s is None, f"a healthy call was taken over: {f}"
        assert f.end is not None and f.end.completed, f.end
        assert deaths.reports == [], deaths.reports
        for w in workers:
            assert "take-over" not in w.text() and all(p.poll() is None for p in [w.proc]), w.text()[-3000:]
    finally:
        _stop_all(workers, [])


def test_a_job_livekit_re_dispatches_itself_is_a_resumption_and_our_recovery_stands_down(
    endpoints: Endpoints, tmp_path: Path
) -> None:
    """As on LiveKit Cloud: the serving worker dies, and LiveKit itself dispatches the call's job again, with the
    job's own metadata (no resume marker of ours). The new agent sees that another agent served the call, so it
    publishes siphon.resumed=true and says the resume message instead of a greeting; recovery on a LiveKit that
    re-dispatches creates no dispatch of its own, only waits for that agent: the call has one new agent."""
    name = f"siphon-cloud-{uuid.uuid4().hex[:6]}"
    workers = [start_worker(endpoints, tmp_path / f"c{i}.log", name) for i in range(2)]
    dead: list[WorkerProc] = []
    outcome: list[str] = []
    try:

        def die_and_redispatch(room: str, attrs: dict[str, str]) -> None:
            w = serving(workers, room)
            dead.append(w)
            worker_id = local_worker_id(w.proc.pid)
            kill_tree(w)

            async def cloud() -> None:
                lk = api.LiveKitAPI(endpoints.livekit_url, endpoints.api_key, endpoints.api_secret)
                try:
                    (original,) = await lk.agent_dispatch.list_dispatch(room)
                    recovery = asyncio.create_task(recover_worker(lk, worker_id, platform_redispatches=True))
                    await lk.agent_dispatch.create_dispatch(  # LiveKit's own re-dispatch of the lost job
                        api.CreateAgentDispatchRequest(agent_name=name, room=room, metadata=original.metadata)
                    )
                    outcome.extend(await recovery)
                    assert len(await lk.agent_dispatch.list_dispatch(room)) == 2, "recovery dispatched a second agent"
                finally:
                    await lk.aclose()

            asyncio.run(cloud())

        f = fault_call(endpoints, name, "+15550100312", die_and_redispatch, expect="resume")
        (alive,) = [w for w in workers if w not in dead]
        assert f.bye_s is None, f"the call ended instead of being resumed: {f}"
        assert f.resumed is not None and f.resumed["siphon.resumed"] == "true", (f, alive.text()[-3000:])
        assert f.resumed["siphon.config_hash"] == f.original["siphon.config_hash"], (f.original, f.resumed)
        assert len(outcome) == 1 and outcome[0].startswith("re-dispatched by LiveKit"), outcome
        assert wait_for(lambda: text_sha(RESUME_MESSAGE) in utterance_shas(alive, f.room)), alive.text()[-3000:]
        assert utterance_shas(alive, f.room)[0] == text_sha(RESUME_MESSAGE)  # no greeting: the resume message
    finally:
        _stop_all(workers, dead)
