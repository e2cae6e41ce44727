"""The stock baseline for bench/sip_calls.py and bench/turn_latency.py: the voice agent a user would write with
livekit-agents alone.

Built as the framework's telephony and voice-agent examples build one: Silero prewarmed in ``setup_fnc``;
the entrypoint connects, starts an ``AgentSession`` and the ``Agent`` greets in ``on_enter``. It runs the
packaged worker's offline test models (``worker.models.offline``), its capacity and its load function, so
the two differ only in what siphon-infra adds around the session. With ``STOCK_TRIO`` (JSON: the ``base_url``
of each of ``stt``, ``llm``, ``tts``) it runs the prod stack's models instead, each the provider's plugin built
as the packaged worker builds it (``deepgram/nova-3:en``, ``openai/gpt-4.1-mini``, ``cartesia/sonic-2``; keys from
the plugins' usual variables). Either way the VAD and turn-taking are the packaged worker's defaults
(``contract.turns.SIPHON_DEFAULTS``, passed as ``worker.turn_taking`` passes them), written out as a user would.

    python -m bench.stock_agent start     (STOCK_AGENT_NAME, STOCK_MAX_JOBS, STOCK_HTTP_PORT, STOCK_TRIO, LIVEKIT_*)
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from livekit.agents import Agent, AgentServer, AgentSession, JobContext, JobProcess, cli
from livekit.plugins import cartesia, deepgram, openai, silero

from contract.turns import SIPHON_DEFAULTS as T
from worker.models.offline import EspeakTTS, ScriptedLLM, SilentSTT

logger = logging.getLogger("stock-agent")
CAPACITY = int(os.environ.get("STOCK_MAX_JOBS", "50"))
TARGET_LOAD = 0.7  # livekit-agents' production default, and the packaged worker's

server = AgentServer(port=int(os.environ.get("STOCK_HTTP_PORT", "0")))
server.load_fnc = lambda s: min(1.0, TARGET_LOAD * len(s.active_jobs) / CAPACITY)


def prewarm(proc: JobProcess) -> None:
    proc.userdata["vad"] = silero.VAD.load(
        min_silence_duration=T["min_silence_duration"], activation_threshold=T["activation_threshold"],
        prefix_padding_duration=T["prefix_padding_duration"],
    )  # fmt: skip


def models() -> dict[str, Any]:
    """The session's STT, LLM and TTS: the prod trio at ``STOCK_TRIO``'s base URLs, else the offline test models."""
    if not (trio := os.environ.get("STOCK_TRIO")):
        return {"stt": SilentSTT(), "llm": ScriptedLLM(), "tts": EspeakTTS()}
    url = json.loads(trio)
    return {"stt": deepgram.STT(model="nova-3", language="en", base_url=url["stt"]),
            "llm": openai.LLM(model="gpt-4.1-mini", base_url=url["llm"]),
            "tts": cartesia.TTS(model="sonic-2", base_url=url["tts"])}  # fmt: skip


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
        vad=ctx.proc.userdata["vad"], **models(),
        turn_handling={
            "turn_detection": "vad",
            "endpointing": {"min_delay": T["min_endpointing_delay"], "max_delay": T["max_endpointing_delay"]},
            "interruption": {"enabled": T["allow_interruptions"], "mode": "vad",
                             "min_duration": T["min_interruption_duration"]},
        },
    )  # fmt: skip
    await session.start(agent=Assistant(), room=ctx.room)
    # the bench's only addition: the same two timings the packaged worker logs, for its step-by-step comparison
    ready_ms = (time.perf_counter() - started) * 1000
    logger.info("agent ready", extra={"connect_ms": round(connect_ms, 1), "ready_ms": round(ready_ms, 1)})


if __name__ == "__main__":
    cli.run_app(server)
