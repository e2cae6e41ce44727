"""Dispatch-to-agent-joined latency of the packaged worker, and metadata resolution time.

Starts its own local environment (Redis + livekit-server) and a worker subprocess with the image's entry
command, then creates N explicit agent dispatches one after another and measures, for each, the time from
CreateDispatch being sent to the agent participant joining the room (seen by a participant already in the
room) and to the agent's resolved attributes appearing. Also times metadata resolution in-process.

    PATH=$(python3 -m localenv.tools path):$PATH .venv/bin/python -m bench.worker_dispatch [-n 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from livekit import api, rtc

from contract import models as registry
from contract.metadata import AgentConfig, CallMetadata, parse_metadata
from contract.resolve import call_facts, merge_layers, worker_defaults
from contract.wire import CONFIG_HASH_ATTRIBUTE, SIP_CALL_STATUS, SIP_PHONE_NUMBER
from localenv.manager import Endpoints, LocalEnv
from localenv.siphon_payloads import SIPHON_INBOUND

ROOT = Path(__file__).resolve().parent.parent


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of ``values``; NaN when there are none."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] if ordered else float("nan")


def resolution_bench(n: int = 2000) -> dict[str, float]:
    """Microseconds per parse+merge+spec-parse for a SIPHON payload and for our own shape."""
    defaults = worker_defaults(AgentConfig())
    ours = CallMetadata(route="bench", direction="inbound", inbound_trunk_id="ST_x", called_number="+15550100")
    ours_json = ours.to_json()
    out = {}
    for name, raw in (("siphon_inbound", json.dumps(SIPHON_INBOUND)), ("ours", ours_json)):
        t0 = time.perf_counter()
        for _ in range(n):
            meta = parse_metadata(raw).metadata
            merged = merge_layers(("default", defaults), ("route", meta.agent_config), ("call", meta.overrides))
            call_facts(meta, None)
            for kind in ("llm", "stt", "tts"):
                registry.parse_spec(kind, getattr(merged.config, kind))
        out[name] = (time.perf_counter() - t0) / n * 1e6
    return out


async def dispatch_bench(ep: Endpoints, agent_name: str, n: int) -> tuple[list[float], list[float]]:
    joined: list[float] = []
    configured: list[float] = []
    lk = api.LiveKitAPI(ep.livekit_url, ep.api_key, ep.api_secret)
    try:
        for _ in range(n):
            room_name = f"bench-{uuid.uuid4().hex[:8]}"
            token = (
                api.AccessToken(ep.api_key, ep.api_secret)
                .with_identity("caller")
                .with_kind("sip")
                .with_attributes({SIP_PHONE_NUMBER: "+15557654321", SIP_CALL_STATUS: "active"})
                .with_grants(api.VideoGrants(room_join=True, room=room_name))
                .to_jwt()
            )
            room = rtc.Room()
            t_join: asyncio.Future[float] = asyncio.get_running_loop().create_future()
            t_cfg: asyncio.Future[float] = asyncio.get_running_loop().create_future()

            @room.on("participant_connected")
            def _joined(
                p: rtc.RemoteParticipant, t_join: asyncio.Future[float] = t_join, t_cfg: asyncio.Future[float] = t_cfg
            ) -> None:
                if p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT and not t_join.done():
                    t_join.set_result(time.perf_counter())
                    if p.attributes.get(CONFIG_HASH_ATTRIBUTE) and not t_cfg.done():
                        t_cfg.set_result(time.perf_counter())

            @room.on("participant_attributes_changed")
            def _attrs(changed: dict[str, str], p: rtc.Participant, t_cfg: asyncio.Future[float] = t_cfg) -> None:
                if CONFIG_HASH_ATTRIBUTE in changed and not t_cfg.done():
                    t_cfg.set_result(time.perf_counter())

            await room.connect(ep.livekit_url, token)
            t0 = time.perf_counter()
            await lk.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(
                    agent_name=agent_name, room=room_name, metadata=json.dumps(SIPHON_INBOUND)
                )
            )
            joined.append((await asyncio.wait_for(t_join, 30)) - t0)
            configured.append((await asyncio.wait_for(t_cfg, 30)) - t0)
            await room.disconnect()
            await lk.room.delete_room(api.DeleteRoomRequest(room=room_name))
    finally:
        await lk.aclose()
    return joined, configured


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=50)
    args = parser.parse_args()

    res = resolution_bench()
    print("metadata resolution (parse + merge + facts + spec parse), per call:")
    for name, us in res.items():
        print(f"  {name:16s} {us:8.1f} us")

    with tempfile.TemporaryDirectory() as tmp, LocalEnv.start(Path(tmp) / "env") as env:
        ep = env.endpoints
        assert ep is not None
        agent_name = f"bench-{uuid.uuid4().hex[:6]}"
        wenv = {**os.environ, **ep.env(), "SIPHON_AGENT_NAME": agent_name, "SIPHON_ENVIRONMENT": "local",
                "SIPHON_HTTP_PORT": "0", "SIPHON_HTTP_HOST": "127.0.0.1", "SIPHON_MAX_JOBS": "200",
                "SIPHON_PARTICIPANT_WAIT": "1"}  # fmt: skip
        log = Path(tmp) / "worker.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "worker.main", "start"], cwd=ROOT, env=wenv, stdout=out,
                                    stderr=subprocess.STDOUT)  # fmt: skip
            try:
                deadline = time.monotonic() + 60
                while '"registered worker"' not in log.read_text() and time.monotonic() < deadline:
                    time.sleep(0.1)
                joined, configured = asyncio.run(dispatch_bench(ep, agent_name, args.n))
            finally:
                proc.terminate()
                proc.wait(timeout=60)
        resolve_ms = [json.loads(line)["resolve_ms"] for line in log.read_text().splitlines() if '"resolve_ms"' in line]
    print(f"dispatches: {len(joined)} (sequential, process job executor, SIPHON inbound payload)")
    for name, xs in (("dispatch -> agent joined", joined), ("dispatch -> config attributes", configured)):
        ms = [x * 1000 for x in xs]
        print(f"  {name:30s} p50 {pct(ms, 50):7.1f} ms  p95 {pct(ms, 95):7.1f} ms  max {max(ms):7.1f} ms")
    if resolve_ms:
        print(
            f"  in-job metadata->resolved (incl. room connect, SIP participant lookup, model build): "
            f"p50 {statistics.median(resolve_ms):.1f} ms  p95 {pct(resolve_ms, 95):.1f} ms"
        )


if __name__ == "__main__":
    main()
