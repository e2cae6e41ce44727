"""Name -> id index of one kind of LiveKit object, listed once per provider process.

Creating adopts an existing object of the same name (so a retried or interrupted ``up`` leaves no
duplicate). Listing every object before every create made each create cost two calls and grow with
the number of objects; instead the first create of a kind lists that kind once, every create in
the process shares the listing, and the index follows what the process itself creates and deletes.

The listing is taken again when it may be stale: when a create is refused (another writer may
have created the object since) and when an adopted id turns out to be gone. A same-named object
created by someone else after the listing, without colliding with ours, is not seen: the same
window as listing right before creating, only wider.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

Lister = Callable[[], Awaitable[list[Any]]]


class NameIndex:
    """Ids by name of one kind on one LiveKit project (shared by every create in the process)."""

    def __init__(self, object_id: Callable[[Any], str]) -> None:
        self._object_id = object_id
        self._ids: dict[str, list[str]] | None = None
        self._listed: dict[str, Any] = {}  # id -> the object as the last listing returned it
        self._generation = 0
        self._loading = asyncio.Lock()

    async def lookup(self, name: str, lister: Lister) -> tuple[list[str], int]:
        """Ids named ``name`` and the generation of the listing they come from (listing if needed)."""
        if self._ids is None:
            await self.refresh(self._generation, lister)
        assert self._ids is not None
        return list(self._ids.get(name, [])), self._generation

    async def refresh(self, seen: int, lister: Lister) -> None:
        """List again, unless someone already did since generation ``seen``."""
        async with self._loading:
            if self._ids is not None and self._generation != seen:
                return
            ids: dict[str, list[str]] = {}
            listed: dict[str, Any] = {}
            for message in await lister():
                ids.setdefault(message.name, []).append(self._object_id(message))
                listed[self._object_id(message)] = message
            self._ids, self._listed = ids, listed
            self._generation += 1

    def listed(self, object_id: str) -> Any | None:
        """The object as the last listing returned it (None when this process wrote it since, or never saw it)."""
        return self._listed.get(object_id)

    def removed_listing(self, object_id: str) -> None:
        """Forget the listed copy of an object this process has just rewritten."""
        self._listed.pop(object_id, None)

    def added(self, name: str, object_id: str) -> None:
        """Record an object this process created."""
        if self._ids is not None and object_id not in self._ids.setdefault(name, []):
            self._ids[name].append(object_id)

    def removed(self, object_id: str) -> None:
        """Forget an object that was deleted, found gone or rewritten."""
        self._listed.pop(object_id, None)
        if self._ids is None:
            return
        for name in [n for n, ids in self._ids.items() if object_id in ids]:  # O(n); deletes are rare here
            self._ids[name].remove(object_id)
            if not self._ids[name]:
                del self._ids[name]
