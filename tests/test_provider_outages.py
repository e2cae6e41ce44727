"""Provider outages on real SIP calls end in speech, never dead air: each model kind of the worker is a fallback
chain (the prod trio first, an OpenAI-compatible second entry), and the first entry's stand-in refuses (503) with its
fault switch. The caller hears the agent through the next entry; when every entry of a kind is down, the call ends.

The worker runs as ``tests/test_prod_trio_call.py`` starts it (its ECS task definition on moto, keys as secrets, a
non-local environment). The caller's silence after each fault is printed (``silence after ...``) and compared with a
call of the same worker and stand-ins without a fault, in the same run.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from contract.metadata import AgentConfig, RouteMetadata
from infra import sipp
from localenv.manager import LocalEnv
from tests.caller_audio import spoken_ulaw
from tests.cartesia_standin import CartesiaStandIn
from tests.deepgram_standin import DeepgramStandIn
from tests.openai_standin import OpenAIStandIn
from tests.rtp_tap import RtpTap, first_sound
from tests.test_openai_call import SPEAKS_AFTER_S, deployed_worker, user_texts, wait_utterances
from tests.test_worker_live import WorkerProc, _delete_route, _inbound_route, answered_call

ENVIRONMENT = "staging"
CALLER_SAYS = "Hello, I would like to check the status of my order, please."
DEEPGRAM_HEARS = "I would like to check the status of my order."
OPENAI_HEARS = "Order status, please."  # the second STT's transcript: tells which entry heard the caller
INSTRUCTIONS = "You answer the provider outage test line."
PRIMARY_LLM, SECOND_LLM = "gpt-4.1-mini", "gpt-4o-mini"
KEYS = ("DEEPGRAM_API_KEY", "OPENAI_API_KEY", "CARTESIA_API_KEY")


@dataclass
class StandIns:
    """The first entries' stand-ins (Deepgram, an OpenAI LLM, Cartesia) and the OpenAI one every second entry uses."""

    deepgram: DeepgramStandIn
    llm: OpenAIStandIn
    cartesia: CartesiaStandIn
    second: OpenAIStandIn

    def clear(self) -> None:
        """Every fault switch off."""
        self.deepgram.clear_faults()
        self.llm.refuse = self.second.refuse = None
        self.llm.first_token_delay_s = 0.0
        self.cartesia.refuse = self.cartesia.close_after_chunks = None
        self.cartesia.hang = False


@pytest.fixture(scope="module")
def standins() -> Iterator[StandIns]:
    with (DeepgramStandIn(transcripts=(DEEPGRAM_HEARS,)) as dg, OpenAIStandIn() as llm, CartesiaStandIn() as ct,
          OpenAIStandIn(transcript=OPENAI_HEARS) as second):  # fmt: skip
        yield StandIns(dg, llm, ct, second)


def chains(s: StandIns) -> dict[str, list[dict[str, Any]]]:
    """Each kind: the prod trio's provider first, an OpenAI-compatible one second."""
    second = s.second.base_url
    return {
        "stt": [{"provider": "deepgram", "model": "nova-3", "language": "en", "base_url": s.deepgram.base_url},
                {"provider": "openai", "model": "gpt-4o-mini-transcribe", "base_url": second, "use_realtime": False}],
        "llm": [{"provider": "openai", "model": PRIMARY_LLM, "base_url": s.llm.base_url},
                {"provider": "openai", "model": SECOND_LLM, "base_url": second}],
        "tts": [{"provider": "cartesia", "model": "sonic-2", "base_url": s.cartesia.base_url},
                {"provider": "openai", "model": "gpt-4o-mini-tts", "base_url": second, "response_format": "pcm"}],
    }  # fmt: skip


