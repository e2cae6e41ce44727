"""A reverse proxy in front of livekit-server that counts, throttles and stalls its server API calls (dev code).

Give a worker or a client the proxy's URL as its ``LIVEKIT_URL`` and everything it sends to LiveKit goes through it:

- Twirp API calls (``POST /twirp/livekit.<Service>/<Method>``) are counted per method, with the time of each, then
  forwarded; ``throttle(n)`` answers those beyond ``n`` in the last 60 s with LiveKit Cloud's refusal (HTTP 429,
  Twirp error ``resource_exhausted``), ``stall(s)`` holds each one ``s`` seconds before forwarding it;
- websocket upgrades on any path (``/agent`` for workers, ``/rtc`` for room participants) are bridged frame by frame
  both ways (text, binary, ping, pong, and the close code and reason); they are never throttled nor stalled;
- any other HTTP request (``GET /``, ``/rtc/validate``, ...) is forwarded as is.

Every client of one LiveKit project signs with the same API key, so the requests of one worker cannot be told from
another's at a shared proxy: give each worker its own proxy (one thread and event loop each; cheap) to count per
worker. The controls are thread-safe: a synchronous test drives them while the proxy runs in its daemon thread.

    with ApiProxy.start(endpoints.livekit_url) as proxy:
        env = {**endpoints.env(), "LIVEKIT_URL": proxy.url}
        ...
        proxy.counts()  # {"livekit.RoomService/ListRooms": 12, ...}
"""

from __future__ import annotations

import asyncio
import collections
import socket
import threading
import time
from collections.abc import Coroutine, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from localenv.ports import LOOPBACK

TWIRP_PREFIX = "/twirp/"
WINDOW = 60.0  # seconds: throttle(n) admits n Twirp calls per sliding minute
RATE_LIMITED = {"code": "resource_exhausted", "msg": "rate limit exceeded"}  # LiveKit Cloud's 429 body
# Hop-by-hop headers (RFC 9110 7.6.1) and those the proxy's own HTTP stack writes: never copied across.
HOP_BY_HOP = frozenset(
    h.lower()
    for h in ("Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
              "Transfer-Encoding", "Upgrade", "Host", "Content-Length")
)  # fmt: skip
WS_HANDSHAKE = frozenset(
    h.lower() for h in ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions",
                        "Sec-WebSocket-Protocol", "Sec-WebSocket-Accept")
)  # fmt: skip
SENDABLE_CLOSE = set(range(1000, 1004)) | set(range(1007, 1015)) | set(range(3000, 5000))


@dataclass(frozen=True)
class ApiCall:
    """One Twirp request seen by the proxy: when it arrived (``time.monotonic()``), which method, and the HTTP status
    it got (429 when the proxy refused it, 502 when livekit-server could not be reached). Listed once answered."""

    at: float
    method: str  # "livekit.RoomService/ListRooms"
    status: int


def _forwarded(headers: Mapping[str, str], drop: Iterable[str] = ()) -> CIMultiDict[str]:
    skip = HOP_BY_HOP | {d.lower() for d in drop}
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in headers.items():
        if k.lower() not in skip:
            out.add(k, v)
    return out


