"""Offline providers: pure code, no network, no model weights.

- ``ScriptedLLM`` (``local/scripted``): deterministic replies; the greeting names the route.
- ``EspeakTTS`` (``local/espeak-ng[:voice]``): synthesises with Debian's ``espeak-ng`` binary into PCM.
- ``SilentSTT`` (``local/silent``): consumes audio and never transcribes.

They let the local stack and the tests run a full agent session that greets the caller and publishes audio.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid

from livekit.agents import APIError, llm, stt, tts
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, APIConnectOptions, NotGivenOr
from livekit.agents.utils import AudioBuffer

DEFAULT_REPLY = "I am a scripted test agent. I heard you."
DEFAULT_GREETING = "Hello! Thank you for calling. How can I help you today?"


class ScriptedLLM(llm.LLM):
    """A deterministic LLM: greets with ``greeting``, then answers every turn with ``reply``.

    A turn is a greeting when the conversation has no user message yet. ``{user}`` in ``reply`` is replaced
    by the user's last message.
    """

    def __init__(self, *, greeting: str = DEFAULT_GREETING, reply: str = DEFAULT_REPLY) -> None:
        super().__init__()
        self._greeting = greeting
        self._reply = reply

    @property
    def model(self) -> str:
        """Model name shown in metrics and attributes."""
        return "scripted"

    @property
    def provider(self) -> str:
        """Provider name (always ``local``)."""
        return "local"

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, object]] = NOT_GIVEN,
    ) -> llm.LLMStream:
        """Stream the scripted reply word by word."""
        users = [m.text_content or "" for m in chat_ctx.messages() if m.role == "user"]
        text = self._reply.replace("{user}", users[-1]) if users else self._greeting
        return _ScriptedStream(self, text=text, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)


class _ScriptedStream(llm.LLMStream):
    def __init__(
        self,
        owner: ScriptedLLM,
        *,
        text: str,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool],
        conn_options: APIConnectOptions,
    ) -> None:
        super().__init__(owner, chat_ctx=chat_ctx, tools=tools, conn_options=conn_options)
        self._text = text

    async def _run(self) -> None:
        request_id = f"scripted-{uuid.uuid4().hex[:8]}"
        for i, word in enumerate(self._text.split(" ")):
            delta = llm.ChoiceDelta(role="assistant", content=word if i == 0 else " " + word)
            self._event_ch.send_nowait(llm.ChatChunk(id=request_id, delta=delta))


class EspeakTTS(tts.TTS):
    """Text to speech with the ``espeak-ng`` binary (16-bit mono PCM at 22050 Hz)."""

    SAMPLE_RATE = 22050

    def __init__(self, *, voice: str = "en-us", speed: int = 175) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=False), sample_rate=self.SAMPLE_RATE, num_channels=1
        )
        binary = shutil.which("espeak-ng")
        if binary is None:
            raise RuntimeError("espeak-ng is not installed")
        if not voice.replace("-", "").replace("+", "").isalnum() or not 80 <= int(speed) <= 450:
            raise ValueError("invalid espeak-ng voice or speed")
        self._binary, self._voice, self._speed = binary, voice, int(speed)

    @property
    def model(self) -> str:
        """Model name shown in metrics and attributes."""
        return "espeak-ng"

    @property
    def provider(self) -> str:
        """Provider name (always ``local``)."""
        return "local"

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        """Synthesise ``text`` in one chunk."""
        return _EspeakStream(tts=self, input_text=text, conn_options=conn_options)

    async def synthesize_pcm(self, text: str) -> bytes:
        """Raw 16-bit PCM for ``text`` (the WAV header stripped)."""
        proc = await asyncio.create_subprocess_exec(
            self._binary, "-v", self._voice, "-s", str(self._speed), "--stdout", "--", text,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        wav, _ = await proc.communicate()
        if proc.returncode != 0:  # as a plugin reports a request that failed for good: the session sees an error
            raise APIError(f"espeak-ng exited with {proc.returncode}", retryable=False)
        at = wav.find(b"data")
        pcm = wav[at + 8 :] if at >= 0 else b""
        return pcm[: len(pcm) - len(pcm) % 2]


class _EspeakStream(tts.ChunkedStream):
    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        assert isinstance(self._tts, EspeakTTS)
        output_emitter.initialize(
            request_id=f"espeak-{uuid.uuid4().hex[:8]}",
            sample_rate=EspeakTTS.SAMPLE_RATE,
            num_channels=1,
            mime_type="audio/pcm",
        )
        text = self._input_text.strip()
        if text:
            output_emitter.push(await self._tts.synthesize_pcm(text))
        output_emitter.flush()


class SilentSTT(stt.STT):
    """A streaming STT that consumes the caller's audio and never produces a transcript."""

    def __init__(self) -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=True, interim_results=False))

    @property
    def model(self) -> str:
        """Model name shown in metrics and attributes."""
        return "silent"

    @property
    def provider(self) -> str:
        """Provider name (always ``local``)."""
        return "local"

    async def _recognize_impl(
        self, buffer: AudioBuffer, *, language: NotGivenOr[str] = NOT_GIVEN, conn_options: APIConnectOptions
    ) -> stt.SpeechEvent:
        return stt.SpeechEvent(type=stt.SpeechEventType.FINAL_TRANSCRIPT, alternatives=[])

    def stream(
        self, *, language: NotGivenOr[str] = NOT_GIVEN, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> stt.RecognizeStream:
        """A stream that swallows audio."""
        return _SilentStream(stt=self, conn_options=conn_options)


class _SilentStream(stt.RecognizeStream):
    async def _run(self) -> None:
        async for _ in self._input_ch:
            pass


__all__ = ["EspeakTTS", "ScriptedLLM", "SilentSTT"]
