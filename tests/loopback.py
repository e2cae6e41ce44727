"""The stand-ins' shared lifecycle: an aiohttp server on 127.0.0.1, run by an event loop of its own in a thread."""

from __future__ import annotations

import asyncio
import threading
from typing import Self

from aiohttp import web


class LoopbackServer:
    """Serves ``_serve()`` on a free loopback port from its own thread; ``base_url`` is ``http://127.0.0.1:PORT``
    plus ``PATH``. Subclasses build their app in ``_serve`` (setting ``_runner``) and may close more in
    ``_shutdown``."""

    PATH = ""

    def __init__(self, name: str) -> None:
        self.base_url = ""
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)

    def start(self) -> Self:
        """Serve on a free port of 127.0.0.1; sets ``base_url``."""
        self._thread.start()
        port = asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        self.base_url = f"http://127.0.0.1:{port}{self.PATH}"
        return self

    def stop(self) -> None:
        """Shut the server down (``_shutdown``), then its loop and thread."""
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(20)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _serve(self) -> int:
        raise NotImplementedError

    async def _serve_app(self, app: web.Application) -> int:
        """Serve ``app`` on a free port of 127.0.0.1 (sets ``_runner``); its port. A handler a fault holds open (a hung
        handshake, a token delayed by a minute) is cancelled a second into ``stop``, never waited for."""
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        return int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    async def _shutdown(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()
