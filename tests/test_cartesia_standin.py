"""The real livekit-plugins-cartesia 1.8.9 TTS against the loopback Cartesia stand-in (``tests/cartesia_standin.py``),
outside any job or room: the plugin is built inside livekit-agents' http context and driven as an agent session
drives it (``stream()``, text pushed, then ``end_input()``), or through ``synthesize()`` (``POST /tts/bytes``).

What the plugin sends is read from the stand-in's records; what it yields is measured (loudness, length against
espeak-ng's own output for the same sentences); each fault switch is shown to surface as the plugin and
livekit-agents' retry loop make it surface (status, retries, time taken), with the key in no error and no log.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import struct
import subprocess
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import numpy as np
import pytest
from livekit import rtc
from livekit.agents import APIConnectOptions, APIError, APIStatusError, APITimeoutError
from livekit.agents.types import USERDATA_TIMED_TRANSCRIPT
from livekit.agents.utils import http_context
from livekit.plugins import cartesia

from tests.cartesia_standin import CLOSE_CODE, CartesiaStandIn

KEY = "sk_car_" + secrets.token_hex(16)
VOICE = "f786b574-daa5-4673-aa0c-cbe3e8534c02"
SENTENCES = ("Thank you for calling the bank.", "Your balance is forty two dollars.")
TEXT = " ".join(SENTENCES)
FAST = APIConnectOptions(max_retry=0, retry_interval=0.1, timeout=2.0)
T = TypeVar("T")


@pytest.fixture
def standin() -> Iterator[CartesiaStandIn]:
    """A stand-in of its own per test, accepting ``KEY`` only, with every fault switch off."""
    with CartesiaStandIn(api_key=KEY) as s:
        yield s


def run(make: Callable[[cartesia.TTS], Awaitable[T]], base_url: str, *, key: str = KEY, **tts: Any) -> T:
    """``make(tts)`` in a fresh event loop, the plugin built in livekit-agents' http context and closed after."""

    async def main() -> T:
        async with http_context.open():
            plugin = cartesia.TTS(model="sonic-2", voice=VOICE, base_url=base_url, api_key=key, **tts)
            try:
                return await asyncio.wait_for(make(plugin), 30)
            finally:
                await plugin.aclose()

    return asyncio.run(main())


@dataclass
class Spoken:
    """What one streamed utterance yielded."""

    frames: list[rtc.AudioFrame]
    started: float  # time.monotonic() when the text was pushed
    first_frame_at: float | None

    @property
    def pcm(self) -> np.ndarray:
        """The frames' samples, in order."""
        return np.concatenate([np.frombuffer(bytes(f.data), dtype=np.int16) for f in self.frames])

    @property
    def seconds(self) -> float:
        """The frames' length."""
        return sum(f.samples_per_channel / f.sample_rate for f in self.frames)


async def utterance(
    plugin: cartesia.TTS, text: str = TEXT, conn_options: APIConnectOptions = FAST, sink: list[Any] | None = None
) -> Spoken:
    """``text`` pushed to a new stream in one piece, then its input ended; every frame it yields.
    ``sink`` (optional) gets the frames as they come, so a test still sees them when the stream raises."""
    frames = sink if sink is not None else []
    started, first = time.monotonic(), None
    async with plugin.stream(conn_options=conn_options) as stream:
        stream.push_text(text)
        stream.end_input()
        async for ev in stream:
            first = first or time.monotonic()
            frames.append(ev.frame)
    return Spoken(frames, started, first)


def espeak_seconds(text: str) -> float:
    """How long espeak-ng speaks ``text``, read from its own WAV output (the stand-in's voice and speed)."""
    wav = subprocess.run(["espeak-ng", "-v", "en-us", "-s", "175", "--stdout", "--", text],
                         capture_output=True, check=True, timeout=30).stdout  # fmt: skip
    rate, width = struct.unpack("<I", wav[24:28])[0], struct.unpack("<H", wav[34:36])[0] // 8
    return (len(wav) - wav.find(b"data") - 8) / width / rate


def rms(pcm: np.ndarray) -> float:
    """Root mean square of 16-bit samples (silence: 0; espeak-ng's speech: thousands)."""
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))


def raised(call: Callable[[], object]) -> tuple[BaseException, float]:
    """The exception ``call`` raised, and the seconds it took to raise it."""
    t0 = time.monotonic()
    with pytest.raises(Exception) as info:  # noqa: PT011 - each test asserts the type it expects
        call()
    return info.value, time.monotonic() - t0