@pytest.fixture(scope="module")
def worker(local_env: LocalEnv, standins: StandIns, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProc]:
    keys = {name: f"{name.split('_')[0].lower()}-key-{secrets.token_hex(12)}" for name in KEYS}
    log = tmp_path_factory.mktemp("outage-worker") / "worker.log"
    with deployed_worker(local_env, f"outage-{uuid.uuid4().hex[:6]}", ENVIRONMENT, chains(standins), keys,
                         log) as (w, _, _):  # fmt: skip
        yield w


@pytest.fixture(scope="module")
def caller_audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return spoken_ulaw(tmp_path_factory.mktemp("outage-caller"), CALLER_SAYS)


@dataclass
class Heard:
    """What the caller heard on one call: seconds from the answer (the first RTP packet) to the agent's first sound,
    and from the end of the caller's sentence to the agent's next sound (None: never)."""

    to_greeting: float | None
    to_reply: float | None
    ended_by_bye: bool


def _call(local_env: LocalEnv, w: WorkerProc, number: str, audio: Path, utterances: int = 2,
          during: Callable[[str], None] | None = None, hold_s: float = 60,
          speaks_after: float = SPEAKS_AFTER_S) -> Heard:  # fmt: skip
    """A real call on a route of its own: the caller speaks after ``speaks_after`` s; held until the agent finished
    ``utterances`` utterances (or ``during`` returns)."""
    assert local_env.endpoints is not None
    route = RouteMetadata(route=f"outage-{number[-3:]}", called_number=number,
                          agent_config=AgentConfig(system_instructions=INSTRUCTIONS, end_call=False))  # fmt: skip
    speech_s = (audio.stat().st_size - 60 * 8000) / 8000  # spoken_ulaw: the sentence, then 60 s of silence
    with RtpTap() as tap:
        _, end, _ = answered_call(
            local_env.endpoints, w.agent_name, number, route,
            during or (lambda room: wait_utterances(w, room, utterances)),
            audio=sipp.CallerAudio(audio, after_s=speaks_after), hold_s=hold_s,
        )  # fmt: skip
        packets = tap.packets()
    if not packets:
        return Heard(None, None, end.completed)
    answered = packets[0].at
    greeting = first_sound(packets)
    spoken_end = answered + speaks_after + speech_s
    reply = first_sound([p for p in packets if p.at > spoken_end])
    return Heard(greeting.at - answered if greeting else None, reply.at - spoken_end if reply else None,
                 end.completed)  # fmt: skip


def _figure(what: str, heard: Heard, baseline: Heard) -> None:
    print(f"silence after {what}: to greeting {heard.to_greeting} s (no fault {baseline.to_greeting} s), "
          f"after the caller's sentence {heard.to_reply} s (no fault {baseline.to_reply} s)")  # fmt: skip


@pytest.fixture(scope="module")
def baseline(local_env: LocalEnv, worker: WorkerProc, standins: StandIns, caller_audio: Path) -> Heard:
    """A call with every first entry up: the figures each outage is compared with."""
    standins.clear()
    heard = _call(local_env, worker, "+15550100380", caller_audio)
    assert heard.to_greeting is not None and heard.to_reply is not None, worker.text()[-3000:]
    return heard


def test_with_cartesia_down_the_caller_hears_the_second_tts(
    local_env: LocalEnv, worker: WorkerProc, standins: StandIns, caller_audio: Path, baseline: Heard
) -> None:
    before = len(standins.second.requests("/audio/speech"))
    standins.cartesia.refuse = 503
    try:
        heard = _call(local_env, worker, "+15550100381", caller_audio)
    finally:
        standins.clear()
    _figure("Cartesia refusing (503)", heard, baseline)
    assert heard.to_greeting is not None and heard.to_reply is not None, worker.text()[-3000:]
    assert len(standins.second.requests("/audio/speech")) > before, "the second TTS spoke"
    assert any(r.status == 503 for r in standins.cartesia.requests()), "Cartesia was asked and refused"


