"""A loopback stand-in for Deepgram's live streaming speech-to-text, for what livekit-plugins-deepgram 1.8.9 speaks
(the provider is the one stand-in: the plugin, its aiohttp client and the worker are real).

It speaks Deepgram's documented ``/v1/listen`` websocket protocol, at the URL a client's ``base_url`` takes:

- the upgrade (``GET /v1/listen?model=...&encoding=linear16&sample_rate=16000&...``) needs ``Authorization: Token
  <key>``: a missing or empty token, or with ``api_key`` set another key, is refused with a 401 and Deepgram's body
  ``{"err_code", "err_msg", "request_id"}`` (also in the ``dg-error`` header; every answer has ``dg-request-id``).
  The query is recorded as sent. Raw audio must be ``encoding=linear16`` with a ``sample_rate``: anything else is
  a 400 (no decoder here);
- client binary frames are 16-bit little-endian PCM, kept as received. Text frames: ``{"type": "KeepAlive"}`` (no
  answer), ``{"type": "Finalize"}`` (a ``Results`` with ``from_finalize: true``, the utterance in progress if any),
  ``{"type": "CloseStream"}`` (the utterance in progress as a final ``Results``, then ``Metadata``, then close 1000);
- 10 s (``idle_timeout_s``) with neither audio nor a text message: close 1011 with Deepgram's ``NET-0001`` reason;
- transcription by energy, in stream time (the audio's own clock, so audio pushed faster than real time is
  transcribed as fast): a 10 ms window whose RMS reaches ``speech_rms`` starts an utterance (``SpeechStarted`` when
  ``vad_events=true``), interim ``Results`` follow every 0.5 s of audio (``interim_results=true``), and once the
  audio has been quiet for the query's ``endpointing`` ms (at least ``min_silence_ms``: Deepgram's VAD does not end
  an utterance at the short gaps between words, an energy detector would) a final ``Results`` (``is_final`` and
  ``speech_final`` true) carries the next scripted transcript, its words spread over the loud span with ``start``
  and ``end``. ``UtteranceEnd`` follows when the query set ``utterance_end_ms`` and that much quiet has passed
  after the last word, as Deepgram sends it. An utterance with under 0.1 s of loud audio is noise: its final is
  empty and takes no transcript. ``punctuate=false`` gives lower-case words without punctuation.

Fault switches, set from the test's thread at any time (each for ``times`` connections, or until cleared): refuse
the upgrade with 401/402/429/503 and Deepgram's body, hang the handshake (the request is read, the upgrade never
answered), close a stream mid-way (after its N-th audio frame or at its next speech onset) with a given close code,
stall a stream at its first speech onset (it reads on and never sends again), and a fixed delay before each final transcript. Every connection is recorded (query, headers, status, audio frames,
the client's text messages, what was sent back, who closed it with which code). Runs an aiohttp server on
127.0.0.1 (a free port) in a thread of its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import hashlib
import json
import math
import re
import struct
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.loopback import LoopbackServer

DEFAULT_TRANSCRIPTS = ("I would like to check my order.",)
WINDOW_S = 0.01  # the energy detector's window
INTERIM_EVERY_S = 0.5  # an interim Results per this much audio of an utterance
MIN_SPEECH_S = 0.1  # an utterance with less loud audio is noise: an empty final
DEFAULT_ENDPOINTING_MS = 10  # Deepgram's default when the query has no endpointing
NET_0001 = (
    "Deepgram did not receive audio data or a text message within the timeout window. See https://dpgr.am/net0001"
)
MODEL_UUID = "1abfe86b-e047-4eed-858a-35e5625b41ee"
NO_CREDIT = "Project does not have enough credits for an ASR request and does not have an overage agreement."
REFUSALS = {  # Deepgram's error bodies (err_code, err_msg) for the statuses the refuse switch gives
    400: ("Bad Request", "Bad Request: failed to process the request."),
    401: ("INVALID_AUTH", "Invalid credentials."),
    402: ("ASR_PAYMENT_REQUIRED", NO_CREDIT),
    429: ("TOO_MANY_REQUESTS", "Too many requests. Please try again later"),
    # Deepgram documents no body for 503: this one is in its style
    503: ("SERVICE_UNAVAILABLE", "The service is temporarily unavailable. Please try again later."),
}


@dataclass
class Connection:
    """One upgrade request and, when it was accepted, its stream; ``connections()`` returns copies."""

    path: str
    query: dict[str, str]  # as sent; a repeated parameter (keyterm, tag...) has its values joined with ","
    headers: dict[str, str]  # names in lower case
    request_id: str
    status: int | None = None  # 101 accepted, the refusal's status, None while the handshake hangs
    frames: list[bytes] = field(default_factory=list)  # binary audio frames, as received
    received: list[dict[str, Any]] = field(default_factory=list)  # the client's text messages (JSON)
    sent: list[dict[str, Any]] = field(default_factory=list)  # what the stand-in sent back, in order
    close_code: int | None = None  # the code the stream closed with
    closed_by: str | None = None  # "server" or "client"
    stalled: bool = False  # the stall switch silenced it: from a speech onset on, nothing was sent

    @property
    def sample_rate(self) -> int:
        """The query's ``sample_rate``."""
        return int(self.query["sample_rate"])

    @property
    def channels(self) -> int:
        """The query's ``channels`` (Deepgram's default: 1)."""
        return int(self.query.get("channels", "1"))

    @property
    def audio(self) -> bytes:
        """Every audio byte received, in order."""
        return b"".join(self.frames)

    @property
    def audio_seconds(self) -> float:
        """The received audio's duration, as linear16 at the query's sample rate and channels."""
        return len(self.audio) / (2 * self.channels * self.sample_rate)

    @property
    def rms(self) -> float:
        """The received audio's RMS energy (16-bit sample units, 0 for silence)."""
        return _rms(self.audio)

    def sent_of(self, kind: str) -> list[dict[str, Any]]:
        """The messages of type ``kind`` (``Results``, ``SpeechStarted``, ``UtteranceEnd``, ``Metadata``) sent."""
        return [m for m in self.sent if m.get("type") == kind]

    @property
    def finals(self) -> list[str]:
        """The transcripts of the final ``Results`` sent (empty ones included)."""
        return [m["channel"]["alternatives"][0]["transcript"] for m in self.sent_of("Results") if m["is_final"]]


