"""Free loopback ports for the local services."""

from __future__ import annotations

import random
import socket

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


def free_port_range(count: int, *, tcp_too: bool = False, lo: int = 20000, hi: int = 60000) -> int:
    """First port of ``count`` consecutive ports free for UDP (and TCP when asked)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(lo, hi - count)
        ok = all(_bindable(p, socket.SOCK_DGRAM) for p in range(base, base + count))
        if ok and tcp_too:
            ok = all(_bindable(p, socket.SOCK_STREAM) for p in range(base, base + count))
        if ok:
            return base
    raise RuntimeError(f"no {count} consecutive free ports found between {lo} and {hi}")
