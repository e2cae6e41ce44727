"""LiveKit credentials and one guarded way to call the LiveKit API from synchronous code (providers, CLI).

Light to import (a Pulumi program reads credentials through it): aiohttp, the LiveKit API client and
the shared event loop (``infra.livekit.loop``) load on the first call.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from contract.wire import LIVEKIT_API_KEY_ENV, LIVEKIT_API_SECRET_ENV, LIVEKIT_URL_ENV

if TYPE_CHECKING:
    from livekit import api

T = TypeVar("T")
DEFAULT_TIMEOUT = 15.0
SETTINGS = {
    "livekit:url": LIVEKIT_URL_ENV,
    "livekit:apiKey": LIVEKIT_API_KEY_ENV,
    "livekit:apiSecret": LIVEKIT_API_SECRET_ENV,
}
"""Each LiveKit setting's stack config key, and the environment variable read when the config has none."""
CONFIG_KEYS = tuple(SETTINGS)


def lookup(config: Mapping[str, Any]) -> dict[str, Any]:
    """Each of ``SETTINGS`` from ``config`` (its stack config), else from the environment; None when neither has it.

    The one credentials lookup: providers and the CLI pass plain strings, a Pulumi program its
    ``pulumi.Config`` values (secrets as outputs).
    """
    return {key: config.get(key) or os.environ.get(env) or None for key, env in SETTINGS.items()}


class LiveKitError(Exception):
    """LiveKit refused a request; the message is LiveKit's own, prefixed with what was being done."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class LiveKitUnreachable(LiveKitError):
    """LiveKit could not be reached or did not answer in time."""


@dataclass(frozen=True)
class Credentials:
    """Where LiveKit is and how to sign requests (never pickled into state: resolved per call)."""

    url: str
    api_key: str
    api_secret: str = field(repr=False)

    @classmethod
    def resolve(cls, config: Mapping[str, str | None]) -> Credentials:
        """Stack config (`livekit:url`, `livekit:apiKey`, secret `livekit:apiSecret`) first, then the environment."""
        found = lookup(config)
        missing = [key for key, value in found.items() if not value]
        if missing:
            raise LiveKitError(
                "LiveKit credentials are missing: set "
                + ", ".join(f"`pulumi config set {'--secret ' if 'Secret' in m else ''}{m} ...`" for m in missing)
                + f" (or {', '.join(SETTINGS.values())} in the environment)"
            )
        return cls(found["livekit:url"], found["livekit:apiKey"], found["livekit:apiSecret"])


def call(
    creds: Credentials, what: str, fn: Callable[[api.LiveKitAPI], Awaitable[T]], timeout: float = DEFAULT_TIMEOUT
) -> T:
    """Run ``fn`` with this process's client for ``creds`` on its shared event loop, with a timeout.

    Failures become ``LiveKitError`` (LiveKit's own message) or ``LiveKitUnreachable``; ``what`` names
    the operation and resource for those messages, e.g. "create inbound trunk 'main'".
    """
    import aiohttp
    from livekit import api

    from infra.livekit import loop

    runner = loop.shared()
    try:
        return runner.run(loop.with_client(runner, creds.url, creds.api_key, creds.api_secret, timeout, fn))
    except api.TwirpError as e:
        raise LiveKitError(f"{what}: LiveKit answered {e.code}: {e.message}", e.code) from None
    except (aiohttp.ClientConnectionError, OSError) as e:
        raise LiveKitUnreachable(
            f"{what}: cannot reach LiveKit at {creds.url} ({type(e).__name__}). Is the server running, and is "
            "`livekit:url` (or LIVEKIT_URL) right?"
        ) from None
    except TimeoutError:
        raise LiveKitUnreachable(
            f"{what}: LiveKit at {creds.url} did not answer within {timeout:.0f}s; retry, the operation is idempotent"
        ) from None


def state(key: str, factory: Callable[[], T]) -> T:
    """Per-process state kept next to the shared loop (e.g. caches holding asyncio primitives)."""
    from infra.livekit import loop

    return loop.shared().state(key, factory)