@dataclass
class _Fault:
    """One switch: its setting, and for how many more connections it holds (None: until cleared)."""

    setting: Any = None
    times: int | None = None

    def take(self) -> Any:
        """The setting for a new connection, counting it down."""
        if self.setting is None:
            return None
        setting = self.setting
        if self.times is not None:
            self.times -= 1
            if self.times <= 0:
                self.setting, self.times = None, None
        return setting


@dataclass(frozen=True)
class _Close:
    code: int
    reason: str
    after_frames: int | None
    on_speech: bool


def _rms(pcm: bytes) -> float:
    n = len(pcm) // 2
    if n == 0:
        return 0.0
    samples = struct.unpack(f"<{n}h", pcm[: 2 * n])
    return math.sqrt(sum(s * s for s in samples) / n)


def _bare(word: str) -> str:
    return re.sub(r"[^\w']", "", word).lower()


class _Transcriber:
    """One stream's energy detector: audio and control messages in, Deepgram's messages out."""

    def __init__(self, conn: Connection, next_transcript: Callable[[bool], str], speech_rms: float,
                 min_silence_ms: int) -> None:  # fmt: skip
        q = conn.query
        self.conn, self.next_transcript, self.speech_rms = conn, next_transcript, speech_rms
        self.window = int(conn.sample_rate * WINDOW_S) * 2 * conn.channels
        self.interims, self.vad_events = q.get("interim_results") == "true", q.get("vad_events") == "true"
        self.punctuate = q.get("punctuate") == "true"
        endpointing = q.get("endpointing", "")
        self.endpointing = endpointing != "false"  # false: finals without speech_final
        endpoint_ms = int(endpointing) if endpointing.isdigit() else DEFAULT_ENDPOINTING_MS
        self.endpoint_s = max(endpoint_ms, min_silence_ms) / 1000
        self.utterance_end_s = int(q["utterance_end_ms"]) / 1000 if "utterance_end_ms" in q else None
        self.model = q.get("model", "base")
        self.pending = b""
        self.t = 0.0  # stream time: seconds of audio processed
        self.speaking = False
        self.start = self.loud_end = self.loud_s = self.quiet_s = self.next_interim = 0.0
        self.n_interims = 0
        self.utterance_end_due: float | None = None
        self.onsets = 0  # utterances started so far

    def feed(self, pcm: bytes) -> list[dict[str, Any]]:
        """The messages ``pcm`` (linear16) gives, window by window."""
        out: list[dict[str, Any]] = []
        self.pending += pcm
        while len(self.pending) >= self.window:
            chunk, self.pending = self.pending[: self.window], self.pending[self.window :]
            self._window(_rms(chunk) >= self.speech_rms, out)
        return out

    def _window(self, loud: bool, out: list[dict[str, Any]]) -> None:
        if loud and not self.speaking:
            self.speaking, self.onsets, self.utterance_end_due = True, self.onsets + 1, None
            self.start, self.loud_s, self.n_interims, self.next_interim = self.t, 0.0, 0, self.t + INTERIM_EVERY_S
            if self.vad_events:
                out.append({"type": "SpeechStarted", "channel": [0, 1], "timestamp": round(self.t, 3)})
        self.t += WINDOW_S
        if loud:
            self.loud_s, self.loud_end, self.quiet_s = self.loud_s + WINDOW_S, self.t, 0.0
        elif self.speaking:
            self.quiet_s += WINDOW_S
        if self.speaking and self.interims and loud and self.t >= self.next_interim:
            self.next_interim += INTERIM_EVERY_S
            self.n_interims += 1
            out.append(self._results(is_final=False, speech_final=False))
        if self.speaking and self.quiet_s >= self.endpoint_s - 1e-9:
            out.append(self._end_utterance(speech_final=self.endpointing))
        if self.utterance_end_due is not None and self.t >= self.utterance_end_due:
            self.utterance_end_due = None
            out.append({"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": round(self.loud_end, 3)})

    def _end_utterance(self, *, speech_final: bool, from_finalize: bool = False) -> dict[str, Any]:
        self.speaking = False
        if self.utterance_end_s is not None:
            self.utterance_end_due = self.loud_end + self.utterance_end_s
        return self._results(is_final=True, speech_final=speech_final, from_finalize=from_finalize)

    def finalize(self) -> list[dict[str, Any]]:
        """``Finalize``: the utterance in progress as a final, else an empty one, with ``from_finalize: true``."""
        if self.speaking:
            return [self._end_utterance(speech_final=False, from_finalize=True)]
        self.start = self.loud_end = self.t
        return [self._results(is_final=True, speech_final=False, from_finalize=True, empty=True)]

    def close(self) -> list[dict[str, Any]]:
        """``CloseStream``: the utterance in progress as a final, then ``Metadata``."""
        out = [self._end_utterance(speech_final=True)] if self.speaking else []
        audio = self.conn.audio
        return [*out, {
            "type": "Metadata", "transaction_key": "deprecated", "request_id": self.conn.request_id,
            "sha256": hashlib.sha256(audio).hexdigest(), "created": datetime.datetime.now(datetime.UTC).isoformat(),
            "duration": round(self.conn.audio_seconds, 3), "channels": self.conn.channels, "models": [MODEL_UUID],
            "model_info": {MODEL_UUID: {"name": f"general-{self.model}", "version": "2025-01-01.0", "arch": self.model}},
        }]  # fmt: skip

    def _results(self, *, is_final: bool, speech_final: bool, from_finalize: bool = False,
                 empty: bool = False) -> dict[str, Any]:  # fmt: skip
        end = self.loud_end if self.loud_end > self.start else self.t
        text = ""
        if not empty and (not is_final or self.loud_s >= MIN_SPEECH_S):
            text = self.next_transcript(is_final)
        tokens = text.split()
        if not is_final:  # an interim: the first words heard so far
            tokens = tokens[: min(self.n_interims, len(tokens))]
        step = (end - self.start) / max(1, len(tokens))
        words = []
        for i, token in enumerate(tokens):
            word = {"word": _bare(token), "start": round(self.start + i * step, 3),
                    "end": round(self.start + (i + 1) * step, 3), "confidence": 0.99}  # fmt: skip
            if self.punctuate:
                word["punctuated_word"] = token
            words.append(word)
        transcript = " ".join(tokens) if self.punctuate else " ".join(w["word"] for w in words)
        return {
            "type": "Results", "channel_index": [0, 1], "duration": round(end - self.start, 3),
            "start": round(self.start, 3), "is_final": is_final, "speech_final": speech_final,
            "from_finalize": from_finalize,
            "channel": {"alternatives": [{"transcript": transcript, "confidence": 0.99 if words else 0.0,
                                          "words": words}]},
            "metadata": {"request_id": self.conn.request_id, "model_uuid": MODEL_UUID,
                         "model_info": {"name": f"general-{self.model}", "version": "2025-01-01.0",
                                        "arch": self.model}},
        }  # fmt: skip


