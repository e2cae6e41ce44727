"""The stock baseline for bench/sip_calls.py: the voice agent a user would write with livekit-agents alone.

Built as the framework's telephony and voice-agent examples build one: Silero prewarmed in ``setup_fnc``;
the entrypoint connects, starts an ``AgentSession`` and the ``Agent`` greets in ``on_enter``. It runs the
packaged worker's offline test models (``worker.models.offline``), its capacity and its load function, so
the two differ only in what siphon-infra adds around the session.

    python -m bench.stock_agent start     (STOCK_AGENT_NAME, STOCK_MAX_JOBS, STOCK_HTTP_PORT, LIVEKIT_*)
"""

from __future__ import annotations

import logging
import os
import time

from livekit.agents import Agent, AgentServer, AgentSession, JobContext, JobProcess, cli
from livekit.plugins import silero

from worker.models.offline import EspeakTTS, ScriptedLLM, SilentSTT

logger = logging.getLogger("stock-agent")
CAPACITY = int(os.environ.get("STOCK_MAX_JOBS", "50"))
TARGET_LOAD = 0.7  # livekit-agents' production default, and the packaged worker's

server = AgentServer(port=int(os.environ.get("STOCK_HTTP_PORT", "0")))
server.load_fnc = lambda s: min(1.0, TARGET_LOAD * len(s.active_jobs) / CAPACITY)


def prewarm(proc: JobProcess) -> None:
    proc.userdata["vad"] = silero.VAD.load()


server.setup_fnc = prewarm


class Assistant(Agent):
    """Greets the caller as soon as it is in the session."""

    def __init__(self) -> None:
        super().__init__(instructions="You are a helpful voice assistant on a phone line.")

    async def on_enter(self) -> None:
        self.session.generate_reply(instructions="Greet the caller.")


@server.rtc_session(agent_name=os.environ.get("STOCK_AGENT_NAME", "stock"))
async def entrypoint(ctx: JobContext) -> None:
    started = time.perf_counter()
    await ctx.connect()
    connect_ms = (time.perf_counter() - started) * 1000
    session: AgentSession = AgentSession(
        vad=ctx.proc.userdata["vad"], stt=SilentSTT(), llm=ScriptedLLM(), tts=EspeakTTS()
    )
    await session.start(agent=Assistant(), room=ctx.room)
    # the bench's only addition: the same two timings the packaged worker logs, for its step-by-step comparison
    ready_ms = (time.perf_counter() - started) * 1000
    logger.info("agent ready", extra={"connect_ms": round(connect_ms, 1), "ready_ms": round(ready_ms, 1)})


if __name__ == "__main__":
    cli.run_app(server)
