"""The real livekit-plugins-deepgram 1.8.9 streaming STT against the Deepgram stand-in (``tests/deepgram_standin.py``):
what the plugin sends (query, token, linear16 audio, control messages), what it makes of Deepgram's answers, and how
livekit-agents' retry handles each fault switch. No LiveKit room: the plugin runs in an ``http_context`` as it does
outside a job, fed ``rtc.AudioFrame``s of a spoken sentence (espeak-ng, sox) and silence.

A few tests speak to the stand-in with a bare aiohttp client, for what the plugin never does (no token, no audio).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from livekit import rtc
from livekit.agents import APIConnectionError, APIConnectOptions, APIStatusError, stt
from livekit.agents.utils import http_context
from livekit.plugins import deepgram

from tests.caller_audio import spoken_pcm16
from tests.deepgram_standin import NET_0001, DeepgramStandIn

KEY = "dg-test-key-5f2a9c81e07d4b36"
RATE = 16000
FRAME_MS = 20
SENTENCE = "Hello, I would like to check my order, please."
FAST = APIConnectOptions(max_retry=3, retry_interval=0.1, timeout=2.0)
EventKind = stt.SpeechEventType


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The caller's sentence as 16 kHz mono linear16 (about 3.5 s)."""
    return spoken_pcm16(tmp_path_factory.mktemp("deepgram-caller"), SENTENCE, sample_rate=RATE)


@pytest.fixture
def standin() -> Any:
    with DeepgramStandIn() as s:
        yield s


def silence(seconds: float) -> bytes:
    return bytes(2 * int(RATE * seconds))


