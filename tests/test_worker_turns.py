"""Turn-taking on real calls: a caller who speaks during the agent's greeting interrupts it when the route allows
interruptions, and does not when it forbids them.

The caller is sipp through the real livekit-sip, speaking a sentence made with espeak-ng and converted by sox to
8 kHz mu-law (PCMU), streamed as RTP some seconds after the answer, while the agent reads a long greeting (the
offline scripted LLM and espeak-ng TTS). The worker (the image's entry command, Silero VAD from the wheel) publishes
what turn-taking did as attributes (``worker.turn_taking.report``): caller speech detected by VAD, agent utterances, and
those cut short. The test watches those attributes and ``lk.agent.state`` through LiveKit, in order of arrival.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from livekit import api

from contract.metadata import AgentConfig, RouteMetadata
from contract.wire import CALLER_SPEECH_ATTRIBUTE, INTERRUPTED_ATTRIBUTE, UTTERANCES_ATTRIBUTE
from infra import sipp
from localenv.manager import Endpoints, LocalEnv
from tests.caller_audio import spoken_ulaw
from tests.test_worker_live import WAIT, WorkerProc, answered_call, start_worker

LONG_GREETING = (  # about 25 s of espeak-ng speech (provider parameters are limited to 512 characters)
    "Thank you for calling Example Corporation, the home of fine example products since nineteen ninety. "
    "Before we begin, please listen carefully, because our menu options have recently changed. "
    "For questions about an existing order, a delivery that has not arrived yet, or a refund, "
    "please stay on the line and tell me your order number when I have finished speaking. "
    "For anything else, including new orders and opening hours, please visit our web site."
)
# Seconds from the answer to the caller's speech: inside the greeting, and after livekit-agents' echo-cancellation
# warm-up (its default: no interruption by audio during the agent's first seconds of speech).
SPEAKS_AFTER_S = 8.0
CALLER_SAYS = "Hello? Sorry to interrupt, I need to talk to somebody about my bill right now, please."


@pytest.fixture(scope="module")
def caller_audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The caller's sentence (then 60 s of silence) as the RTP payload sipp plays."""
    return spoken_ulaw(tmp_path_factory.mktemp("caller-audio"), CALLER_SAYS)


@pytest.fixture(scope="module")
def turn_worker(local_env: LocalEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProc]:
    assert local_env.endpoints is not None
    log = tmp_path_factory.mktemp("turn-worker") / "worker.log"
    w = start_worker(local_env.endpoints, log, f"siphon-turns-{uuid.uuid4().hex[:6]}")
    yield w
    assert w.stop() == 0, w.text()[-3000:]


@dataclass
class Timeline:
    """The agent's attribute changes of one call, in the order LiveKit showed them (no clock involved)."""

    events: list[tuple[str, str]] = field(default_factory=list)  # (attribute, value), deduplicated consecutively

    def add(self, attrs: dict[str, str]) -> None:
        for key in ("lk.agent.state", CALLER_SPEECH_ATTRIBUTE, INTERRUPTED_ATTRIBUTE, UTTERANCES_ATTRIBUTE):
            value = attrs.get(key)
            if value is not None and self.last(key) != value:
                self.events.append((key, value))

    def last(self, key: str) -> str | None:
        return next((v for k, v in reversed(self.events) if k == key), None)

    def index(self, key: str, value: str) -> int:
        return next((i for i, e in enumerate(self.events) if e == (key, value)), -1)


