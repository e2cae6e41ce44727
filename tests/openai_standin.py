"""A loopback stand-in for the OpenAI HTTP API, for the parts livekit-plugins-openai 1.8.9 calls (the provider is
the one stand-in: the plugin, its ``openai`` client and the worker are real).

It speaks OpenAI's documented wire protocol, under the ``/v1`` base URL a client is pointed at with ``base_url``:

- ``POST /v1/chat/completions`` with ``"stream": true``: ``text/event-stream`` of ``data: {chat.completion.chunk}``
  lines (the role, the reply in several content deltas, ``finish_reason: "stop"``), with ``"usage": null`` on each
  and a last chunk with empty ``choices`` and the ``usage`` when ``stream_options.include_usage`` is set, then
  ``data: [DONE]``. The reply is ``reply(request_body, n)`` for the ``n``-th request, a constructor argument;
- ``POST /v1/audio/speech``: 24 kHz 16-bit mono little-endian PCM (``response_format`` ``pcm``) or the same in a
  WAV file (``wav``), a tone whose length follows the input text; with ``"stream_format": "sse"`` as
  ``speech.audio.delta`` events (base64 ``audio``) and a ``speech.audio.done`` event with ``usage``, else the
  audio bytes themselves. Other formats (mp3, opus, aac, flac) are refused with a 400: no encoder here;
- ``POST /v1/audio/transcriptions`` (multipart form: ``file``, ``model``, ``response_format``...): the uploaded file
  must be a WAV; answers ``transcript`` as ``{"text", "usage"}`` (``json``) or plain text (``text``);
- ``GET /v1/models`` (what the plugin's LLM prewarm asks): the model list.

Anything else is a 404, a missing ``Authorization`` a 401, a malformed request a 400, each with OpenAI's error body
``{"error": {"message", "type", "param", "code"}}``. ``first_token_delay_s`` (settable at any time) holds each
streamed chat reply's first content delta back that long after the request arrived: a fixed time to first token,
for latency benches. Every request is recorded (method, path, headers, JSON body or form fields, the text streamed
back) for the test's assertions. Runs an aiohttp server on 127.0.0.1 (a free port) in a thread of its own.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import struct
import threading
import time
import uuid
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.loopback import LoopbackServer

SAMPLE_RATE = 24000  # OpenAI's pcm: 24 kHz, 16-bit signed little-endian, mono
SECONDS_PER_WORD = 0.12  # length of the synthesized tone per word of input (a short utterance per sentence)
CHUNK_BYTES = 4800  # 0.1 s of audio per speech.audio.delta event
SPEECH_FORMATS = {"pcm": "audio/pcm", "wav": "audio/wav"}


@dataclass(frozen=True)
class Recorded:
    """One request the stand-in answered."""

    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: dict[str, Any] | None = None  # the JSON body, or the form's text fields
    upload: dict[str, Any] | None = None  # an uploaded file: name, content type, size, WAV rate / channels / seconds
    reply: str | None = None  # the text streamed back (chat) or the transcript
    status: int = 200
    at: float = field(default_factory=time.monotonic)  # when it was recorded (time.monotonic(); a chat: on arrival)


def default_reply(body: dict[str, Any], n: int) -> str:
    """The ``n``-th chat request's reply: two sentences, distinct per request."""
    return f"Hello from the stand-in endpoint. This is streamed reply number {n}, to {len(body['messages'])} messages."


def _error(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.json_response(body, status=status)


def _words(text: str) -> int:
    return max(1, len(text.split()))


def tone(seconds: float) -> bytes:
    """A 440 Hz tone as 24 kHz 16-bit mono little-endian PCM."""
    n = int(SAMPLE_RATE * seconds)
    return struct.pack(f"<{n}h", *(int(8000 * math.sin(2 * math.pi * 440 * i / SAMPLE_RATE)) for i in range(n)))


def wav_file(pcm: bytes) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm)
    return out.getvalue()