def test_with_the_first_llm_down_the_caller_hears_the_second_llms_words(
    local_env: LocalEnv, worker: WorkerProc, standins: StandIns, caller_audio: Path, baseline: Heard
) -> None:
    before = len(standins.second.requests("/chat/completions"))
    standins.llm.refuse = 503
    try:
        heard = _call(local_env, worker, "+15550100382", caller_audio)
    finally:
        standins.clear()
    _figure("the first LLM refusing (503)", heard, baseline)
    assert heard.to_greeting is not None and heard.to_reply is not None, worker.text()[-3000:]
    chats = standins.second.requests("/chat/completions")[before:]
    assert chats and {r.body["model"] for r in chats if r.body} == {SECOND_LLM}, chats
    spoken = " ".join(" ".join(m.transcript for m in standins.cartesia.messages()).split())
    assert " ".join(str(chats[0].reply).split()) in spoken, "the second LLM's greeting is what the caller heard"


def test_with_deepgram_down_the_second_stt_hears_the_caller_and_the_agent_replies(
    local_env: LocalEnv, worker: WorkerProc, standins: StandIns, caller_audio: Path, baseline: Heard
) -> None:
    before = len(standins.second.requests("/audio/transcriptions"))
    standins.deepgram.refuse(503)
    try:
        heard = _call(local_env, worker, "+15550100383", caller_audio)
    finally:
        standins.clear()
    _figure("Deepgram refusing (503)", heard, baseline)
    assert heard.to_reply is not None, worker.text()[-3000:]
    assert len(standins.second.requests("/audio/transcriptions")) > before, "the second STT heard the caller"
    chats = [r for r in standins.llm.requests("/chat/completions") if INSTRUCTIONS in json.dumps(r.body)]
    assert any(OPENAI_HEARS in " ".join(user_texts(r)) for r in chats), "its transcript is the user's turn"


def test_with_deepgrams_handshake_hanging_the_second_stt_hears_the_caller(
    local_env: LocalEnv, worker: WorkerProc, standins: StandIns, caller_audio: Path, baseline: Heard
) -> None:
    """A hung handshake is retried forever by the plugin alone (a deaf agent); bounded by ``stt_timeout``, the chain
    moves on."""
    before = len(standins.second.requests("/audio/transcriptions"))
    standins.deepgram.hang_handshake(True)
    try:
        heard = _call(local_env, worker, "+15550100385", caller_audio)
    finally:
        standins.clear()
    _figure("Deepgram's handshake hanging", heard, baseline)
    assert any(c.status is None for c in standins.deepgram.connections()), "Deepgram was asked and hung"
    assert heard.to_reply is not None, worker.text()[-3000:]
    assert len(standins.second.requests("/audio/transcriptions")) > before, "the second STT heard the caller"


def test_with_deepgram_closing_at_the_callers_words_the_second_stt_hears_them(
    local_env: LocalEnv, worker: WorkerProc, standins: StandIns, caller_audio: Path, baseline: Heard
) -> None:
    before = len(standins.second.requests("/audio/transcriptions"))
    standins.deepgram.close_mid_stream(1011, on_speech=True, times=None)
    try:
        heard = _call(local_env, worker, "+15550100386", caller_audio)
    finally:
        standins.clear()
    _figure("Deepgram closing its stream mid-call (1011)", heard, baseline)
    assert standins.deepgram.accepted(), "Deepgram's stream was open when it closed"
    assert heard.to_reply is not None, worker.text()[-3000:]
    assert len(standins.second.requests("/audio/transcriptions")) > before, "the second STT heard the caller"


def test_with_cartesias_handshake_hanging_the_caller_hears_the_second_tts(
    local_env: LocalEnv, worker: WorkerProc, standins: StandIns, caller_audio: Path, baseline: Heard
) -> None:
    before = len(standins.second.requests("/audio/speech"))
    standins.cartesia.hang = True
    try:
        heard = _call(local_env, worker, "+15550100387", caller_audio)
    finally:
        standins.clear()
    _figure("Cartesia's handshake hanging", heard, baseline)
    assert heard.to_greeting is not None and heard.to_reply is not None, worker.text()[-3000:]
    assert len(standins.second.requests("/audio/speech")) > before, "the second TTS spoke"