@pytest.fixture
def spoken(standin: CartesiaStandIn) -> Spoken:
    """``TEXT`` streamed once through the plugin, on default options but a 2 s timeout and no retry."""
    return run(utterance, standin.base_url)


# ---------------------------------------------------------------------------------------------- the audio


def test_a_streamed_utterance_comes_back_as_audible_speech(spoken: Spoken) -> None:
    assert spoken.frames and {f.sample_rate for f in spoken.frames} == {24000}
    assert {f.num_channels for f in spoken.frames} == {1}
    assert rms(spoken.pcm) > 500  # espeak-ng speaks at a few thousand; silence is 0


def test_a_streamed_utterance_lasts_as_long_as_espeak_ng_speaks_its_sentences(spoken: Spoken) -> None:
    """The plugin sends one sentence per message; the stand-in speaks each as it comes."""
    expected = sum(espeak_seconds(s) for s in SENTENCES)
    assert spoken.seconds == pytest.approx(expected, rel=0.02, abs=0.05)


def test_the_word_timestamps_reach_the_frames_as_the_sentences_timed_words(spoken: Spoken) -> None:
    words = [w for f in spoken.frames for w in f.userdata.get(USERDATA_TIMED_TRANSCRIPT, [])]
    assert "".join(words).split() == TEXT.split()
    assert all(a.end_time <= b.start_time + 1e-6 for a, b in itertools.pairwise(words))
    assert words[-1].end_time == pytest.approx(spoken.seconds, abs=0.05)


def test_synthesize_posts_the_text_to_tts_bytes_and_yields_its_speech(standin: CartesiaStandIn) -> None:
    async def once(plugin: cartesia.TTS) -> list[rtc.AudioFrame]:
        return [ev.frame async for ev in plugin.synthesize(TEXT, conn_options=FAST)]

    frames = run(once, standin.base_url)
    (request,) = standin.requests()
    assert (request.method, request.path, request.status) == ("POST", "/tts/bytes", 200)
    assert request.body is not None and request.body["transcript"] == TEXT
    assert (request.headers["x-api-key"], request.headers["cartesia-version"]) == (KEY, "2025-04-16")
    pcm = np.concatenate([np.frombuffer(bytes(f.data), dtype=np.int16) for f in frames])
    assert rms(pcm) > 500
    assert len(pcm) / 24000 == pytest.approx(espeak_seconds(TEXT), rel=0.02, abs=0.05)


# ---------------------------------------------------------------------------------------------- what the plugin sends


def test_the_handshake_carries_the_key_header_and_the_api_version(standin: CartesiaStandIn, spoken: Spoken) -> None:
    (upgrade,) = standin.requests()
    assert (upgrade.path, upgrade.status, upgrade.query) == ("/tts/websocket", 101, {"cartesia_version": "2025-04-16"})
    assert upgrade.headers["x-api-key"] == KEY


def test_each_sentence_goes_to_one_context_which_a_blank_last_message_ends(
    standin: CartesiaStandIn, spoken: Spoken
) -> None:
    (context,) = standin.contexts()
    sent = [(m.transcript, m.body["continue"]) for m in standin.messages(context.context_id)]
    assert sent == [(SENTENCES[0] + " ", True), (SENTENCES[1] + " ", True), (" ", False)]
    assert context.done and context.error is None


def test_every_message_names_the_model_voice_format_and_language_the_plugin_was_built_with(
    standin: CartesiaStandIn, spoken: Spoken
) -> None:
    fields = ("model_id", "voice", "output_format", "language", "add_timestamps")
    seen = {tuple(str(m.body[f]) for f in fields) for m in standin.messages()}
    output_format = {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 24000}
    assert seen == {("sonic-2", str({"mode": "id", "id": VOICE}), str(output_format), "en", "True")}


def test_two_utterances_share_one_socket_each_in_a_context_of_its_own(standin: CartesiaStandIn) -> None:
    async def twice(plugin: cartesia.TTS) -> list[Spoken]:
        return [await utterance(plugin, SENTENCES[0]), await utterance(plugin, SENTENCES[1])]

    first, second = run(twice, standin.base_url)
    assert len(standin.requests("/tts/websocket")) == 1
    contexts = standin.contexts()
    assert [c.socket for c in contexts] == [0, 0]
    assert [standin.transcript(c.context_id).strip() for c in contexts] == list(SENTENCES)
    assert [round(c.audio_seconds, 2) for c in contexts] == [round(first.seconds, 2), round(second.seconds, 2)]