def push(stream: stt.SpeechStream, pcm: bytes) -> None:
    """``pcm`` as 20 ms frames (the last one shorter), as fast as the stream takes them."""
    step = 2 * RATE * FRAME_MS // 1000
    for at in range(0, len(pcm), step):
        chunk = pcm[at : at + step]
        stream.push_frame(rtc.AudioFrame(chunk, RATE, 1, len(chunk) // 2))


@asynccontextmanager
async def plugin_stream(
    standin: DeepgramStandIn, *, key: str = KEY, conn_options: APIConnectOptions = FAST, **options: Any
) -> AsyncIterator[tuple[stt.SpeechStream, list[stt.STTError]]]:
    """The plugin's STT as the prod stack names it (``deepgram/nova-3:en``) pointed at the stand-in, one stream
    open on it, and the STT's ``error`` events."""
    async with http_context.open():
        dg = deepgram.STT(model="nova-3", language="en", base_url=standin.base_url, api_key=key, **options)
        errors: list[stt.STTError] = []
        dg.on("error", errors.append)
        stream = dg.stream(conn_options=conn_options)
        try:
            yield stream, errors
        finally:
            await stream.aclose()
            await dg.aclose()


async def events_until(stream: stt.SpeechStream, kind: EventKind, *, count: int = 1,
                       timeout: float = 8.0) -> list[stt.SpeechEvent]:  # fmt: skip
    """The stream's events (usage reports left out) up to the ``count``-th of ``kind``."""
    seen: list[stt.SpeechEvent] = []

    async def read() -> None:
        async for ev in stream:
            if ev.type != EventKind.RECOGNITION_USAGE:
                seen.append(ev)
            if sum(e.type == kind for e in seen) == count:
                return

    await asyncio.wait_for(read(), timeout)
    return seen


async def until(condition: Callable[[], bool], timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.02)


def closed(standin: DeepgramStandIn) -> bool:
    """The first stream has closed."""
    return any(c.close_code is not None for c in standin.connections()[:1])


def finals(events: list[stt.SpeechEvent]) -> list[str]:
    return [e.alternatives[0].text for e in events if e.type == EventKind.FINAL_TRANSCRIPT]


# ---------------------------------------------------------------------------------------------- transcription


def test_the_plugin_gets_the_scripted_transcript_as_a_final_transcript_when_the_caller_stops_speaking(standin, speech):
    async def scenario() -> list[stt.SpeechEvent]:
        async with plugin_stream(standin) as (stream, _):
            push(stream, speech + silence(1.0))
            return await events_until(stream, EventKind.FINAL_TRANSCRIPT)

    assert finals(asyncio.run(scenario())) == ["I would like to check my order."]


def test_speech_started_and_interim_results_come_before_the_final_and_the_end_of_speech(standin, speech):
    async def scenario() -> list[stt.SpeechEvent]:
        async with plugin_stream(standin) as (stream, _):
            push(stream, speech + silence(1.0))
            return await events_until(stream, EventKind.END_OF_SPEECH)

    kinds = [e.type for e in asyncio.run(scenario())]
    interims = kinds.count(EventKind.INTERIM_TRANSCRIPT)
    assert interims >= 3, kinds  # one per 0.5 s of a 3.5 s sentence
    assert kinds == [EventKind.START_OF_SPEECH, *[EventKind.INTERIM_TRANSCRIPT] * interims,
                     EventKind.FINAL_TRANSCRIPT, EventKind.END_OF_SPEECH]  # fmt: skip


def test_the_scripted_transcripts_are_given_in_turn_one_per_utterance_and_cycle(speech):
    """Three utterances (the sentence's comma pauses are no ends), three finals."""
    expected = ["Where is my parcel?", "Thank you.", "Where is my parcel?"]

    async def scenario(standin: DeepgramStandIn) -> list[stt.SpeechEvent]:
        async with plugin_stream(standin) as (stream, _):
            push(stream, (speech + silence(1.0)) * 3)
            events = await events_until(stream, EventKind.FINAL_TRANSCRIPT, count=3)
            stream.end_input()
            await until(lambda: closed(standin))
            return events

    with DeepgramStandIn(expected[:2]) as standin:
        assert finals(asyncio.run(scenario(standin))) == expected
        assert [t for t in standin.connections()[0].finals if t] == expected


def test_the_final_carries_word_timings_within_the_spoken_audio(standin, speech):
    async def scenario() -> list[stt.SpeechEvent]:
        async with plugin_stream(standin) as (stream, _):
            push(stream, speech + silence(1.0))
            return await events_until(stream, EventKind.FINAL_TRANSCRIPT)

    final = asyncio.run(scenario())[-1].alternatives[0]
    words = final.words or []
    assert [str(w) for w in words] == ["I", "would", "like", "to", "check", "my", "order."]
    assert 0 <= words[0].start_time < words[-1].end_time <= len(speech) / (2 * RATE)
    assert all(a.end_time <= b.start_time for a, b in itertools.pairwise(words))


def test_a_flush_mid_utterance_finalizes_it_and_the_end_of_input_closes_the_stream_with_metadata_and_1000(
    standin, speech
):
    async def scenario() -> list[stt.SpeechEvent]:
        async with plugin_stream(standin) as (stream, _):
            push(stream, speech[: 2 * RATE * 3 // 2])  # 1.5 s: the caller is still speaking
            stream.end_input()  # Finalize, then CloseStream
            events = await events_until(stream, EventKind.FINAL_TRANSCRIPT)
            await until(lambda: closed(standin))
            return events

    assert finals(asyncio.run(scenario())) == ["I would like to check my order."]
    conn = standin.connections()[0]
    assert [m["type"] for m in conn.received if m["type"] != "KeepAlive"] == ["Finalize", "CloseStream"]
    assert [(m["is_final"], m["from_finalize"]) for m in conn.sent_of("Results")][-1] == (True, True)
    assert conn.sent[-1]["type"] == "Metadata"
    assert conn.sent[-1]["duration"] == pytest.approx(1.5)
    assert (conn.close_code, conn.closed_by) == (1000, "server")


@pytest.mark.parametrize("utterance_end_ms", [None, 1000], ids=["not-asked", "asked"])
def test_utterance_end_follows_the_final_only_when_the_query_asks_for_it(standin, speech, utterance_end_ms):
    async def scenario() -> None:
        async with plugin_stream(standin, utterance_end_ms=utterance_end_ms) as (stream, _):
            push(stream, speech + silence(1.5))
            await events_until(stream, EventKind.FINAL_TRANSCRIPT)
            stream.end_input()
            await until(lambda: closed(standin))

    asyncio.run(scenario())
    conn = standin.connections()[0]
    kinds = [m["type"] for m in conn.sent if m["type"] in ("Results", "UtteranceEnd")]
    final_at = max(i for i, m in enumerate(conn.sent) if m["type"] == "Results" and m["speech_final"])
    if utterance_end_ms is None:
        assert "UtteranceEnd" not in kinds
    else:
        (ue,) = conn.sent_of("UtteranceEnd")
        assert conn.sent.index(ue) > final_at
        last_word = conn.sent[final_at]["channel"]["alternatives"][0]["words"][-1]
        assert ue["last_word_end"] == last_word["end"]


# ---------------------------------------------------------------------------------------------- what the plugin sends


def test_the_plugin_sends_its_options_as_the_query_and_the_key_as_a_token(standin, speech):
    async def scenario() -> None:
        async with plugin_stream(standin) as (stream, _):
            push(stream, speech + silence(1.0))
            await events_until(stream, EventKind.FINAL_TRANSCRIPT)

    asyncio.run(scenario())
    conn = standin.connections()[0]
    assert conn.path == "/v1/listen"
    assert conn.headers["authorization"] == f"Token {KEY}"
    expected = {"model": "nova-3", "encoding": "linear16", "sample_rate": "16000", "channels": "1",
                "interim_results": "true", "vad_events": "true", "endpointing": "25", "language": "en",
                "punctuate": "true", "no_delay": "true"}  # fmt: skip
    assert {k: conn.query.get(k) for k in expected} == expected


def test_the_callers_audio_arrives_byte_for_byte_as_50_ms_linear16_frames(standin, speech):
    pushed = speech + silence(1.0)

    async def scenario() -> None:
        async with plugin_stream(standin) as (stream, _):
            push(stream, pushed)
            stream.end_input()
            await until(lambda: {"type": "CloseStream"} in [m for c in standin.connections() for m in c.received])

    asyncio.run(scenario())
    conn = standin.connections()[0]
    assert conn.audio == pushed
    assert conn.audio_seconds == pytest.approx(len(pushed) / (2 * RATE))
    assert conn.rms > 1000  # speech, not silence
    assert {len(f) for f in conn.frames[:-1]} == {2 * RATE // 20}  # 50 ms at the query's sample rate


# ---------------------------------------------------------------------------------------------- refusals


def test_a_wrong_key_is_refused_as_api_status_error_401_and_the_key_appears_in_no_error_or_log(speech, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "dg-wrong-key-0c6e7d13a9b84f25"

    async def scenario() -> BaseException:
        async with plugin_stream(standin, key=wrong) as (stream, errors):
            push(stream, speech)
            with pytest.raises(APIStatusError) as caught:
                await events_until(stream, EventKind.FINAL_TRANSCRIPT)
            assert [e.recoverable for e in errors] == [False]
            return caught.value

    with DeepgramStandIn(api_key=KEY) as standin:
        error = asyncio.run(scenario())
        assert [c.status for c in standin.connections()] == [401]  # not retried
    assert isinstance(error, APIStatusError) and error.status_code == 401
    assert wrong not in f"{error} {error!r} {error.__cause__!r} {error.__context__!r}"
    assert caplog.records, "the run logs (so the check below reads something)"
    assert wrong not in caplog.text
    assert not [r for r in caplog.records if wrong in repr(r.__dict__)]


@pytest.mark.parametrize(("status", "attempts"), [(401, 1), (402, 1), (429, 4), (503, 4)])
def test_a_refused_upgrade_is_retried_only_when_its_status_is_transient(standin, speech, status, attempts):
    """livekit-agents retries 429 and 5xx (``FAST``: 3 retries), never another 4xx."""
    standin.refuse(status)

    async def scenario() -> BaseException:
        async with plugin_stream(standin) as (stream, _):
            push(stream, speech)
            with pytest.raises((APIStatusError, APIConnectionError)) as caught:
                await events_until(stream, EventKind.FINAL_TRANSCRIPT)
            return caught.value

    error = asyncio.run(scenario())
    assert [c.status for c in standin.connections()] == [status] * attempts
    refused = error if attempts == 1 else error.__cause__
    assert isinstance(refused, APIStatusError) and refused.status_code == status


def test_an_upgrade_without_a_token_is_refused_with_deepgrams_401_body(standin):
    async def scenario() -> tuple[int, dict[str, str], dict[str, Any]]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(standin.base_url + "?encoding=linear16&sample_rate=16000") as resp,
        ):
            return resp.status, dict(resp.headers), await resp.json()

    status, headers, body = asyncio.run(scenario())
    assert status == 401
    assert (body["err_code"], body["err_msg"]) == ("INVALID_AUTH", "Invalid credentials.")
    assert headers["dg-request-id"] == body["request_id"] and headers["dg-error"] == "Invalid credentials."


# ---------------------------------------------------------------------------------------------- faults mid-stream


def test_a_hanging_handshake_is_retried_past_the_retry_budget_because_each_timeout_resets_it(standin):
    """Each attempt times out after the connect timeout, and an attempt that lasted longer than that counts as one
    that had connected (stt.py ``_main_task``): the budget starts over, so a hung Deepgram keeps the agent deaf for
    as long as it hangs (with the default options, an attempt every 10.1 s)."""
    standin.hang_handshake()
    options = APIConnectOptions(max_retry=1, retry_interval=0.1, timeout=0.5)

    async def scenario() -> list[stt.STTError]:
        async with plugin_stream(standin, conn_options=options) as (_, errors):
            await until(lambda: len(standin.connections()) >= 4)  # twice the 2 attempts the budget allows
            return list(errors)

    errors = asyncio.run(scenario())
    assert all(c.status is None for c in standin.connections())
    assert len(errors) >= 3 and all(e.recoverable for e in errors)
    assert {str(e.error) for e in errors} == {"failed to connect to deepgram"}


def test_a_stream_deepgram_closes_surfaces_its_close_code_as_a_recoverable_error(standin, speech):
    standin.close_mid_stream(1011, after_frames=5)

    async def scenario() -> list[stt.STTError]:
        async with plugin_stream(standin) as (stream, errors):
            push(stream, speech)
            await until(lambda: bool(errors))
            return list(errors)

    (error,) = asyncio.run(scenario())
    assert error.recoverable and isinstance(error.error, APIStatusError) and error.error.status_code == 1011
    first = standin.connections()[0]
    assert (len(first.frames), first.close_code, first.closed_by) == (5, 1011, "server")


def test_after_a_close_at_speech_onset_the_plugin_reconnects_and_transcribes_the_next_utterance(standin, speech):
    standin.close_mid_stream(1011, on_speech=True)

    async def scenario() -> list[stt.SpeechEvent]:
        async with plugin_stream(standin) as (stream, _):
            push(stream, speech)
            await until(lambda: len(standin.accepted()) == 2)
            push(stream, silence(0.5) + speech + silence(1.0))
            return await events_until(stream, EventKind.FINAL_TRANSCRIPT)

    assert finals(asyncio.run(scenario())) == ["I would like to check my order."]
    first, second = standin.accepted()
    assert (first.close_code, first.finals) == (1011, [])
    assert second.finals == ["I would like to check my order."]


def test_closes_on_every_connection_spend_the_retry_budget_and_end_the_stream_with_a_connection_error(standin):
    standin.close_mid_stream(1011, after_frames=0, times=None)

    async def scenario() -> None:
        async with plugin_stream(standin) as (stream, _):
            with pytest.raises(APIConnectionError, match="failed to recognize speech after 3 attempts"):
                await events_until(stream, EventKind.FINAL_TRANSCRIPT)

    asyncio.run(scenario())
    assert [c.close_code for c in standin.accepted()] == [1011] * 4  # FAST: 3 retries


def test_the_final_delay_holds_each_final_transcript_back(standin, speech):
    standin.final_delay_s = 1.0

    async def scenario() -> float:
        async with plugin_stream(standin) as (stream, _):
            push(stream, speech + silence(1.0))
            pushed = time.monotonic()
            await events_until(stream, EventKind.FINAL_TRANSCRIPT)
            return time.monotonic() - pushed

    assert asyncio.run(scenario()) >= 1.0


# ---------------------------------------------------------------------------------------------- idle streams


async def bare_stream(standin: DeepgramStandIn, action: Callable[[aiohttp.ClientWebSocketResponse], Any]) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(
            standin.base_url + "?encoding=linear16&sample_rate=16000", headers={"Authorization": f"Token {KEY}"}
        ) as ws,
    ):
        return await action(ws)


def test_a_stream_with_neither_audio_nor_keepalive_is_closed_with_1011_net_0001():
    async def wait_close(ws: aiohttp.ClientWebSocketResponse) -> tuple[int | None, str]:
        msg = await ws.receive(timeout=3)
        return ws.close_code, msg.extra

    with DeepgramStandIn(idle_timeout_s=0.3) as standin:
        assert asyncio.run(bare_stream(standin, wait_close)) == (1011, NET_0001)


def test_keepalive_messages_hold_an_idle_stream_open():
    async def keep_alive(ws: aiohttp.ClientWebSocketResponse) -> bool:
        for _ in range(10):  # 1 s, over three idle timeouts
            await ws.send_str('{"type": "KeepAlive"}')
            await asyncio.sleep(0.1)
        return ws.closed

    with DeepgramStandIn(idle_timeout_s=0.3) as standin:
        assert asyncio.run(bare_stream(standin, keep_alive)) is False
        assert standin.connections()[0].received == [{"type": "KeepAlive"}] * 10
