"""Free loopback ports for the local services."""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOOPBACK = "127.0.0.1"


def _bindable(port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_tcp_port() -> int:
    """A TCP port the kernel says is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _ephemeral_low(default: int = 32768) -> int:
    """The lowest port the kernel hands out by itself (to sockets that bind no port: sipp's callers, clients)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def free_port_range(count: int, *, tcp_too: bool = False, lo: int = 20000, hi: int | None = None) -> int:
    """First port of ``count`` consecutive ports free for UDP (and TCP when asked), below the kernel's ephemeral
    range: a port picked now and listened on later (a carrier UAS, a service) must not be handed meanwhile to a
    socket the kernel numbers itself (a sipp caller), or the bridge would talk to the wrong process."""
    hi = hi if hi is not None else max(lo + count + 1000, min(60000, _ephemeral_low()))
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(lo, hi - count)
        ok = all(_bindable(p, socket.SOCK_DGRAM) for p in range(base, base + count))
        if ok and tcp_too:
            ok = all(_bindable(p, socket.SOCK_STREAM) for p in range(base, base + count))
        if ok:
            return base
    raise RuntimeError(f"no {count} consecutive free ports found between {lo} and {hi}")