# ---------------------------------------------------------------------------------------------- refusals


def test_a_handshake_without_a_key_is_refused_401_with_cartesias_error_body(standin: CartesiaStandIn) -> None:
    """The plugin cannot be built without a key: a plain client asks."""

    async def ask() -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession() as session:
            url = standin.base_url.replace("http", "ws") + "/tts/websocket?cartesia_version=2025-04-16"
            async with session.get(url, headers={"Connection": "Upgrade", "Upgrade": "websocket"}) as resp:
                return resp.status, await resp.json()

    status, body = asyncio.run(ask())
    assert status == 401
    assert set(body) == {"error_code", "title", "message", "request_id"} and "X-API-Key" in body["message"]


def test_an_unknown_api_version_is_refused_400_as_a_non_retryable_status_error(standin: CartesiaStandIn) -> None:
    error, _ = raised(lambda: run(utterance, standin.base_url, api_version="2099-01-01"))
    assert isinstance(error, APIStatusError) and (error.status_code, error.retryable) == (400, False)


def test_a_wrong_key_surfaces_as_a_401_status_error_that_is_not_retried(standin: CartesiaStandIn) -> None:
    retrying = APIConnectOptions(max_retry=3, retry_interval=0.1, timeout=2.0)
    error, _ = raised(lambda: run(lambda p: utterance(p, conn_options=retrying), standin.base_url, key="sk_car_wrong"))
    assert isinstance(error, APIStatusError) and (error.status_code, error.retryable) == (401, False)
    assert [r.status for r in standin.requests()] == [401]