async def _request_id(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["x-request-id"] = f"req_{uuid.uuid4().hex}"  # OpenAI names every response


def _sse(payload: dict[str, Any] | str) -> bytes:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n".encode()


class OpenAIStandIn(LoopbackServer):
    """The server; ``base_url`` is what a client's ``base_url`` takes; ``requests()`` what it was asked."""

    PATH = "/v1"

    def __init__(
        self,
        reply: Callable[[dict[str, Any], int], str] = default_reply,
        transcript: str = "I would like to know my balance, please.",
        *,
        first_token_delay_s: float = 0.0,
    ) -> None:
        super().__init__("openai-standin")
        self.reply = reply
        self.transcript = transcript
        self.first_token_delay_s = first_token_delay_s
        self.refuse: int | None = None
        """A fault switch: when set, every request is answered with this status and OpenAI's error body."""
        self._recorded: list[Recorded] = []
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ lifecycle

    async def _serve(self) -> int:
        app = web.Application(client_max_size=25 * 1024 * 1024)  # OpenAI's upload limit: 25 MB
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/audio/speech", self._speech)
        app.router.add_post("/v1/audio/transcriptions", self._transcriptions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        app.on_response_prepare.append(_request_id)
        return await self._serve_app(app)

    # ------------------------------------------------------------------------------------------ records

    def requests(self, path: str | None = None) -> list[Recorded]:
        """Every request so far (those to ``path`` under ``/v1`` only, e.g. ``/chat/completions``), in order."""
        with self._lock:
            return [r for r in self._recorded if path is None or r.path == "/v1" + path]

    def _record(self, request: web.Request, **kw: Any) -> None:
        with self._lock:
            headers = {k.lower(): v for k, v in request.headers.items()}
            self._recorded.append(Recorded(request.method, request.path, headers, **kw))

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if self.refuse is not None:  # the fault switch: as OpenAI answers an overload or an outage
            self._record(request, status=self.refuse)
            kind = "rate_limit_exceeded" if self.refuse == 429 else "server_error"
            return _error(self.refuse, "The server is currently overloaded with other requests.", code=kind)
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer ") and auth[7:].strip():
            return None
        self._record(request, status=401)
        return _error(401, "You didn't provide an API key.", code="invalid_api_key")

    async def _json(self, request: web.Request) -> dict[str, Any] | web.Response:
        try:
            body = await request.json()
        except ValueError:
            self._record(request, status=400)
            return _error(400, "We could not parse the JSON body of your request.")
        if not isinstance(body, dict):
            self._record(request, status=400)
            return _error(400, "The request body must be a JSON object.")
        return body

    # ------------------------------------------------------------------------------------------ endpoints

    async def _not_found(self, request: web.Request) -> web.Response:
        self._record(request, status=404)
        return _error(404, f"Invalid URL ({request.method} {request.path})")

    async def _models(self, request: web.Request) -> web.Response:
        if denied := self._unauthorized(request):
            return denied
        self._record(request)
        models = ("gpt-4.1-mini", "gpt-4o-mini", "gpt-4o-mini-transcribe", "gpt-4o-mini-tts")
        data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "system"} for m in models]
        return web.json_response({"object": "list", "data": data})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        if denied := self._unauthorized(request):
            return denied
        body = await self._json(request)
        if isinstance(body, web.Response):
            return body
        if not isinstance(body.get("model"), str) or not isinstance(body.get("messages"), list):
            self._record(request, body=body, status=400)
            return _error(400, "'model' and 'messages' are required properties.")
        if body.get("stream") is not True:
            self._record(request, body=body, status=400)
            return _error(400, "This stand-in serves streamed chat completions only ('stream': true).")
        text = self.reply(body, len(self.requests("/chat/completions")) + 1)
        self._record(request, body=body, reply=text)

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": body["model"], "system_fingerprint": "fp_standin"}  # fmt: skip

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            out = {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            return {**out, "usage": None} if include_usage else out

        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        await resp.write(_sse(chunk({"role": "assistant", "content": "", "refusal": None})))
        pieces = text.split(" ")
        await asyncio.sleep(arrived + self.first_token_delay_s - time.monotonic())  # the time to first token
        for i, piece in enumerate(pieces):  # one content delta per word, as a model streams tokens
            await resp.write(_sse(chunk({"content": piece if i == 0 else " " + piece})))
            await asyncio.sleep(0.01)
        await resp.write(_sse(chunk({}, "stop")))
        if include_usage:
            prompt = sum(_words(json.dumps(m)) for m in body["messages"])
            usage = {"prompt_tokens": prompt, "completion_tokens": len(pieces), "total_tokens": prompt + len(pieces),
                     "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                     "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                                   "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}  # fmt: skip
            await resp.write(_sse({**head, "choices": [], "usage": usage}))
        await resp.write(_sse("[DONE]"))
        await resp.write_eof()
        return resp

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        if denied := self._unauthorized(request):
            return denied
        body = await self._json(request)
        if isinstance(body, web.Response):
            return body
        text, fmt = body.get("input"), body.get("response_format", "mp3")
        if not isinstance(text, str) or not text or not body.get("model") or not body.get("voice"):
            self._record(request, body=body, status=400)
            return _error(400, "'input', 'model' and 'voice' are required properties.")
        if fmt not in SPEECH_FORMATS:
            self._record(request, body=body, status=400)
            return _error(400, f"response_format {fmt!r}: this stand-in encodes pcm and wav only.")
        self._record(request, body=body)
        pcm = tone(SECONDS_PER_WORD * _words(text))
        audio = wav_file(pcm) if fmt == "wav" else pcm
        if body.get("stream_format") != "sse":
            return web.Response(body=audio, headers={"Content-Type": SPEECH_FORMATS[fmt]})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        for at in range(0, len(audio), CHUNK_BYTES):
            chunk = base64.b64encode(audio[at : at + CHUNK_BYTES]).decode()
            await resp.write(_sse({"type": "speech.audio.delta", "audio": chunk}))
        usage = {"input_tokens": _words(text), "output_tokens": len(pcm) // 480, "total_tokens": 0}
        usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
        await resp.write(_sse({"type": "speech.audio.done", "usage": usage}))
        await resp.write_eof()
        return resp

    async def _transcriptions(self, request: web.Request) -> web.Response:
        if denied := self._unauthorized(request):
            return denied
        if not request.content_type.startswith("multipart/"):
            self._record(request, status=400)
            return _error(400, "Expected a multipart/form-data body.")
        form = await request.post()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        upload = form.get("file")
        if not isinstance(upload, web.FileField) or not fields.get("model"):
            self._record(request, body=fields, status=400)
            return _error(400, "'file' and 'model' are required properties.")
        data = upload.file.read()
        info: dict[str, Any] = {"filename": upload.filename, "content_type": upload.content_type, "bytes": len(data)}
        try:
            with wave.open(io.BytesIO(data), "rb") as w:
                info.update(rate=w.getframerate(), channels=w.getnchannels(), seconds=w.getnframes() / w.getframerate())
        except (wave.Error, EOFError, ZeroDivisionError):
            self._record(request, body=fields, upload=info, status=400)
            return _error(400, "Audio file might be corrupted or unsupported (expected WAV).")
        fmt = fields.get("response_format", "json")
        if fmt not in ("json", "text"):
            self._record(request, body=fields, upload=info, status=400)
            return _error(400, f"response_format {fmt!r}: this stand-in answers json and text only.")
        self._record(request, body=fields, upload=info, reply=self.transcript)
        if fmt == "text":
            return web.Response(text=self.transcript + "\n", content_type="text/plain")
        audio_tokens = max(1, int(info["seconds"] * 10))
        usage = {"type": "tokens", "input_tokens": audio_tokens, "output_tokens": _words(self.transcript),
                 "input_token_details": {"text_tokens": 0, "audio_tokens": audio_tokens},
                 "total_tokens": audio_tokens + _words(self.transcript)}  # fmt: skip
        return web.json_response({"text": self.transcript, "usage": usage})
