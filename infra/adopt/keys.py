"""LiveKit names -> stack keys (lower-case letters, digits and '-'), unique within a section."""

from __future__ import annotations

import re

from contract.types import STACK_KEY_RE

MAX_KEY = 63


def slug(name: str) -> str:
    """``Sales Line (US)`` -> ``sales-line-us``; empty when nothing is left."""
    text = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return text[:MAX_KEY].rstrip("-")


class Keys:
    """Hands out stack keys for one section, suffixing ``-2``, ``-3``... when two names meet on one key."""

    def __init__(self, environment: str) -> None:
        self.prefix = f"{environment}-"
        self.used: set[str] = set()
        self._next: dict[str, int] = {}  # base -> the next suffix to try (many objects may share one name)

    def priority(self, name: str) -> tuple[int, str]:
        """Who gets a contested key first (so a re-import hands out the same keys): the object whose name is
        the key's default LiveKit name (``<env>-<key>``), then one named exactly the key, then by name."""
        rest = name.removeprefix(self.prefix)
        if rest != name and slug(rest) == rest:
            return 0, name
        return (1 if slug(name) == name else 2), name

    def claim(self, key: str) -> bool:
        """Take ``key`` itself if it is free and valid."""
        if key in self.used or not STACK_KEY_RE.match(key):
            return False
        self.used.add(key)
        return True

    def key(self, name: str, fallback: str) -> str:
        """A free key for the LiveKit ``name`` (the environment prefix dropped), else one from ``fallback``."""
        base = slug(name.removeprefix(self.prefix)) or slug(fallback) or "object"
        key, n = base, self._next.get(base, 1)
        if n > 1:
            key = self._suffixed(base, n)
        while key in self.used or not STACK_KEY_RE.match(key):
            n += 1
            key = self._suffixed(base, n)
        self._next[base] = n + 1
        self.used.add(key)
        return key

    @staticmethod
    def _suffixed(base: str, n: int) -> str:
        suffix = f"-{n}"
        return base[: MAX_KEY - len(suffix)].rstrip("-") + suffix
