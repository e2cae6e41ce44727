"""How long a model provider may stall a call before the worker stops waiting for it: the only place where the
worker's ``stt_timeout``, ``llm_timeout`` and ``tts_timeout`` settings become livekit-agents connection options.

- **A chain moves on at once.** Each entry gets one attempt of its kind's timeout (``max_retry`` 0 in its
  ``FallbackAdapter``); a refused, hung or closed provider hands the turn to the next entry, and the adapter brings the
  first one back in the background once it answers again.
- **The whole kind is retried once** (``RETRIES``: the session's connection options): a provider alone, or a chain
  whose every entry failed, gets one more round; then the plugin's error is unrecoverable and the call is handed over
  (``worker.call``), and, when that fails too, ended with a BYE.
- **Speech-to-text is always served through its ``FallbackAdapter``**, a provider alone too. livekit-agents 1.8.9's
  ``RecognizeStream`` restarts its retry budget after any attempt that lasted longer than its timeout, and an attempt
  whose handshake hangs lasts exactly that long: a hung Deepgram handshake is retried forever, a deaf agent, and never
  raises to a chain. The adapter's own attempts carry no retry, so they raise; the session's budget for the adapter's
  stream is set longer than a whole chain of hung attempts (``stt_stream_budget``), so it does not restart either.
- **Text-to-speech is always served through its ``FallbackAdapter`` too, bounded from the text to the first audio**
  (``FirstAudioBound``): a plugin's timeout covers its own handshake only. Cartesia's first utterance waits, outside
  any timeout, for the connection its pool opens when the session starts (10 s, its own bound), so a hung handshake
  kept the greeting silent for 15 s. The bound starts at the first text, never earlier: a slow LLM is not a slow TTS.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import Any

from livekit.agents import APIConnectOptions, APITimeoutError, tts, utils
from livekit.agents.tts.fallback_adapter import DEFAULT_FALLBACK_API_CONNECT_OPTIONS, FallbackSynthesizeStream
from livekit.agents.voice.agent_session import SessionConnectOptions

from contract.metadata import MAX_CHAIN_ENTRIES, ModelKind
from contract.settings import WorkerSettings

RETRIES = 1
"""Rounds after the first, over a provider alone or a whole chain, before the call is handed over."""


def stt_stream_budget(settings: WorkerSettings) -> float:
    """Seconds after which the session's STT stream counts as having worked (its retry budget restarts): longer than
    every entry of the longest chain hanging for ``stt_timeout`` each."""
    return settings.stt_timeout * (MAX_CHAIN_ENTRIES + 1)


def session_connect_options(settings: WorkerSettings) -> SessionConnectOptions:
    """``AgentSession(conn_options=...)``: each kind bounded by its timeout and retried ``RETRIES`` times."""
    return SessionConnectOptions(
        stt_conn_options=APIConnectOptions(max_retry=RETRIES, timeout=stt_stream_budget(settings)),
        llm_conn_options=APIConnectOptions(max_retry=RETRIES, timeout=settings.llm_timeout),
        tts_conn_options=APIConnectOptions(max_retry=RETRIES, timeout=settings.tts_timeout),
    )


def attempt_timeout(settings: WorkerSettings, kind: ModelKind) -> float:
    """Seconds one provider of ``kind`` may take before its chain moves on (its ``FallbackAdapter``'s attempt)."""
    return {"stt": settings.stt_timeout, "llm": settings.llm_timeout, "tts": settings.tts_timeout}[kind]


class FirstAudioBound(tts.FallbackAdapter):
    """livekit-agents' TTS ``FallbackAdapter`` (1.8.9) whose every attempt, a recovery probe's too, fails with
    ``APITimeoutError`` when no audio comes within the attempt's timeout of its first text: the chain moves on, or,
    with every entry failed, the kind's retry and then the hand-over follow."""

    def stream(
        self, *, conn_options: APIConnectOptions = DEFAULT_FALLBACK_API_CONNECT_OPTIONS
    ) -> FallbackSynthesizeStream:
        """A stream whose attempts are bounded (``_BoundedAttempts``)."""
        return _BoundedAttempts(tts=self, conn_options=conn_options)


class _BoundedAttempts(FallbackSynthesizeStream):
    async def _try_synthesize(  # type: ignore[override]
        self, *, tts: tts.TTS, input_ch: Any, conn_options: APIConnectOptions, recovering: bool = False
    ) -> AsyncGenerator[tts.SynthesizedAudio, None]:
        texted = asyncio.Event()
        relay = utils.aio.Chan[Any]()

        async def forward() -> None:  # the attempt's input, noting when its first text arrives
            try:
                async for data in input_ch:
                    if isinstance(data, str) and data.strip():
                        texted.set()
                    relay.send_nowait(data)
            finally:
                relay.close()

        async def arm(bound: asyncio.Timeout) -> None:
            await texted.wait()
            bound.reschedule(asyncio.get_running_loop().time() + conn_options.timeout)

        audio = super()._try_synthesize(tts=tts, input_ch=relay, conn_options=conn_options, recovering=recovering)
        tasks = [asyncio.create_task(forward())]
        try:
            async with asyncio.timeout(None) as bound:
                tasks.append(asyncio.create_task(arm(bound)))
                async for frame in audio:
                    if tasks[1:]:  # the first audio: unbounded from here (nothing can fire while a frame is out)
                        await utils.aio.cancel_and_wait(tasks.pop())
                        bound.reschedule(None)
                    yield frame
        except TimeoutError:
            raise APITimeoutError(f"{tts.label}: no audio {conn_options.timeout:g} s after its first text") from None
        finally:
            await utils.aio.cancel_and_wait(*tasks)
            with contextlib.suppress(Exception):
                await audio.aclose()
