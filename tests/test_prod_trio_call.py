"""A real SIP call on the production trio of ``stacks/prod.yaml``: Deepgram streaming STT, the OpenAI LLM and Cartesia
websocket TTS, each the provider's own livekit-plugins package pointed (its ``base_url``) at a loopback stand-in that
speaks the provider's wire protocol (``tests/deepgram_standin.py``, ``tests/openai_standin.py``,
``tests/cartesia_standin.py``).

The worker runs as its ECS deployment runs it (``tests/test_openai_call.py`` explains how): created on moto by the
project's provider, the three keys injected as Secrets Manager secrets, the environment not ``local``. The caller is
sipp through the real livekit-sip; it speaks a sentence after the greeting, and what it hears back is read off the
wire (``tests/rtp_tap.py``).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from contract.metadata import AgentConfig, RouteMetadata
from infra import sipp
from infra.verify import Observation
from localenv.manager import LocalEnv
from tests.caller_audio import spoken_ulaw
from tests.cartesia_standin import CartesiaStandIn
from tests.deepgram_standin import DeepgramStandIn
from tests.openai_standin import OpenAIStandIn
from tests.rtp_tap import RtpTap, first_sound, loud_seconds
from tests.test_openai_call import SPEAKS_AFTER_S, deployed_worker, user_texts, wait_utterances
from tests.test_worker_live import WorkerProc, _delete_route, _inbound_route, answered_call

ENVIRONMENT = "staging"  # not "local": the worker builds the providers' plugins, never an offline model
CALLER_SAYS = "Hello, I would like to check the status of my order, please."
TRANSCRIPT = "I would like to check the status of my order."  # what the Deepgram stand-in hears in it
INSTRUCTIONS = "You answer the production trio test line."
KEYS = ("DEEPGRAM_API_KEY", "OPENAI_API_KEY", "CARTESIA_API_KEY")


@dataclass
class StandIns:
    """The three providers' stand-ins."""

    deepgram: DeepgramStandIn
    openai: OpenAIStandIn
    cartesia: CartesiaStandIn


@pytest.fixture(scope="module")
def standins() -> Iterator[StandIns]:
    with DeepgramStandIn(transcripts=(TRANSCRIPT,)) as dg, OpenAIStandIn() as oa, CartesiaStandIn() as ct:
        yield StandIns(dg, oa, ct)


def trio(s: StandIns) -> dict[str, dict[str, Any]]:
    """The prod stack's three models (``deepgram/nova-3:en``, ``openai/gpt-4.1-mini``, ``cartesia/sonic-2``) as
    provider dicts whose ``base_url`` is the stand-in's."""
    return {
        "stt": {"provider": "deepgram", "model": "nova-3", "language": "en", "base_url": s.deepgram.base_url},
        "llm": {"provider": "openai", "model": "gpt-4.1-mini", "base_url": s.openai.base_url},
        "tts": {"provider": "cartesia", "model": "sonic-2", "base_url": s.cartesia.base_url},
    }


@dataclass
class Deployed:
    """The worker started from the deployment's task definition, and the keys the deployment was given."""

    worker: WorkerProc
    keys: dict[str, str]
    secret_env: dict[str, str]


