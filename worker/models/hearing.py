"""The STT watchdog: a speech-to-text stream that goes quiet while the caller speaks is failed, so its chain moves on.

A provider can accept a stream and then stop answering on it (no close, no error): the plugin waits on, and the
agent is deaf for the rest of the call. No plugin timeout sees it, because nothing is pending but the provider's next
message. The session's VAD does: when the caller has spoken and the serving stream sent no event from the provider
(no transcript, interim or final, no speech event; a usage report is the plugin's own count) from the start of that
speech to ``stt_timeout`` after its end, the stream fails with ``APITimeoutError``. Its ``FallbackAdapter``
(``worker.models.bounds``) then moves to the next entry, or retries a provider alone, and ``watch`` tells the call,
which asks the caller to say it again (those words were lost).

A provider's streaming STT is wrapped in ``Hearing`` before its adapter holds it (``worker.models.registry``);
everything else passes through to the plugin.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from livekit import rtc
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    AgentSession,
    APIConnectOptions,
    APITimeoutError,
    NotGivenOr,
    stt,
    utils,
)

logger = logging.getLogger("siphon.worker")

MIN_SPEECH_S = 1.0
"""Shorter speech (a cough, an "mm") is not checked: a provider may rightly send nothing for it."""
ASK_AGAIN = "The line lost the caller's last words: ask them, in one short sentence, to say it again."
"""The instructions of the agent's reply once a stream was found deaf."""


class Hearing(stt.STT):
    """An STT whose streams can be told the caller spoke (``caller_spoke``) and fail when they heard nothing."""

    def __init__(self, inner: stt.STT, timeout: float) -> None:
        super().__init__(capabilities=inner.capabilities)
        self.inner, self.timeout = inner, timeout
        self._label = inner.label
        self.live: set[_HearingStream] = set()
        inner.on("metrics_collected", self._forward_metrics)

    @property
    def model(self) -> str:
        """The plugin's model."""
        return self.inner.model

    @property
    def provider(self) -> str:
        """The plugin's provider."""
        return self.inner.provider

    def _forward_metrics(self, *args: Any, **kwargs: Any) -> None:
        self.emit("metrics_collected", *args, **kwargs)

    def _update_session_keyterms(self, keyterms: list[str]) -> None:
        self.inner._update_session_keyterms(keyterms)

    def _push_conversation_item(self, ev: Any) -> None:
        self.inner._push_conversation_item(ev)

    async def _recognize_impl(
        self, buffer: utils.AudioBuffer, *, language: NotGivenOr[str] = NOT_GIVEN, conn_options: APIConnectOptions
    ) -> stt.SpeechEvent:
        return await self.inner.recognize(buffer, language=language, conn_options=conn_options)

    def stream(
        self, *, language: NotGivenOr[str] = NOT_GIVEN, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> stt.RecognizeStream:
        """The plugin's stream, watched."""
        return _HearingStream(self, language, conn_options)

    def caller_spoke(self, started: float) -> None:
        """The caller spoke from ``started`` (``time.monotonic()``) until now: each open stream that has sent nothing
        since ``started`` fails ``timeout`` s from now unless it sends something first."""
        for s in list(self.live):
            s.expect(started)

    def prewarm(self) -> None:
        """The plugin's prewarm."""
        self.inner.prewarm()

    async def aclose(self) -> None:
        """Close the plugin."""
        self.inner.off("metrics_collected", self._forward_metrics)
        await self.inner.aclose()


class _HearingStream(stt.RecognizeStream):
    def __init__(self, hearing: Hearing, language: NotGivenOr[str], conn_options: APIConnectOptions) -> None:
        super().__init__(stt=hearing, conn_options=conn_options)
        self._hearing, self._language = hearing, language
        self._heard_at = time.monotonic()  # the last event the plugin's stream sent
        self._deaf = asyncio.Event()
        self._checks: set[asyncio.TimerHandle] = set()

    async def _metrics_monitor_task(self, event_aiter: Any) -> None:
        async for _ in event_aiter:  # the plugin's own stream reports its metrics
            pass

    def expect(self, started: float) -> None:
        if self._heard_at >= started:
            return
        loop = asyncio.get_running_loop()
        self._checks.add(loop.call_later(self._hearing.timeout, self._check, started))

    def _check(self, started: float) -> None:
        if self._heard_at < started:
            self._deaf.set()

    async def _run(self) -> None:
        self._deaf.clear()  # a retry starts afresh
        inner = self._hearing.inner.stream(language=self._language, conn_options=self._conn_options)
        inner.start_time_offset = self.start_time_offset

        async def forward() -> None:
            async for data in self._input_ch:
                if isinstance(data, rtc.AudioFrame):
                    inner.push_frame(data)
                else:
                    inner.flush()
            inner.end_input()

        async def read() -> None:
            async for ev in inner:
                if ev.type != stt.SpeechEventType.RECOGNITION_USAGE:  # the plugin counts the audio it sent itself
                    self._heard_at = time.monotonic()
                self._event_ch.send_nowait(ev)

        self._hearing.live.add(self)
        tasks = [asyncio.create_task(forward()), asyncio.create_task(read()), asyncio.create_task(self._deaf.wait())]
        try:
            async with inner:
                await asyncio.wait(tasks[1:], return_when=asyncio.FIRST_COMPLETED)
                if self._deaf.is_set():
                    self._hearing.emit("deaf", self._hearing.label)
                    raise APITimeoutError(
                        f"{self._hearing.label}: nothing heard {self._hearing.timeout:g} s after the caller spoke"
                    )
                tasks[1].result()  # the plugin's own error: its adapter moves on
        finally:
            self._hearing.live.discard(self)
            for check in self._checks:
                check.cancel()
            await utils.aio.cancel_and_wait(*tasks)


def watch(session: AgentSession, entries: Iterable[Any], on_deaf: Callable[[str], None]) -> None:
    """Tell each ``Hearing`` of ``entries`` (a resolved STT's entries, as its adapter holds them) when the caller
    stopped speaking for at least ``MIN_SPEECH_S`` (the session's VAD: ``user_state_changed`` from ``speaking``); when
    one of their streams then fails as deaf, ``on_deaf`` gets its label."""
    hearings = [e for e in entries if isinstance(e, Hearing)]
    spoke = [0.0]

    @session.on("user_state_changed")
    def _changed(ev: Any) -> None:
        if ev.new_state == "speaking":
            spoke[0] = time.monotonic()
        elif ev.old_state == "speaking" and time.monotonic() - spoke[0] >= MIN_SPEECH_S:
            for h in hearings:
                h.caller_spoke(spoke[0])

    for h in hearings:

        @h.on("deaf")
        def _deaf(label: str) -> None:
            try:
                on_deaf(label)
            except Exception:  # the failing stream must still raise its own error, for its adapter
                logger.exception("the deaf-stream handler failed")
