"""A loopback stand-in for Cartesia's text-to-speech API, for the parts livekit-plugins-cartesia 1.8.9 calls (the
provider is the one stand-in: the plugin, its aiohttp client and the worker are real).

It speaks Cartesia's documented wire protocol, at the base URL a client is pointed at with ``base_url``:

- ``GET /tts/websocket?cartesia_version=...`` with an ``X-API-Key`` header: a websocket carrying many contexts at
  once, each named by the client's ``context_id``. A client message is a generation request (``model_id``,
  ``voice``, ``output_format``, ``language``, ``transcript``, ``continue``, ``add_timestamps``...); the messages of
  one context are continuations of one utterance, the last one has ``"continue": false``. For each piece of text
  the stand-in speaks it with espeak-ng, converted by sox to the requested ``output_format`` (``raw`` container;
  ``pcm_s16le``, ``pcm_f32le``, ``pcm_mulaw`` or ``pcm_alaw``; 8 to 48 kHz), and streams it as ``chunk``
  messages (base64 ``data``, ``done: false``, ``status_code: 206``) of 0.1 s each, then, with ``add_timestamps``,
  a ``timestamps`` message (``word_timestamps{words,start,end}``, seconds from the context's start, each word's
  share of the piece's audio in proportion to its letters: espeak-ng's CLI tells no word boundaries). Once the
  context's last message is answered: ``done`` (``done: true``). ``{"context_id", "cancel": true}`` ends a context
  with no further message. A request Cartesia would refuse (no ``model_id``, a format it does not offer) gets an
  ``error`` message;
- ``POST /tts/bytes`` (``X-API-Key`` and ``Cartesia-Version`` headers, the same JSON without the websocket's
  fields): the whole utterance's audio as the response body (``raw`` container only).

A missing or wrong key is a 401, a missing or unknown version a 400, anything else a 404, each with Cartesia's JSON
error body ``{"error_code", "title", "message", "request_id"}``. Cartesia's ``error`` message on a socket is
``{"type": "error", "done": true, "status_code", "error_code", "title", "message", "request_id", "context_id"}``
(its documented 429 is copied here; the other statuses' texts are made in its shape).

Fault switches, plain attributes a test may set at any time from its own thread (each applies from the next
handshake or context on):

- ``refuse``: an HTTP status (401, 402, 429, 503...): every handshake and ``/tts/bytes`` request is refused with it
  and Cartesia's error body;
- ``hang``: every handshake and ``/tts/bytes`` request is accepted over TCP and never answered;
- ``close_after_chunks``: N: the socket is closed (code 1011) when a context has sent N chunks and has more;
- ``error``: an HTTP-like status: each new context is answered with Cartesia's ``error`` message for it, in reply
  to its first message (its later messages are recorded and dropped), and no audio;
- ``first_chunk_delay``: seconds: no context's first chunk leaves before this long after its first message arrived
  (synthesis counts within it), a fixed provider latency for benches.

Every upgrade or HTTP request (``requests()``), every client message (``messages()``) and what was sent for each
context (``contexts()``) is recorded for the test's assertions. Runs an aiohttp server on 127.0.0.1 (a free port) in
a thread of its own; espeak-ng and sox are the Debian packages ``./dev setup`` installs.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import shutil
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.loopback import LoopbackServer

VERSIONS = ("2024-06-10", "2024-11-13", "2025-04-16", "2026-03-01")  # the cartesia_version values Cartesia names
SAMPLE_RATES = (8000, 16000, 22050, 24000, 44100, 48000)
ENCODINGS = {  # Cartesia's raw encodings, as sox writes them: (sox arguments, bytes per sample)
    "pcm_s16le": (["-e", "signed-integer", "-b", "16", "-L"], 2),
    "pcm_f32le": (["-e", "floating-point", "-b", "32", "-L"], 4),
    "pcm_mulaw": (["-e", "u-law", "-b", "8"], 1),
    "pcm_alaw": (["-e", "a-law", "-b", "8"], 1),
}
CHUNK_SECONDS = 0.1  # audio per chunk message
CLOSE_CODE = 1011  # the close code of close_after_chunks (internal error)
ERRORS = {  # status -> (error_code, title, message)
    400: ("invalid_request", "Invalid request", "The request is not valid."),
    401: ("unauthorized", "Unauthorized", "Invalid API key. Check your X-API-Key header."),
    402: ("insufficient_credits", "Payment required", "Your account has run out of credits."),
    404: ("not_found", "Not found", "There is nothing at this path."),
    429: ("concurrency_limited", "Too many concurrent requests", "You have exceeded your plan's concurrency limit."),
    500: ("internal_error", "Internal server error", "Something went wrong on our side."),
    503: ("service_unavailable", "Service unavailable", "The service is temporarily unavailable. Try again later."),
}


@dataclass(frozen=True)
class Request:
    """One websocket upgrade or HTTP request the stand-in was asked for."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names in lower case
    status: int  # 101: upgraded; 0: hung (``hang``), never answered; else the HTTP status answered
    body: dict[str, Any] | None = None  # /tts/bytes: the JSON body


