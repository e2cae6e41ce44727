"""One background event loop and one LiveKit client per set of credentials, for the whole process.

Pulumi calls dynamic providers synchronously, from a pool of gRPC threads. Building an event loop,
an HTTP session and a client for every call costs more than the call itself and reconnects every
time, so every synchronous caller in a process hands its coroutine to this one loop (running in a
daemon thread) and waits for the result. HTTP connections are kept alive and reused across calls.

The loop and its clients are created on first use, recreated after a ``fork``, and closed at exit.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import aiohttp
from livekit import api

T = TypeVar("T")


class _Loop:
    """An event loop running forever in a daemon thread, plus the clients bound to it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._clients: dict[tuple[str, str, str], api.LiveKitAPI] = {}
        self._sessions: list[aiohttp.ClientSession] = []
        self._state: dict[str, Any] = {}
        self._thread = threading.Thread(target=self.loop.run_forever, name="livekit-loop", daemon=True)
        self._thread.start()

    def client(self, url: str, key: str, secret: str, timeout: float) -> api.LiveKitAPI:
        """The client for these credentials (created on first use; must run on the loop)."""
        found = self._clients.get((url, key, secret))
        if found is None:
            session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))
            found = api.LiveKitAPI(url, key, secret, session=session)
            self._sessions.append(session)
            self._clients[(url, key, secret)] = found
        return found

    def state(self, key: str, factory: Callable[[], T]) -> T:
        """Process-wide state bound to this loop, created by ``factory`` on first use."""
        with _lock:
            if key not in self._state:
                self._state[key] = factory()
            value: T = self._state[key]
            return value

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for its result (or exception) in the calling thread."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("a LiveKit call was made synchronously from the LiveKit loop itself")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        """Close every HTTP session, then stop the loop."""

        async def close_all() -> None:
            for session in self._sessions:
                await session.close()

        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(close_all(), self.loop).result(timeout=5)
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self._thread.join(timeout=5)


_lock = threading.Lock()
_current: tuple[int, _Loop] | None = None


def shared() -> _Loop:
    """This process's loop (started on first use, and again in a forked child)."""
    global _current
    with _lock:
        if _current is None or _current[0] != os.getpid():
            _current = (os.getpid(), _Loop())
        return _current[1]


@atexit.register
def _close() -> None:
    if _current is not None and _current[0] == os.getpid():
        _current[1].close()


async def with_client(
    loop: _Loop, url: str, key: str, secret: str, timeout: float, fn: Callable[[api.LiveKitAPI], Awaitable[T]]
) -> T:
    """Run ``fn`` with the shared client for these credentials, within ``timeout`` seconds."""
    return await asyncio.wait_for(fn(loop.client(url, key, secret, timeout)), timeout)
