"""The baseline for bench/sip_calls.py: a bare livekit-agents worker that connects, publishes one silent
audio track (livekit-sip answers a caller only once an agent's audio is there) and one attribute.

Same server options as the packaged worker (process executor, jobs-based load at the same capacity), so
the two differ only in what the job does.

    python -m bench.baseline_worker start     (BASELINE_AGENT_NAME, BASELINE_MAX_JOBS, LIVEKIT_*)
"""

from __future__ import annotations

import asyncio
import os

from livekit import rtc
from livekit.agents import AgentServer, JobContext, cli

from contract.wire import CONFIG_HASH_ATTRIBUTE

CAPACITY = int(os.environ.get("BASELINE_MAX_JOBS", "50"))
TARGET_LOAD = 0.7

server = AgentServer(load_threshold=TARGET_LOAD, port=int(os.environ.get("BASELINE_HTTP_PORT", "0")))
server.load_fnc = lambda s: min(1.0, TARGET_LOAD * len(s.active_jobs) / CAPACITY)


@server.rtc_session(agent_name=os.environ.get("BASELINE_AGENT_NAME", "baseline"))
async def entrypoint(ctx: JobContext) -> None:
    await ctx.connect()
    source = rtc.AudioSource(8000, 1)
    track = rtc.LocalAudioTrack.create_audio_track("silence", source)
    await ctx.room.local_participant.publish_track(track)
    await ctx.room.local_participant.set_attributes({CONFIG_HASH_ATTRIBUTE: "baseline"})
    done = asyncio.Event()
    ctx.room.on("participant_disconnected", lambda _: done.set())
    ctx.room.on("disconnected", lambda *_: done.set())
    await done.wait()
    ctx.shutdown(reason="caller left")


if __name__ == "__main__":
    cli.run_app(server)