def call_with_caller_speech(
    ep: Endpoints, w: WorkerProc, audio: Path, number: str, allow_interruptions: bool
) -> tuple[Timeline, sipp.CallEnd]:
    """A real call on a route with ``allow_interruptions``; the caller speaks SPEAKS_AFTER_S s after the answer. Watched until the
    agent's first utterance (the greeting) is over, finished or interrupted."""
    route = RouteMetadata(
        route=f"barge-in-{'on' if allow_interruptions else 'off'}",
        called_number=number,
        agent_config=AgentConfig(
            llm={"provider": "local", "model": "scripted", "greeting": LONG_GREETING},
            allow_interruptions=allow_interruptions,
            end_call=False,
        ),
    )
    timeline = Timeline()

    def watch(room: str) -> None:  # the agent's attributes, until its first utterance is over
        async def poll() -> None:
            lk = api.LiveKitAPI(ep.livekit_url, ep.api_key, ep.api_secret)
            try:
                deadline = asyncio.get_running_loop().time() + 3 * WAIT  # a failure bound only
                while asyncio.get_running_loop().time() < deadline and timeline.last(UTTERANCES_ATTRIBUTE) in (
                    None,
                    "0",
                ):
                    parts = (await lk.room.list_participants(api.ListParticipantsRequest(room=room))).participants
                    for p in parts:
                        if p.kind == api.ParticipantInfo.Kind.AGENT:
                            timeline.add(dict(p.attributes))
                    await asyncio.sleep(0.05)
            finally:
                await lk.aclose()

        asyncio.run(poll())

    seen, end, _ = answered_call(
        ep, w.agent_name, number, route, watch,
        audio=sipp.CallerAudio(audio, after_s=SPEAKS_AFTER_S), hold_s=3 * WAIT,
    )  # fmt: skip
    assert seen.room and seen.attributes, w.text()[-3000:]
    return timeline, end


def greeting_states(t: Timeline) -> list[str]:
    """The agent's states from its first ``speaking`` until its greeting (first utterance) was over."""
    end = t.index(UTTERANCES_ATTRIBUTE, "1")
    assert end >= 0, f"the greeting never ended: {t.events}"
    return [v for k, v in t.events[t.index("lk.agent.state", "speaking") : end] if k == "lk.agent.state"]


def test_caller_speech_interrupts_the_greeting_when_interruptions_are_on(
    endpoints: Endpoints, turn_worker: WorkerProc, caller_audio: Path
) -> None:
    """VAD hears the caller, and the agent stops speaking mid-greeting (``listening`` before the greeting is over).
    The offline STT transcribes nothing, so livekit-agents classifies the interruption as false and may resume
    the greeting afterwards (``resume_false_interruption``); with a real STT the words end the greeting."""
    t, end = call_with_caller_speech(endpoints, turn_worker, caller_audio, "+15550177001", allow_interruptions=True)
    spoke = t.index(CALLER_SPEECH_ATTRIBUTE, "1")
    assert spoke >= 0, f"VAD never detected the caller: {t.events}\n{turn_worker.text()[-3000:]}"
    stopped = t.events.index(("lk.agent.state", "listening")) if ("lk.agent.state", "listening") in t.events else -1
    assert stopped > spoke, f"the agent did not stop speaking when the caller spoke: {t.events}"
    # Stopped mid-greeting: either cut short, or paused and resumed (speaking again before the greeting was over).
    cut_short = t.last(INTERRUPTED_ATTRIBUTE) == "1"
    assert cut_short or greeting_states(t).count("speaking") >= 2, f"the greeting was not interrupted: {t.events}"
    assert end.completed, end


def test_caller_speech_does_not_interrupt_the_greeting_when_interruptions_are_off(
    endpoints: Endpoints, turn_worker: WorkerProc, caller_audio: Path
) -> None:
    t, end = call_with_caller_speech(endpoints, turn_worker, caller_audio, "+15550177002", allow_interruptions=False)
    assert t.index(CALLER_SPEECH_ATTRIBUTE, "1") >= 0, f"VAD never detected the caller: {t.events}"
    assert t.index(CALLER_SPEECH_ATTRIBUTE, "1") < t.index(UTTERANCES_ATTRIBUTE, "1"), t.events  # during the greeting
    # Spoken in one go: "speaking" once (its end may show "listening" just before the utterance count changes).
    assert greeting_states(t).count("speaking") == 1, f"the greeting stopped while the caller spoke: {t.events}"
    assert t.last(INTERRUPTED_ATTRIBUTE) in (None, "0"), f"the greeting was interrupted: {t.events}"
    assert end.completed, end