@dataclass(frozen=True)
class Message:
    """One JSON message a client sent on a socket."""

    socket: int  # the socket it came on: its index in ``requests()``
    body: dict[str, Any]
    at: float  # time.monotonic() of its arrival

    @property
    def context_id(self) -> str | None:
        """The context it belongs to."""
        return self.body.get("context_id")

    @property
    def transcript(self) -> str:
        """The text it carries ("" if none)."""
        return str(self.body.get("transcript") or "")


@dataclass
class Context:
    """What the stand-in did for one context (a snapshot, from ``contexts()``)."""

    context_id: str
    socket: int
    first_message_at: float  # time.monotonic()
    sample_rate: int = 0
    encoding: str = ""
    first_chunk_at: float | None = None
    chunks: int = 0
    audio_bytes: int = 0
    words: list[str] = field(default_factory=list)  # the words of the timestamps messages sent
    done: bool = False  # the done message was sent
    error: dict[str, Any] | None = None  # the error message sent for it
    closed_socket: bool = False  # close_after_chunks closed its socket

    @property
    def audio_seconds(self) -> float:
        """Length of the audio sent."""
        width = ENCODINGS[self.encoding][1] if self.encoding in ENCODINGS else 2
        return self.audio_bytes / width / self.sample_rate if self.sample_rate else 0.0


def error_body(status: int, message: str | None = None) -> dict[str, Any]:
    """Cartesia's HTTP error body for ``status``."""
    code, title, text = ERRORS.get(status, (None, "Error", "The request failed."))
    return {"error_code": code, "title": title, "message": message or text, "request_id": str(uuid.uuid4())}


def error_message(status: int, context_id: str | None, message: str | None = None) -> dict[str, Any]:
    """Cartesia's ``error`` message on a socket, for ``status`` (``done`` is true, as Cartesia sends it)."""
    body = error_body(status, message)
    out = {"type": "error", "done": True, "status_code": status, **body}
    if context_id is not None:
        out["context_id"] = context_id
        out["request_id"] = f"{body['request_id']}:{context_id}"
    return out


def speak(text: str, *, encoding: str = "pcm_s16le", sample_rate: int = 24000, voice: str = "en-us",
          speed: int = 175) -> bytes:  # fmt: skip
    """``text`` spoken by espeak-ng, as raw audio in ``encoding`` at ``sample_rate`` (converted by sox)."""
    missing = [b for b in ("espeak-ng", "sox") if shutil.which(b) is None]
    if missing:
        raise RuntimeError(f"not installed: {missing}; run `./dev setup` (Debian packages espeak-ng and sox)")
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", "--", text],
                         capture_output=True, check=True, timeout=30).stdout  # fmt: skip
    sox = ["sox", "-t", "wav", "-", "-t", "raw", "-r", str(sample_rate), "-c", "1", *ENCODINGS[encoding][0], "-"]
    return subprocess.run(sox, input=wav, capture_output=True, check=True, timeout=30).stdout


def _format_problem(body: dict[str, Any], *, websocket: bool) -> str | None:
    """Why Cartesia would refuse this generation request (None: it would not)."""
    if not isinstance(body.get("model_id"), str) or not body["model_id"]:
        return "model_id is required."
    voice = body.get("voice")
    if not isinstance(voice, dict) or not (
        (voice.get("mode") == "id" and isinstance(voice.get("id"), str))
        or (voice.get("mode") == "embedding" and isinstance(voice.get("embedding"), list))
    ):
        return "voice must be {'mode': 'id', 'id': ...} or {'mode': 'embedding', 'embedding': [...]}."
    if not isinstance(body.get("transcript"), str):
        return "transcript is required."
    fmt = body.get("output_format")
    if not isinstance(fmt, dict) or fmt.get("container") != "raw":
        return "output_format.container: this stand-in encodes the raw container only."
    if fmt.get("encoding") not in ENCODINGS:
        return f"output_format.encoding must be one of {sorted(ENCODINGS)}."
    if fmt.get("sample_rate") not in SAMPLE_RATES:
        return f"output_format.sample_rate must be one of {list(SAMPLE_RATES)}."
    if websocket and body.get("context_id") is not None and not isinstance(body["context_id"], str):
        return "context_id must be a string."
    return None


