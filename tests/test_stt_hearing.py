"""The STT watchdog (``worker.models.hearing``) on the real livekit-plugins-deepgram streaming STT and the Deepgram
stand-in, outside a room: a stream that goes quiet while the caller speaks fails with ``APITimeoutError`` once the
bound passed after the speech; one that keeps answering does not; the worker watches a provider's streaming STT and
never the offline ``local/silent``. Real calls: ``tests/test_provider_outages.py`` (``deepgram-stalls``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from livekit.agents import APIConnectOptions, APITimeoutError, stt
from livekit.agents.utils import http_context
from livekit.plugins import deepgram

from tests.deepgram_standin import DeepgramStandIn
from tests.test_deepgram_standin import KEY, events_until, push, silence, speech  # noqa: F401 (a fixture)
from worker.models import registry
from worker.models.hearing import Hearing

BOUND_S = 1.0
ONE_ATTEMPT = APIConnectOptions(max_retry=0, timeout=2.0)  # as its FallbackAdapter opens each entry's stream


def test_a_stream_quiet_through_the_callers_speech_fails_after_the_bound(speech: bytes) -> None:  # noqa: F811
    async def run() -> tuple[Exception | None, float, list[Any]]:
        with DeepgramStandIn() as standin:
            standin.stall_at_speech(True)
            async with http_context.open():
                dg = deepgram.STT(model="nova-3", language="en", base_url=standin.base_url, api_key=KEY)
                hearing = Hearing(dg, BOUND_S)
                deaf: list[str] = []
                hearing.on("deaf", deaf.append)
                stream = hearing.stream(conn_options=ONE_ATTEMPT)
                spoke = time.monotonic()
                push(stream, silence(6.0) + speech + silence(6.0))  # the plugin reports usage every 5 s of audio
                await asyncio.sleep(len(speech) / 32000)
                ended = time.monotonic()
                hearing.caller_spoke(spoke)
                failed: Exception | None = None
                try:
                    async for _ in stream:
                        pass
                except Exception as err:
                    failed = err
                await stream.aclose()
                await dg.aclose()
                assert any(c.stalled for c in standin.connections()), "the stand-in went quiet at the speech"
                return failed, time.monotonic() - ended, deaf

    failed, after, deaf = asyncio.run(run())
    assert isinstance(failed, APITimeoutError), failed
    assert BOUND_S <= after < BOUND_S + 3, after
    assert len(deaf) == 1 and "deepgram" in deaf[0].lower(), deaf


def test_a_stream_that_answers_the_callers_speech_is_not_failed(speech: bytes) -> None:  # noqa: F811
    async def run() -> list[stt.SpeechEvent]:
        with DeepgramStandIn() as standin:
            async with http_context.open():
                dg = deepgram.STT(model="nova-3", language="en", base_url=standin.base_url, api_key=KEY)
                hearing = Hearing(dg, BOUND_S)
                stream = hearing.stream(conn_options=ONE_ATTEMPT)
                spoke = time.monotonic()
                push(stream, speech + silence(1.5))
                finals = await events_until(stream, stt.SpeechEventType.FINAL_TRANSCRIPT)
                hearing.caller_spoke(spoke)
                push(stream, silence(2 * BOUND_S))
                await asyncio.sleep(2 * BOUND_S)
                assert not stream._task.done(), "the stream is still open"
                await stream.aclose()
                await dg.aclose()
                return finals

    assert asyncio.run(run())[-1].alternatives[0].text


def test_the_worker_watches_a_providers_streaming_stt_and_not_the_offline_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPGRAM_API_KEY", KEY)
    provider = registry.resolve("stt", "deepgram/nova-3:en", None, offline=True, timeout=5)
    offline = registry.resolve("stt", "local/silent", None, offline=True, timeout=5)
    assert isinstance(provider.entries[0][1], Hearing)
    assert not isinstance(offline.entries[0][1], Hearing), "local/silent hears nothing by design"