def test_a_refused_upgrade_leaves_the_key_out_of_the_error_and_every_log(
    standin: CartesiaStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    standin.refuse = 401
    with caplog.at_level(logging.DEBUG):
        error, _ = raised(lambda: run(utterance, standin.base_url))
    assert isinstance(error, APIStatusError) and error.status_code == 401
    shown = "".join(traceback.format_exception(error)) + repr(error) + str(error.body)
    logged = caplog.text + "".join(repr(r.__dict__) for r in caplog.records)
    assert caplog.records, "the plugin logged the failure"
    assert KEY not in shown and KEY not in logged


@pytest.mark.parametrize(("status", "attempts"), [(402, 1), (429, 3), (503, 3)])
def test_a_refusal_is_retried_only_when_its_status_is_transient(
    standin: CartesiaStandIn, status: int, attempts: int
) -> None:
    standin.refuse = status
    retrying = APIConnectOptions(max_retry=2, retry_interval=0.1, timeout=2.0)
    error, _ = raised(lambda: run(lambda p: utterance(p, conn_options=retrying), standin.base_url))
    assert isinstance(error, APIStatusError) and error.status_code == status
    assert [r.status for r in standin.requests("/tts/websocket")] == [status] * attempts


# ---------------------------------------------------------------------------------------------- a hanging handshake


def test_a_hanging_handshake_times_out_after_the_conn_options_timeout(standin: CartesiaStandIn) -> None:
    standin.hang = True
    once = APIConnectOptions(max_retry=0, timeout=0.5)
    error, took = raised(lambda: run(lambda p: utterance(p, conn_options=once), standin.base_url))
    assert isinstance(error, APITimeoutError)
    assert 0.5 <= took < 1.5
    assert [r.status for r in standin.requests()] == [0]


def test_each_retry_of_a_hanging_handshake_waits_the_whole_timeout_again(standin: CartesiaStandIn) -> None:
    """Attempts wait timeout each; the first retry follows at once (0.1 s), the others after retry_interval."""
    standin.hang = True
    retrying = APIConnectOptions(max_retry=2, retry_interval=0.3, timeout=0.5)
    error, took = raised(lambda: run(lambda p: utterance(p, conn_options=retrying), standin.base_url))
    assert isinstance(error, APITimeoutError)
    assert 3 * 0.5 + 0.1 + 0.3 <= took < 3 * 0.5 + 0.1 + 0.3 + 1.0
    assert [r.status for r in standin.requests()] == [0, 0, 0]


# ---------------------------------------------------------------------------------------------- a socket closed


def test_a_socket_closed_after_some_audio_raises_its_close_code_without_a_retry(standin: CartesiaStandIn) -> None:
    """livekit-agents does not retry a stream that already yielded audio: the caller heard part of the sentence."""
    standin.close_after_chunks = 3
    retrying = APIConnectOptions(max_retry=2, retry_interval=0.1, timeout=2.0)
    frames: list[rtc.AudioFrame] = []
    error, _ = raised(lambda: run(lambda p: utterance(p, conn_options=retrying, sink=frames), standin.base_url))
    assert isinstance(error, APIStatusError) and error.status_code == CLOSE_CODE
    assert len(standin.requests()) == 1 and standin.contexts()[0].closed_socket
    assert sum(f.samples_per_channel for f in frames) == pytest.approx(3 * 2400, abs=480)


def test_a_socket_closed_before_any_audio_is_retried_on_a_new_socket(standin: CartesiaStandIn) -> None:
    standin.close_after_chunks = 0
    retrying = APIConnectOptions(max_retry=2, retry_interval=0.1, timeout=2.0)
    error, _ = raised(lambda: run(lambda p: utterance(p, conn_options=retrying), standin.base_url))
    assert isinstance(error, APIStatusError) and error.status_code == CLOSE_CODE
    assert [r.status for r in standin.requests()] == [101, 101, 101]
    assert len({c.socket for c in standin.contexts()}) == 3


# ---------------------------------------------------------------------------------------------- an error message


def test_an_error_message_after_the_last_text_ends_the_context_as_done_and_surfaces_as_no_audio(
    standin: CartesiaStandIn,
) -> None:
    """Cartesia's error message carries ``done: true``; the 1.8.9 plugin reads ``done`` before ``type``, so it ends
    the utterance quietly; livekit-agents then finds no audio for the text and raises (retryable, on the same
    socket): Cartesia's own message is not in the error."""
    standin.error = 429
    retrying = APIConnectOptions(max_retry=1, retry_interval=0.1, timeout=2.0)
    error, _ = raised(lambda: run(lambda p: utterance(p, conn_options=retrying), standin.base_url))
    assert type(error) is APIError and "no audio frames were pushed" in error.message
    assert "concurrency" not in str(error)
    contexts = standin.contexts()
    assert [c.error["status_code"] if c.error else None for c in contexts] == [429, 429]
    assert len(standin.requests()) == 1


def test_an_error_message_while_text_is_still_coming_leaves_the_plugin_waiting_for_its_timeout(
    standin: CartesiaStandIn,
) -> None:
    """As in a call, where the LLM still streams the reply when the first sentence's answer comes: the plugin skips
    the error message (``done`` while input is open) and waits for more, until ``conn_options.timeout``."""
    standin.error = 503
    once = APIConnectOptions(max_retry=0, timeout=0.8)

    async def slow_reply(plugin: cartesia.TTS) -> None:
        async with plugin.stream(conn_options=once) as stream:
            stream.push_text(SENTENCES[0] + " ")
            stream.flush()  # the sentence goes out now, as a tokenizer boundary in an LLM reply would send it
            while not any(c.error for c in standin.contexts()):
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)  # the error message has reached the plugin; the LLM is still talking
            stream.push_text(SENTENCES[1])
            stream.end_input()
            async for _ in stream:
                pass

    error, took = raised(lambda: run(slow_reply, standin.base_url))
    assert isinstance(error, APITimeoutError)
    (context,) = standin.contexts()
    assert context.error is not None and context.error["status_code"] == 503
    assert took >= 0.8


# ---------------------------------------------------------------------------------------------- latency


def test_the_first_chunk_of_each_context_waits_the_configured_delay(standin: CartesiaStandIn) -> None:
    standin.first_chunk_delay = 0.6
    spoken = run(utterance, standin.base_url)
    (context,) = standin.contexts()
    assert context.first_chunk_at is not None
    assert 0.6 <= context.first_chunk_at - context.first_message_at < 0.9
    assert spoken.first_frame_at is not None and spoken.first_frame_at - spoken.started >= 0.6


@pytest.mark.parametrize("rate", [8000, 48000])
def test_the_stand_in_speaks_at_the_sample_rate_the_plugin_asks_for(standin: CartesiaStandIn, rate: int) -> None:
    spoken = run(lambda p: utterance(p, SENTENCES[0]), standin.base_url, sample_rate=rate)
    assert {f.sample_rate for f in spoken.frames} == {rate}
    assert spoken.seconds == pytest.approx(espeak_seconds(SENTENCES[0]), rel=0.02, abs=0.05)