class DeepgramStandIn(LoopbackServer):
    """The server; ``base_url`` is what the plugin's ``base_url`` takes; ``connections()`` what it was asked.

    ``transcripts`` are given in turn, one per utterance, cycling (across connections). ``api_key``, when set, is
    the only key accepted (else any non-empty one). ``speech_rms`` is the loudness (RMS of 16-bit samples) that
    counts as speech; ``idle_timeout_s`` Deepgram's NET-0001 timeout. ``final_delay_s`` (settable at any time) holds
    each non-empty final back that long, for latency benches.
    """

    PATH = "/v1/listen"

    def __init__(
        self,
        transcripts: Sequence[str] = DEFAULT_TRANSCRIPTS,
        *,
        api_key: str | None = None,
        speech_rms: float = 300.0,
        min_silence_ms: int = 400,
        idle_timeout_s: float = 10.0,
        final_delay_s: float = 0.0,
    ) -> None:
        super().__init__("deepgram-standin")
        assert transcripts, "at least one transcript"
        self.transcripts = tuple(transcripts)
        self.api_key = api_key
        self.speech_rms = speech_rms
        self.min_silence_ms = min_silence_ms
        self.idle_timeout_s = idle_timeout_s
        self.final_delay_s = final_delay_s
        self._next = 0  # index of the next transcript
        self._connections: list[Connection] = []
        self._refuse, self._hang, self._close, self._stall = _Fault(), _Fault(), _Fault(), _Fault()
        self._lock = threading.Lock()
        self._stopping = asyncio.Event()
        self._sockets: dict[web.WebSocketResponse, Connection] = {}

    # ------------------------------------------------------------------------------------------ lifecycle

    async def _serve(self) -> int:
        app = web.Application()
        app.router.add_route("*", "/v1/listen", self._listen)
        return await self._serve_app(app)

    async def _shutdown(self) -> None:
        self._stopping.set()
        for ws, conn in list(self._sockets.items()):
            await self._server_close(ws, conn, 1001, "going away")
        if self._runner is not None:
            await self._runner.cleanup()

    # ------------------------------------------------------------------------------------------ switches

    def refuse(self, status: int | None, *, times: int | None = None) -> None:
        """Refuse upgrades with ``status`` (401, 402, 429, 503; Deepgram's body) for ``times`` connections, or until
        ``refuse(None)``."""
        assert status is None or status in REFUSALS, f"no Deepgram body for {status}"
        with self._lock:
            self._refuse = _Fault(status, times)

    def hang_handshake(self, on: bool = True, *, times: int | None = None) -> None:
        """Read upgrade requests and never answer them (``times`` of them, or until ``hang_handshake(False)``)."""
        with self._lock:
            self._hang = _Fault(True if on else None, times)

    def close_mid_stream(
        self,
        code: int | None = 1011,
        *,
        after_frames: int | None = None,
        on_speech: bool = False,
        reason: str = "NET-0000",
        times: int | None = 1,
    ) -> None:
        """Close the next ``times`` accepted streams (None: every one until ``close_mid_stream(None)``) with
        ``code`` and ``reason``: after their ``after_frames``-th audio frame (0: right after the upgrade), or at their
        next speech onset (before anything is sent for it)."""
        assert code is None or after_frames is not None or on_speech, "when: after_frames or on_speech"
        with self._lock:
            self._close = _Fault(None if code is None else _Close(code, reason, after_frames, on_speech), times)

    def stall_at_speech(self, on: bool = True, *, times: int | None = None) -> None:
        """The next ``times`` accepted streams (None: every one until ``stall_at_speech(False)``) go quiet at their
        first speech onset: the audio is still read, and nothing is sent again (no result, no answer to a
        ``Finalize`` or ``CloseStream``), as a provider that stalls mid-stream."""
        with self._lock:
            self._stall = _Fault(True if on else None, times)

    def clear_faults(self) -> None:
        """Every switch off, no final delay."""
        with self._lock:
            self._refuse, self._hang, self._close, self._stall = _Fault(), _Fault(), _Fault(), _Fault()
        self.final_delay_s = 0.0

    # ------------------------------------------------------------------------------------------ records

    def connections(self) -> list[Connection]:
        """Every upgrade request so far, refused and hung ones too, in order (copies)."""
        with self._lock:
            return [
                dataclasses.replace(c, frames=list(c.frames), received=list(c.received), sent=list(c.sent))
                for c in self._connections
            ]

    def accepted(self) -> list[Connection]:
        """The connections whose upgrade was accepted."""
        return [c for c in self.connections() if c.status == 101]

    def _transcript(self, consume: bool) -> str:
        with self._lock:
            text = self.transcripts[self._next % len(self.transcripts)]
            if consume:
                self._next += 1
            return text

    # ------------------------------------------------------------------------------------------ the endpoint

    def _refusal(self, conn: Connection, status: int, message: str | None = None) -> web.Response:
        code, default = REFUSALS[status]
        body = {"err_code": code, "err_msg": message or default, "request_id": conn.request_id}
        with self._lock:
            conn.status = status
        headers = {"dg-request-id": conn.request_id, "dg-error": body["err_msg"]}
        return web.json_response(body, status=status, headers=headers)

    async def _listen(self, request: web.Request) -> web.StreamResponse:
        query = {k: ",".join(request.query.getall(k)) for k in request.query}
        headers = {k.lower(): v for k, v in request.headers.items()}
        conn = Connection(request.path, query, headers, str(uuid.uuid4()))
        with self._lock:
            self._connections.append(conn)
            hang = self._hang.take()
            refuse = None if hang else self._refuse.take()
        if hang:
            await self._stopping.wait()  # the TCP connection was accepted and the request read: never answered
            raise web.HTTPServiceUnavailable()
        if refuse:
            return self._refusal(conn, refuse)
        auth = request.headers.get("Authorization", "")
        token = auth[len("Token ") :].strip() if auth.startswith("Token ") else ""
        if not token or (self.api_key is not None and token != self.api_key):
            return self._refusal(conn, 401)
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return self._refusal(conn, 400, "This stand-in serves live streaming (a websocket upgrade) only.")
        if query.get("encoding") != "linear16" or not query.get("sample_rate", "").isdigit():
            return self._refusal(conn, 400, "This stand-in decodes raw audio only: encoding=linear16 and sample_rate.")
        with self._lock:
            close = self._close.take()
            stall = bool(self._stall.take())
        ws = web.WebSocketResponse(timeout=2.0)  # how long a close waits for the client's answer
        ws.headers["dg-request-id"] = conn.request_id
        await ws.prepare(request)
        with self._lock:
            conn.status = 101
        self._sockets[ws] = conn
        try:
            await self._stream(ws, conn, close, stall)
        finally:
            self._sockets.pop(ws, None)
        return ws

    async def _send(self, ws: web.WebSocketResponse, conn: Connection, messages: list[dict[str, Any]]) -> None:
        for m in messages:
            if m["type"] == "Results" and m["is_final"] and m["channel"]["alternatives"][0]["transcript"]:
                await asyncio.sleep(self.final_delay_s)
            with self._lock:  # before the send: once the client has it, the record shows it
                conn.sent.append(m)
            try:
                await ws.send_str(json.dumps(m))
            except ConnectionError:  # the client went away meanwhile; its close is read next
                return

    async def _server_close(self, ws: web.WebSocketResponse, conn: Connection, code: int, reason: str) -> None:
        with self._lock:
            conn.close_code, conn.closed_by = code, "server"
        await ws.close(code=code, message=reason.encode())

    async def _stream(self, ws: web.WebSocketResponse, conn: Connection, close: _Close | None, stall: bool) -> None:
        dg = _Transcriber(conn, self._transcript, self.speech_rms, self.min_silence_ms)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.idle_timeout_s
        if close and close.after_frames == 0:
            return await self._server_close(ws, conn, close.code, close.reason)
        while True:
            try:
                msg = await ws.receive(timeout=max(0.0, deadline - loop.time()))
            except TimeoutError:
                return await self._server_close(ws, conn, 1011, NET_0001)
            deadline = loop.time() + self.idle_timeout_s
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                with self._lock:
                    if conn.closed_by is None:
                        conn.close_code, conn.closed_by = ws.close_code, "client"
                return None
            if msg.type == WSMsgType.BINARY:
                with self._lock:
                    conn.frames.append(msg.data)
                onsets = dg.onsets
                out = dg.feed(msg.data)
                if close and close.on_speech and dg.onsets > onsets:
                    return await self._server_close(ws, conn, close.code, close.reason)
                if stall and dg.onsets > onsets:
                    with self._lock:
                        conn.stalled = True
                if not conn.stalled:
                    await self._send(ws, conn, out)
                if close and close.after_frames is not None and len(conn.frames) >= close.after_frames:
                    return await self._server_close(ws, conn, close.code, close.reason)
            elif msg.type == WSMsgType.TEXT:
                try:
                    control = json.loads(msg.data)
                except ValueError:
                    control = {"unparsed": msg.data}
                with self._lock:
                    conn.received.append(control)
                if conn.stalled:
                    continue
                kind = control.get("type") if isinstance(control, dict) else None
                if kind == "Finalize":
                    await self._send(ws, conn, dg.finalize())
                elif kind == "CloseStream":
                    await self._send(ws, conn, dg.close())
                    return await self._server_close(ws, conn, 1000, "")