class CartesiaStandIn(LoopbackServer):
    """The server; ``base_url`` is what the plugin's ``base_url`` takes; the fault switches are attributes."""

    def __init__(self, *, api_key: str | None = None, voice: str = "en-us", speed: int = 175) -> None:
        super().__init__("cartesia-standin")
        """``api_key``: the only key accepted (None: any non-empty one); ``voice``, ``speed``: espeak-ng's."""
        self.api_key = api_key
        self.voice, self.speed = voice, speed
        # fault switches (see the module's docstring)
        self.refuse: int | None = None
        self.hang = False
        self.close_after_chunks: int | None = None
        self.error: int | None = None
        self.first_chunk_delay = 0.0
        self._requests: list[Request] = []
        self._messages: list[Message] = []
        self._contexts: dict[str, Context] = {}
        self._lock = threading.Lock()
        self._released: asyncio.Event | None = None
        self._sockets: set[web.WebSocketResponse] = set()

    # ------------------------------------------------------------------------------------------ lifecycle

    async def _serve(self) -> int:
        self._released = asyncio.Event()
        app = web.Application()
        app.router.add_get("/tts/websocket", self._websocket)
        app.router.add_post("/tts/bytes", self._bytes)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        return await self._serve_app(app)

    async def _shutdown(self) -> None:
        assert self._released is not None and self._runner is not None
        self._released.set()
        for ws in list(self._sockets):
            await ws.close(code=1001, message=b"server shutting down")
        await self._runner.cleanup()

    # ------------------------------------------------------------------------------------------ records

    def requests(self, path: str | None = None) -> list[Request]:
        """Every upgrade and HTTP request so far (those to ``path`` only, e.g. ``/tts/websocket``), in order."""
        with self._lock:
            return [r for r in self._requests if path is None or r.path == path]

    def messages(self, context_id: str | None = None) -> list[Message]:
        """Every client message so far (those of ``context_id`` only), in order of arrival."""
        with self._lock:
            return [m for m in self._messages if context_id is None or m.context_id == context_id]

    def transcript(self, context_id: str) -> str:
        """The text the client sent for a context: its messages' transcripts, joined."""
        return "".join(m.transcript for m in self.messages(context_id))

    def contexts(self) -> list[Context]:
        """What was done for each context so far (snapshots), in order of their first message."""
        with self._lock:
            return [dataclasses.replace(c, words=list(c.words)) for c in self._contexts.values()]

    def _record(self, request: web.Request, status: int, body: dict[str, Any] | None = None) -> int:
        with self._lock:
            headers = {k.lower(): v for k, v in request.headers.items()}
            self._requests.append(Request(request.method, request.path, dict(request.query), headers, status, body))
            return len(self._requests) - 1

    # ------------------------------------------------------------------------------------------ admission

    async def _admit(self, request: web.Request, version: str | None) -> web.Response | None:
        """The answer refusing ``request`` (after hanging, for ``hang``), or None to serve it."""
        if self.hang:
            self._record(request, 0)
            assert self._released is not None
            await self._released.wait()  # until the stand-in stops: the client gives up first
            return web.json_response(error_body(503), status=503)
        status, message = 0, None
        if self.refuse is not None:
            status = self.refuse
        elif not request.headers.get("X-API-Key", "").strip():
            status, message = 401, "No API key was provided. Set the X-API-Key header."
        elif self.api_key is not None and request.headers["X-API-Key"] != self.api_key:
            status = 401
        elif version not in VERSIONS:
            status = 400
            message = f"Cartesia version {version!r} is not valid; use one of {', '.join(VERSIONS)}."
        if not status:
            return None
        self._record(request, status)
        return web.json_response(error_body(status, message), status=status)

    async def _not_found(self, request: web.Request) -> web.Response:
        self._record(request, 404)
        return web.json_response(error_body(404, f"{request.method} {request.path} is not a Cartesia endpoint."),
                                 status=404)  # fmt: skip

    # ------------------------------------------------------------------------------------------ /tts/bytes

    async def _bytes(self, request: web.Request) -> web.StreamResponse:
        if refused := await self._admit(request, request.headers.get("Cartesia-Version")):
            return refused
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            self._record(request, 400)
            return web.json_response(error_body(400, "The body must be a JSON object."), status=400)
        if problem := _format_problem(body, websocket=False):
            self._record(request, 400, body)
            return web.json_response(error_body(400, problem), status=400)
        self._record(request, 200, body)
        fmt = body["output_format"]
        audio = await self._speak(body["transcript"], fmt["encoding"], fmt["sample_rate"])
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await resp.prepare(request)
        step = int(CHUNK_SECONDS * fmt["sample_rate"]) * ENCODINGS[fmt["encoding"]][1]
        for at in range(0, len(audio), step):
            await resp.write(audio[at : at + step])
        await resp.write_eof()
        return resp

    async def _speak(self, text: str, encoding: str, sample_rate: int) -> bytes:
        return await asyncio.to_thread(speak, text, encoding=encoding, sample_rate=sample_rate, voice=self.voice,
                                       speed=self.speed)  # fmt: skip

    # ------------------------------------------------------------------------------------------ /tts/websocket

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        if refused := await self._admit(request, request.query.get("cartesia_version")):
            return refused
        ws = web.WebSocketResponse(timeout=2.0)
        if not ws.can_prepare(request).ok:
            self._record(request, 400)
            return web.json_response(error_body(400, "Expected a websocket upgrade."), status=400)
        socket = self._record(request, 101)
        await ws.prepare(request)
        self._sockets.add(ws)
        queues: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        tasks: dict[str, asyncio.Task[None]] = {}
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    body = json.loads(msg.data)
                except ValueError:
                    body = None
                if not isinstance(body, dict):
                    await ws.send_json(error_message(400, None, "Messages must be JSON objects."))
                    continue
                body.setdefault("context_id", str(uuid.uuid4()))  # Cartesia names a context the client did not
                cid = body["context_id"]
                with self._lock:
                    self._messages.append(Message(socket, body, time.monotonic()))
                if body.get("cancel"):
                    if cid in tasks:
                        tasks[cid].cancel()
                    continue
                if cid in queues:
                    queues[cid].put_nowait(body)
                    continue
                queues[cid] = asyncio.Queue()
                queues[cid].put_nowait(body)
                tasks[cid] = asyncio.create_task(self._context(ws, socket, body, queues[cid]))
        finally:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
            self._sockets.discard(ws)
        return ws

    async def _context(self, ws: web.WebSocketResponse, socket: int, first: dict[str, Any],
                       queue: asyncio.Queue[dict[str, Any]]) -> None:  # fmt: skip
        """Answer one context: its first message is ``first``, its others come through ``queue``."""
        cid = first["context_id"]
        ctx = Context(cid, socket, time.monotonic())
        with self._lock:
            self._contexts[cid] = ctx
        try:
            problem = _format_problem(first, websocket=True)
            if problem or self.error is not None:
                error = error_message(400 if problem else int(self.error or 0), cid, problem)
                await ws.send_json(error)
                with self._lock:
                    ctx.error = error
                return  # later messages of this context stay in the queue, unanswered
            fmt = first["output_format"]
            with self._lock:
                ctx.encoding, ctx.sample_rate = fmt["encoding"], fmt["sample_rate"]
            step = int(CHUNK_SECONDS * ctx.sample_rate) * ENCODINGS[ctx.encoding][1]
            while True:
                body = await queue.get()
                text = body.get("transcript") or ""
                if isinstance(text, str) and text.strip():
                    offset = ctx.audio_seconds
                    audio = await self._speak(text, ctx.encoding, ctx.sample_rate)
                    for at in range(0, len(audio), step):
                        if ctx.first_chunk_at is None:
                            await asyncio.sleep(ctx.first_message_at + self.first_chunk_delay - time.monotonic())
                        limit = self.close_after_chunks
                        if limit is not None and ctx.chunks >= limit:
                            with self._lock:
                                ctx.closed_socket = True
                            await ws.close(code=CLOSE_CODE, message=b"stand-in: close_after_chunks")
                            return
                        chunk = audio[at : at + step]
                        data = base64.b64encode(chunk).decode()
                        await ws.send_json({"type": "chunk", "data": data, "done": False, "status_code": 206,
                                            "context_id": cid})  # fmt: skip
                        with self._lock:
                            ctx.first_chunk_at = ctx.first_chunk_at or time.monotonic()
                            ctx.chunks += 1
                            ctx.audio_bytes += len(chunk)
                    if body.get("add_timestamps"):
                        words = text.split()
                        await ws.send_json({"type": "timestamps", "done": False, "status_code": 206, "context_id": cid,
                                            "word_timestamps": _word_times(words, offset, ctx.audio_seconds)})  # fmt: skip
                        with self._lock:
                            ctx.words += words
                if not body.get("continue", False):
                    await ws.send_json({"type": "done", "done": True, "status_code": 206, "context_id": cid})
                    with self._lock:
                        ctx.done = True
                    return
        except ConnectionError:  # the client went away mid-answer
            return


def _word_times(words: list[str], start: float, end: float) -> dict[str, list[Any]]:
    """Each word's share of [start, end], in proportion to its letters (plus one for the gap after it)."""
    weights = [len(w) + 1 for w in words]
    per = (end - start) / sum(weights)
    starts, ends, at = [], [], start
    for w in weights:
        starts.append(round(at, 3))
        at += w * per
        ends.append(round(at, 3))
    return {"words": words, "start": starts, "end": ends}
