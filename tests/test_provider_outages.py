"""Provider outages on real SIP calls end in speech, never dead air: each model kind of the worker is a fallback
chain (the prod trio first, an OpenAI-compatible second entry), and the first entry's stand-in refuses (503), hangs
or closes its stream mid-call with its fault switches (``FAULTS``). The caller hears the agent through the next entry;
when every entry of a kind is down, the call ends.

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

from contract.metadata import AgentConfig, ModelKind, RouteMetadata
from infra import sipp
from localenv.manager import LocalEnv
from tests.caller_audio import spoken_ulaw
from tests.cartesia_standin import CartesiaStandIn
from tests.deepgram_standin import DeepgramStandIn
from tests.openai_standin import OpenAIStandIn
from tests.rtp_tap import RtpTap, first_sound
from tests.test_openai_call import SPEAKS_AFTER_S, deployed_worker, user_texts, wait_utterances
from tests.test_worker_live import WorkerProc, _delete_route, _inbound_route, answered_call
from worker.models.hearing import ASK_AGAIN

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


def outage_call(local_env: LocalEnv, w: WorkerProc, number: str, audio: Path, utterances: int = 2,
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
    heard = outage_call(local_env, worker, "+15550100380", caller_audio)
    assert heard.to_greeting is not None and heard.to_reply is not None, worker.text()[-3000:]
    return heard


@dataclass(frozen=True)
class Fault:
    """A fault of one kind's first entry, set on its stand-in for one call: the caller should hear the next entry."""

    what: str  # printed with the figures
    kind: ModelKind
    apply: Callable[[StandIns], None]
    seen: Callable[[StandIns], int]  # how many times, so far, the first entry was asked and failed as set
    delays_greeting_by: str | None = None  # the worker setting a hang makes the greeting wait for (benches)
    delays_reply_by: str | None = None  # the worker setting it makes the reply to the caller's sentence wait for
    speaks_after: float = SPEAKS_AFTER_S  # a hang of the LLM delays the greeting: the caller waits it out
    words_lost: bool = False  # the caller's words never reach an STT: the agent asks for them again


SECOND_PATH: dict[ModelKind, str] = {"stt": "/audio/transcriptions", "llm": "/chat/completions",
                                     "tts": "/audio/speech"}  # fmt: skip
"""The second entry's endpoint (the OpenAI stand-in) that serves a kind once its first entry failed."""

FAULTS = {
    "deepgram-refuses": Fault("Deepgram refusing (503)", "stt", lambda s: s.deepgram.refuse(503),
                              lambda s: sum(c.status == 503 for c in s.deepgram.connections())),
    "deepgram-hangs": Fault("Deepgram's handshake hanging", "stt", lambda s: s.deepgram.hang_handshake(True),
                            lambda s: sum(c.status is None for c in s.deepgram.connections())),
    "deepgram-closes": Fault("Deepgram closing its stream at the caller's words (1011)", "stt",
                             lambda s: s.deepgram.close_mid_stream(1011, on_speech=True, times=None),
                             lambda s: sum(c.closed_by == "server" for c in s.deepgram.connections())),
    "deepgram-stalls": Fault("Deepgram's stream going quiet at the caller's words", "stt",
                             lambda s: s.deepgram.stall_at_speech(True),
                             lambda s: sum(c.stalled for c in s.deepgram.connections()),
                             delays_reply_by="stt_timeout", words_lost=True),
    "llm-refuses": Fault("the first LLM refusing (503)", "llm", lambda s: setattr(s.llm, "refuse", 503),
                         lambda s: sum(r.status == 503 for r in s.llm.requests("/chat/completions"))),
    "llm-hangs": Fault("the first LLM hanging (no token for 60 s)", "llm",
                       lambda s: setattr(s.llm, "first_token_delay_s", 60.0),
                       lambda s: len(s.llm.requests("/chat/completions")), "llm_timeout", speaks_after=15.0),
    "cartesia-refuses": Fault("Cartesia refusing (503)", "tts", lambda s: setattr(s.cartesia, "refuse", 503),
                              lambda s: sum(r.status == 503 for r in s.cartesia.requests())),
    "cartesia-hangs": Fault("Cartesia's handshake hanging", "tts", lambda s: setattr(s.cartesia, "hang", True),
                            lambda s: sum(r.status == 0 for r in s.cartesia.requests()), "tts_timeout"),
    "cartesia-closes": Fault("Cartesia closing its socket mid-utterance (1011)", "tts",
                             lambda s: setattr(s.cartesia, "close_after_chunks", 2),
                             lambda s: sum(c.closed_socket for c in s.cartesia.contexts())),
}  # fmt: skip
"""Each first entry refusing, hanging past its bound (``worker.models.bounds``), or closing its stream mid-call.
A Deepgram stream that goes quiet while the caller speaks is failed ``stt_timeout`` after the caller stopped
(``worker.models.hearing``); those words are lost, and the agent asks for them again. A stream Cartesia closes
mid-utterance loses the rest of that utterance (livekit-agents drops a segment the caller
already heard part of); the reply after the caller's sentence comes from the second TTS."""


@pytest.mark.parametrize("name", FAULTS)
def test_after_a_first_entrys_fault_the_caller_hears_the_next_entry(
    local_env: LocalEnv, worker: WorkerProc, standins: StandIns, caller_audio: Path, baseline: Heard, name: str
) -> None:
    fault = FAULTS[name]
    second = SECOND_PATH[fault.kind]
    before, failed = len(standins.second.requests(second)), fault.seen(standins)
    fault.apply(standins)
    try:
        number = f"+155501004{list(FAULTS).index(name):02d}"
        heard = outage_call(local_env, worker, number, caller_audio, speaks_after=fault.speaks_after)
        assert fault.seen(standins) > failed, f"the first {fault.kind} was asked and failed as set"
    finally:
        standins.clear()
    _figure(fault.what, heard, baseline)
    assert heard.to_greeting is not None and heard.to_reply is not None, worker.text()[-3000:]
    if fault.words_lost:  # the quiet stream failed; the agent asked the caller to say it again
        assert '"the STT heard nothing; asking the caller to repeat"' in worker.text(), worker.text()[-3000:]
        chats = standins.llm.requests("/chat/completions")
        assert any(ASK_AGAIN in json.dumps(r.body) for r in chats), "the reply asks the caller to repeat"
        return
    served = standins.second.requests(second)[before:]
    assert served, f"the second {fault.kind} served"
    if fault.kind == "llm":  # the second model's words are what the caller heard
        assert {r.body["model"] for r in served if r.body} == {SECOND_LLM}, served
        spoken = " ".join(" ".join(m.transcript for m in standins.cartesia.messages()).split())
        assert " ".join(str(served[0].reply).split()) in spoken, "the second LLM's greeting is what was spoken"
    if fault.kind == "stt":  # the second STT's transcript became the user's turn
        chats = [r for r in standins.llm.requests("/chat/completions") if INSTRUCTIONS in json.dumps(r.body)]
        assert any(OPENAI_HEARS in " ".join(user_texts(r)) for r in chats), "its transcript is the user's turn"


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