@pytest.fixture(scope="module")
def deployed(local_env: LocalEnv, standins: StandIns, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    keys = {name: f"{name.split('_')[0].lower()}-key-{secrets.token_hex(12)}" for name in KEYS}
    log = tmp_path_factory.mktemp("trio-worker") / "worker.log"
    with deployed_worker(local_env, f"trio-{uuid.uuid4().hex[:6]}", ENVIRONMENT, trio(standins), keys,
                         log) as (w, _, injected):  # fmt: skip
        yield Deployed(w, keys, injected)


@dataclass
class TrioCall:
    """One answered call: what LiveKit saw, how it ended, and when the caller's sentence started (monotonic)."""

    seen: Observation
    end: sipp.CallEnd
    answered_at: float
    heard: RtpTap


@pytest.fixture(scope="module")
def spoken_call(
    local_env: LocalEnv, deployed: Deployed, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TrioCall]:
    """The agent greets (Cartesia), the caller speaks (Deepgram hears it), the agent replies (OpenAI, then Cartesia)."""
    assert local_env.endpoints is not None
    audio = spoken_ulaw(tmp_path_factory.mktemp("trio-caller"), CALLER_SAYS)
    route = RouteMetadata(route="trio", called_number="+15550100391",
                          agent_config=AgentConfig(system_instructions=INSTRUCTIONS, end_call=False))  # fmt: skip
    with RtpTap() as tap:
        started = time.monotonic()
        seen, end, _ = answered_call(
            local_env.endpoints, deployed.worker.agent_name, "+15550100391", route,
            lambda room: wait_utterances(deployed.worker, room, 2),
            audio=sipp.CallerAudio(audio, after_s=SPEAKS_AFTER_S),
        )  # fmt: skip
        yield TrioCall(seen, end, started, tap)


def test_the_callers_audio_reaches_deepgram_as_linear16_frames(spoken_call: TrioCall, standins: StandIns) -> None:
    """The plugin opened one stream with Deepgram's query and sent the caller's speech as 16 kHz linear16 frames."""
    assert spoken_call.seen.attributes, "the agent answered"
    (stream,) = [c for c in standins.deepgram.accepted() if c.audio_seconds > 0]
    assert (stream.query["encoding"], stream.sample_rate, stream.channels) == ("linear16", 16000, 1), stream.query
    assert stream.query["model"] == "nova-3" and stream.query["language"] == "en", stream.query
    assert stream.audio_seconds > 2.0 and stream.rms > 300, (stream.audio_seconds, stream.rms)
    assert TRANSCRIPT in stream.finals, stream.finals


def test_the_transcript_is_the_llms_user_turn_and_its_reply_is_what_cartesia_speaks(
    spoken_call: TrioCall, standins: StandIns, deployed: Deployed
) -> None:
    """Deepgram's final transcript is the user message of the chat request that produced the reply, and the reply's
    text is what the agent sent to Cartesia."""
    chats = [r for r in standins.openai.requests("/chat/completions") if INSTRUCTIONS in json.dumps(r.body)]
    replies = [r for r in chats if any(TRANSCRIPT in t for t in user_texts(r))]
    assert replies, (f"no chat request answers the transcript: {[user_texts(r) for r in chats]}\n"
                     f"{deployed.worker.text()[-3000:]}")  # fmt: skip
    spoken = " ".join(" ".join(m.transcript for m in standins.cartesia.messages()).split())
    for r in (chats[0], replies[0]):  # the greeting, then the reply
        assert " ".join(str(r.reply).split()) in spoken, (r.reply, spoken)
    contexts = standins.cartesia.contexts()
    assert len(contexts) >= 2 and all(c.done and c.audio_seconds > 0.3 for c in contexts[:2]), contexts


def test_cartesias_audio_reaches_the_caller_as_speech_on_the_wire(spoken_call: TrioCall) -> None:
    """The RTP the caller received carries speech (PCMU louder than comfort noise) for the greeting and the reply."""
    packets = spoken_call.heard.packets(since=spoken_call.answered_at)
    assert packets, "no RTP reached the caller"
    first = first_sound(packets)
    assert first is not None, [round(p.rms) for p in packets[:50]]
    assert loud_seconds(packets) > 1.5, loud_seconds(packets)


def test_each_provider_receives_the_key_the_deployment_injected(spoken_call: TrioCall, standins: StandIns,
                                                                deployed: Deployed) -> None:  # fmt: skip
    """Each key reaches the container only as a secret, and each provider's requests carry its own key in its own
    header (Deepgram ``Authorization: Token``, OpenAI ``Bearer``, Cartesia ``X-API-Key``)."""
    assert {k: deployed.secret_env[k] for k in KEYS} == deployed.keys
    assert {c.headers.get("authorization") for c in standins.deepgram.accepted()} == {
        f"Token {deployed.keys['DEEPGRAM_API_KEY']}"}  # fmt: skip
    assert {r.headers.get("authorization") for r in standins.openai.requests()} == {
        f"Bearer {deployed.keys['OPENAI_API_KEY']}"}  # fmt: skip
    assert {r.headers.get("x-api-key") for r in standins.cartesia.requests()} == {deployed.keys["CARTESIA_API_KEY"]}


def test_a_refused_deepgram_key_is_never_logged(
    local_env: LocalEnv, spoken_call: TrioCall, standins: StandIns, deployed: Deployed
) -> None:
    """With Deepgram refusing the key (401), the call reaches the agent, which cannot hear and ends it, and no key
    appears in the worker's log, whatever the plugin and the worker write about the refusal."""
    ep = local_env.endpoints
    assert ep is not None
    number = "+15550100392"
    route = RouteMetadata(route="trio-refused", called_number=number,
                          agent_config=AgentConfig(system_instructions=INSTRUCTIONS, end_call=False))  # fmt: skip
    trunk_id, rule_id = asyncio.run(_inbound_route(ep, deployed.worker.agent_name, number, route.to_json()))
    standins.deepgram.refuse(401)
    try:
        call = sipp.place(ep.sip_address, number, caller="+15550109003", hold_s=20)
        call.wait(60)
    finally:
        standins.deepgram.clear_faults()
        asyncio.run(_delete_route(ep, trunk_id, rule_id))
    refused = [c for c in standins.deepgram.connections() if c.status == 401]
    assert refused, "the plugin asked Deepgram and was refused"
    assert not [k for k in deployed.keys.values() if k in deployed.worker.text()]