class ApiProxy:
    """A running proxy (``ApiProxy.start(upstream)``) on a free loopback port; ``stop()`` or leaving the ``with``
    block ends it. See the module docstring."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
        self.upstream = f"{scheme}://{parts.netloc}"
        self._lock = threading.Lock()
        self._calls: list[ApiCall] = []
        self._admitted: collections.deque[float] = collections.deque()  # forwarded Twirp calls in the last WINDOW
        self._limit: int | None = None
        self._refused: set[str] = set()
        self._stall = 0.0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="api-proxy", daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self._upgrades: collections.Counter[str] = collections.Counter()
        self.port = 0

    @classmethod
    def start(cls, upstream: str) -> ApiProxy:
        """Listen on a free loopback port and forward to ``upstream`` (``ws://host:port`` or ``http://host:port``,
        livekit-server's URL); returns once the proxy accepts connections."""
        proxy = cls(upstream)
        proxy._thread.start()
        try:
            proxy._run(proxy._serve()).result(timeout=30)
        except BaseException:
            proxy.stop()
            raise
        return proxy

    @property
    def url(self) -> str:
        """The proxy's URL for ``LIVEKIT_URL`` (websocket scheme, as LiveKit's own URLs are)."""
        return f"ws://{LOOPBACK}:{self.port}"

    @property
    def http_url(self) -> str:
        """The proxy's URL with the HTTP scheme."""
        return f"http://{LOOPBACK}:{self.port}"

    # ------------------------------------------------------------------------------------------- controls

    def calls(self, since: float | None = None) -> list[ApiCall]:
        """Every Twirp request so far (those at or after ``since``, a ``time.monotonic()`` value, when given)."""
        with self._lock:
            return [c for c in self._calls if since is None or c.at >= since]

    def counts(self, since: float | None = None) -> dict[str, int]:
        """Twirp requests per method (refused ones included: they were sent)."""
        return dict(collections.Counter(c.method for c in self.calls(since)))

    def total(self, since: float | None = None) -> int:
        """Twirp requests of every method."""
        return len(self.calls(since))

    def websockets(self) -> dict[str, int]:
        """Websocket connections bridged so far, per path (``/agent``, ``/rtc``...; never throttled nor counted as
        API requests)."""
        with self._lock:
            return dict(self._upgrades)

    def throttle(self, rate_per_minute: int | None) -> None:
        """Refuse (429) every Twirp call beyond ``rate_per_minute`` forwarded in the last 60 s; ``None``: no limit."""
        with self._lock:
            self._limit = rate_per_minute

    def refuse(self, *methods: str) -> None:
        """Refuse (429) every Twirp call to these methods (``"AgentDispatchService/CreateDispatch"``; the
        ``livekit.`` package may be left out), whatever the throttle; none: refuse nothing."""
        with self._lock:
            self._refused = {m if m.startswith("livekit.") else f"livekit.{m}" for m in methods}

    def stall(self, seconds: float) -> None:
        """Hold every Twirp call ``seconds`` before forwarding it (0: none)."""
        with self._lock:
            self._stall = max(0.0, seconds)

    def clear(self) -> None:
        """Forget the recorded calls and websockets, and remove any throttle and stall."""
        with self._lock:
            self._calls.clear()
            self._upgrades.clear()
            self._admitted.clear()
            self._limit = None
            self._refused = set()
            self._stall = 0.0

    def stop(self) -> None:
        """Close every connection and the listening socket, and end the proxy's thread."""
        if self._thread.is_alive():
            try:
                self._run(self._shutdown()).result(timeout=30)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> ApiProxy:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------- the server

    def _run(self, coro: Coroutine[object, object, None]) -> Future[None]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    async def _serve(self) -> None:
        # No limit on connections, no timeout, no decompression: what the client sends is what the server gets.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None)
        )
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, 0))  # the kernel picks a free port: no window for another process to take it
        self.port = int(sock.getsockname()[1])
        await web.SockSite(self._runner, sock).start()

    async def _shutdown(self) -> None:
        for ws in list(self._sockets):
            await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"proxy stopped")
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request)
        if request.method == "POST" and request.path.startswith(TWIRP_PREFIX):
            return await self._twirp(request)
        return await self._forward(request)

    def _admit(self, method: str, now: float) -> float | None:
        """Record a Twirp call refused by the throttle (None), or admit it: the seconds to hold it first."""
        with self._lock:
            while self._admitted and now - self._admitted[0] >= WINDOW:
                self._admitted.popleft()
            if method in self._refused or (self._limit is not None and len(self._admitted) >= self._limit):
                self._calls.append(ApiCall(now, method, 429))
                return None
            self._admitted.append(now)
            return self._stall

    async def _twirp(self, request: web.Request) -> web.StreamResponse:
        method, arrived = request.path[len(TWIRP_PREFIX) :], time.monotonic()
        stall = self._admit(method, arrived)
        if stall is None:
            return web.json_response(RATE_LIMITED, status=429)
        if stall:
            await asyncio.sleep(stall)
        response = await self._forward(request)
        with self._lock:  # listed once answered, at the time it arrived
            self._calls.append(ApiCall(arrived, method, response.status))
        return response

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        try:
            async with self._session.request(
                request.method, self.upstream + request.path_qs, headers=_forwarded(request.headers), data=body,
                allow_redirects=False,
            ) as resp:  # fmt: skip
                payload = await resp.read()
                return web.Response(status=resp.status, headers=_forwarded(resp.headers), body=payload)
        except aiohttp.ClientError as err:
            return web.Response(status=502, text=f"api proxy: livekit-server unreachable: {err}")

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        try:
            upstream = await self._session.ws_connect(
                self.upstream + request.path_qs, headers=_forwarded(request.headers, WS_HANDSHAKE),
                protocols=protocols, autoping=False, autoclose=False, max_msg_size=0,
            )  # fmt: skip
        except aiohttp.WSServerHandshakeError as err:  # the server refused the upgrade (401, 404...): say the same
            return web.Response(status=err.status, text=err.message)
        except aiohttp.ClientError as err:
            return web.Response(status=502, text=f"api proxy: livekit-server unreachable: {err}")
        client = web.WebSocketResponse(
            protocols=[upstream.protocol] if upstream.protocol else (), autoping=False, autoclose=False,
            max_msg_size=0, compress=False,
        )  # fmt: skip
        try:
            await client.prepare(request)
        except ConnectionResetError:  # the client gave up before livekit-server accepted: so does the proxy
            await upstream.close()
            return web.Response(status=499)  # written nowhere: the connection is gone
        self._sockets.add(client)
        with self._lock:
            self._upgrades[request.path] += 1
        pumps = [
            asyncio.ensure_future(_pump(client, upstream, request)),
            asyncio.ensure_future(_pump(upstream, client, request)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            await asyncio.wait(pumps, timeout=5)  # the other direction ends once the first closed its side
        finally:
            for task in pumps:
                task.cancel()
            # A pump's error is a send to a side that went away meanwhile: both sides are closed below either way.
            await asyncio.gather(*pumps, return_exceptions=True)
            self._sockets.discard(client)
            await upstream.close()
            await client.close()
        return client


WebSocket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


async def _pump(src: WebSocket, dst: WebSocket, request: web.Request) -> None:
    """Copy frames from ``src`` to ``dst`` until ``src`` closes; then close ``dst`` the same way."""
    while True:
        msg = await src.receive()
        if msg.type == aiohttp.WSMsgType.TEXT:
            await dst.send_str(msg.data)
        elif msg.type == aiohttp.WSMsgType.BINARY:
            await dst.send_bytes(msg.data)
        elif msg.type == aiohttp.WSMsgType.PING:
            await dst.ping(msg.data)
        elif msg.type == aiohttp.WSMsgType.PONG:
            await dst.pong(msg.data)
        elif msg.type == aiohttp.WSMsgType.CLOSE:  # a close frame: pass its code and reason on, then answer it
            code = msg.data if msg.data in SENDABLE_CLOSE else aiohttp.WSCloseCode.OK
            await dst.close(code=code, message=(msg.extra or "").encode())
            await src.close(code=code)
            return
        elif msg.type == aiohttp.WSMsgType.CLOSING:  # the other pump is closing this side: it passes the close on
            return
        else:  # CLOSED, ERROR: the connection went away without a close frame; so does the other one
            if isinstance(dst, web.WebSocketResponse):
                if request.transport is not None:
                    request.transport.abort()
            else:
                dst._response.close()  # drops the connection (aiohttp has no public abort for a client websocket)
            return
