"""Which writes could conflict in LiveKit, and holding them apart while they are in flight.

LiveKit rejects an inbound trunk or a dispatch rule that collides with a stored one, but checks
against what is stored without a lock: two colliding objects written at the same moment can both
pass. Writes are therefore serialised only where they share a key LiveKit compares (the same
logic as ``ValidateTrunksIter`` / ``DispatchRuleValidator`` in livekit/protocol ``sip/sip.go``):

- inbound trunks: one key per (called number, or "") x (allowed caller number, or "") (``trunk_cells``);
- dispatch rules: one key per (pin, trunk id or "", caller number or "", called number or "") (``rule_cells``);
- every kind: its name (names are unique per kind; the second write of a name adopts the first).

Outbound trunks have no conflict rules, so only their names are keys. Everything else runs in
parallel. ``Claims`` is hand-written (a condition over a set of held keys): asyncio has no
multi-key lock, and taking per-key locks one by one would need a global order to avoid deadlock.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Hashable, Iterable, Iterator
from contextlib import asynccontextmanager
from itertools import product
from typing import Any

from livekit.protocol import sip as api  # messages only, without the HTTP client

_NUMBERISH = re.compile(r"^\+?[\d\- ()]+$")


def normalize_number(number: str) -> str:
    """LiveKit's NormalizeNumber: "+1 (555) 010-0100" and "15550100100" are the same number."""
    if not _NUMBERISH.match(number):
        return number
    digits = re.sub(r"[\- ()]", "", number)
    return digits if digits.startswith("+") else "+" + digits


def trunk_cells(numbers: Iterable[str], allowed_numbers: Iterable[str]) -> Iterator[tuple[str, str]]:
    """LiveKit's rule for inbound trunks: two conflict when they share a cell (called number, or "" for any) x
    (allowed caller number, or "" for any)."""
    return product(list(numbers) or [""], list(allowed_numbers) or [""])


def rule_cells(
    pin: str, trunks: Iterable[str], caller_numbers: Iterable[str], numbers: Iterable[str]
) -> Iterator[tuple[str, str, str, str]]:
    """LiveKit's rule for dispatch rules: two conflict when they share a cell pin x (trunk, or "" for every trunk) x
    (caller number, or "" for any) x (called number, or "" for any)."""
    return product([pin], list(trunks) or [""], list(caller_numbers) or [""], list(numbers) or [""])


def _numbers(values: Any) -> list[str]:
    return sorted({normalize_number(v) for v in values})


def conflict_keys(label: str, message: Any) -> frozenset[Hashable]:
    """The keys a write of ``message`` (a LiveKit object of kind ``label``) must hold exclusively."""
    keys: set[Hashable] = {(label, "name", message.name)}
    if isinstance(message, api.SIPInboundTrunkInfo):
        for cell in trunk_cells(_numbers(message.numbers), _numbers(message.allowed_numbers)):
            keys.add((label, "cell", *cell))
    elif isinstance(message, api.SIPDispatchRuleInfo):
        which = message.rule.WhichOneof("rule")
        pin = getattr(getattr(message.rule, which), "pin", "") if which else ""
        trunks = sorted(set(message.trunk_ids))
        for combo in rule_cells(pin, trunks, _numbers(message.inbound_numbers), _numbers(message.numbers)):
            keys.add((label, "rule", *combo))
    return frozenset(keys)


class Claims:
    """Keys held by writes in flight; a write waits only while another holds one of its keys."""

    def __init__(self) -> None:
        self._held: set[Hashable] = set()
        self._changed = asyncio.Condition()

    @asynccontextmanager
    async def hold(self, keys: frozenset[Hashable]) -> AsyncIterator[None]:
        """Hold every key in ``keys`` (all at once, so no deadlock) for the duration of the block."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._held.isdisjoint(keys))
            self._held |= keys
        try:
            yield
        finally:
            async with self._changed:
                self._held -= keys
                self._changed.notify_all()