def test_with_cartesia_closing_mid_utterance_the_caller_hears_the_second_tts(
    local_env: LocalEnv, worker: WorkerProc, standins: StandIns, caller_audio: Path, baseline: Heard
) -> None:
    """The greeting's socket closes after two chunks: the rest of that utterance is lost (livekit-agents drops a
    segment the caller already heard part of), and the reply after the caller's sentence comes from the second TTS."""
    before = len(standins.second.requests("/audio/speech"))
    standins.cartesia.close_after_chunks = 2
    try:
        heard = _call(local_env, worker, "+15550100388", caller_audio)
    finally:
        standins.clear()
    _figure("Cartesia closing its socket mid-utterance (1011)", heard, baseline)
    assert any(c.closed_socket for c in standins.cartesia.contexts()), "Cartesia closed mid-utterance"
    assert heard.to_reply is not None, worker.text()[-3000:]
    assert len(standins.second.requests("/audio/speech")) > before, "the second TTS spoke"


def test_with_the_first_llm_hanging_the_caller_hears_the_second_llms_words(
    local_env: LocalEnv, worker: WorkerProc, standins: StandIns, caller_audio: Path, baseline: Heard
) -> None:
    """The first LLM accepts the request and sends nothing for a minute; bounded by ``llm_timeout``, the chain moves
    on. The caller speaks late enough not to cut the greeting that waits out the bound."""
    before = len(standins.second.requests("/chat/completions"))
    standins.llm.first_token_delay_s = 60.0
    try:
        heard = _call(local_env, worker, "+15550100389", caller_audio, speaks_after=15.0)
    finally:
        standins.clear()
    _figure("the first LLM hanging (no token for 60 s)", heard, baseline)
    assert heard.to_greeting is not None and heard.to_reply is not None, worker.text()[-3000:]
    chats = standins.second.requests("/chat/completions")[before:]
    assert chats and {r.body["model"] for r in chats if r.body} == {SECOND_LLM}, chats


@pytest.mark.parametrize("cartesia_fault", ["refuses", "hangs"])
def test_with_every_tts_down_the_call_ends_with_a_bye_instead_of_dead_air(
    local_env: LocalEnv, worker: WorkerProc, standins: StandIns, cartesia_fault: str
) -> None:
    """Cartesia refuses (or hangs) and the second TTS refuses: nothing can speak, so the worker ends the call (its
    hand-over, then a hang-up) and the bridge sends the caller a BYE, well before the caller would give up."""
    ep = local_env.endpoints
    assert ep is not None
    number = "+15550100384"
    route = RouteMetadata(route="outage-384", called_number=number,
                          agent_config=AgentConfig(system_instructions=INSTRUCTIONS, end_call=False))  # fmt: skip
    trunk_id, rule_id = asyncio.run(_inbound_route(ep, worker.agent_name, number, route.to_json()))
    if cartesia_fault == "hangs":
        standins.cartesia.hang = True
    else:
        standins.cartesia.refuse = 503
    standins.second.refuse = 503
    try:
        call = sipp.place(ep.sip_address, number, caller="+15550109002", hold_s=150)
        end = call.wait(170)
        lasted = time.monotonic() - call.started
    finally:
        standins.clear()
        asyncio.run(_delete_route(ep, trunk_id, rule_id))
    print(f"silence with every TTS down (Cartesia {cartesia_fault}): the worker ended the call {lasted:.1f} s after "
          "it was placed")  # fmt: skip
    assert end.completed, end  # answered, then ended by a BYE the caller received
    assert lasted < 140, "the caller's hold time ran out first: dead air"
    assert "tts" in worker.text().lower(), "the worker says why"
