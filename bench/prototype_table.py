"""PROTOTYPE, not shipped: a whole routing table (inbound trunks, outbound trunks, dispatch rules) as ONE resource.

Measures what grouping many LiveKit objects into one Pulumi resource buys (``bench/sip_deploy.py``
prints its figures next to the per-object resources') and shows what it costs; README's
"Grouping" notes and the report of issue 12 say why it is not in the product (the upgrade of a
stack deployed by 0.1.0 would show every route as deleted, and a protected stack could not take it).

Inputs, one map per kind, keyed by the declaration's own key::

    {"inbound_trunks": {key: InboundTrunkArgs}, "outbound_trunks": {key: OutboundTrunkArgs},
     "rules": {key: DispatchRuleArgs + "trunk_refs": [inbound trunk keys]}}

``check`` validates every entry with the product's argument models and stores it in one canonical
form: the fields that differ from their defaults. The engine's own input diff then shows exactly the
route and field that changed (dynamic providers send no detailed diff), and a no-op diff compares
small maps. ``auth_password`` stays a nested secret: only that leaf is hidden. Outputs add
``ids`` = {kind: {key: LiveKit id}}.

``update`` touches only the entries that changed (a prompt change = one LiveKit update), creates
added ones (adopting by name), deletes removed ones. ``read`` lists each kind once by id, so
``pulumi refresh`` reports a field edited or an object deleted outside Pulumi on its entry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from functools import cache
from typing import TYPE_CHECKING, Any

import pulumi
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    Resource,
    ResourceProvider,
    UpdateResult,
)

if TYPE_CHECKING:
    from infra.livekit import client
    from infra.livekit.kind import Kind

# The program imports this module only to declare the resource (and pickle the provider class by
# reference): everything else (pydantic models, LiveKit messages, the HTTP client) is imported when
# the provider first needs it, so the program registers its one resource sooner.


@cache
def sections() -> dict[str, Kind]:
    from infra.livekit.all_kinds import DISPATCH_RULE, INBOUND_TRUNK, OUTBOUND_TRUNK

    return {"inbound_trunks": INBOUND_TRUNK, "outbound_trunks": OUTBOUND_TRUNK, "rules": DISPATCH_RULE}


SECTION_NAMES = ("inbound_trunks", "outbound_trunks", "rules")
TRUNKS = ("inbound_trunks", "outbound_trunks")
REFS = "trunk_refs"  # a rule's inbound trunks by key in this table (resolved to ids when written)
IDS = "ids"
PARALLEL = 16  # LiveKit requests in flight at once


def _compact(kind: Kind, body: Mapping[str, Any]) -> dict[str, Any]:
    """The canonical stored form of one entry: validated, then only the fields that differ from defaults."""
    dumped: dict[str, Any] = kind.args.model_validate(body).model_dump(exclude_defaults=True)
    return dumped


def _split_rule(entry: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    body = dict(entry)
    refs = list(body.pop(REFS, None) or [])
    return body, refs


class RoutingTableProvider(ResourceProvider):
    """PROTOTYPE: create/update/read/delete a whole routing table, touching only entries that changed."""

    serialize_as_secret_always = False

    def configure(self, req: Any) -> None:
        from infra.livekit.client import CONFIG_KEYS

        self._config = {k: req.config.get(k) for k in CONFIG_KEYS}

    def _creds(self, props: Mapping[str, Any]) -> client.Credentials:
        from infra.livekit import client  # only calls need the HTTP client (see infra.livekit.base)
        from infra.livekit.base import URL_INPUT

        config = dict(getattr(self, "_config", {}))
        if props.get(URL_INPUT):
            config["livekit:url"] = props[URL_INPUT]
        return client.Credentials.resolve(config)

    # -- check / diff -------------------------------------------------------------------------------

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        from pydantic import ValidationError

        from infra.dynamic import is_unknown
        from infra.livekit.fields import describe_errors

        failures: list[CheckFailure] = []
        out: dict[str, Any] = {k: v for k, v in news.items() if k not in SECTION_NAMES}
        trunk_keys = set((news.get("inbound_trunks") or {}) if not is_unknown(news.get("inbound_trunks")) else [])
        for section, kind in sections().items():
            entries = news.get(section) or {}
            if is_unknown(entries):
                out[section] = entries
                continue
            checked: dict[str, Any] = {}
            for key, entry in entries.items():
                if is_unknown(entry) or any(is_unknown(v) for v in entry.values()):
                    checked[key] = entry  # validated once known, at apply time
                    continue
                body, refs = _split_rule(entry) if section == "rules" else (dict(entry), [])
                for ref in refs:
                    if ref not in trunk_keys:
                        failures.append(CheckFailure(section, f"{section}.{key}.{REFS}: no inbound trunk {ref!r}"))
                try:
                    checked[key] = {**_compact(kind, body), **({REFS: refs} if refs else {})}
                except ValidationError as e:
                    failures += [CheckFailure(section, f"{section}.{key}.{f}: {r}") for f, r in describe_errors(e)]
            out[section] = checked
        return CheckResult(news if failures else out, failures)

    def diff(self, id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        from infra.dynamic import is_unknown
        from infra.livekit.base import URL_INPUT

        changed = [s for s in (*SECTION_NAMES, URL_INPUT) if is_unknown(news.get(s)) or olds.get(s) != news.get(s)]
        return DiffResult(changes=bool(changed), replaces=[], delete_before_replace=False)

    # -- writes ---------------------------------------------------------------------------------------

    def _run(self, props: Mapping[str, Any], what: str, fn: Callable[[Any], Awaitable[Any]]) -> Any:
        from infra.livekit import client

        return client.call(self._creds(props), what, fn, timeout=600)

    @staticmethod
    def _message(section: str, entry: Mapping[str, Any], ids: Mapping[str, Mapping[str, str]]) -> Any:
        from infra.livekit.all_kinds import to_proto

        kind = sections()[section]
        body = dict(entry)
        if section == "rules":
            body, refs = _split_rule(entry)
            body["trunk_ids"] = [*body.get("trunk_ids", []), *(ids["inbound_trunks"][r] for r in refs)]
        return to_proto(kind.args.model_validate(body), kind.message)

    async def _apply(
        self, lk: Any, olds: Mapping[str, Any], news: Mapping[str, Any], creds: client.Credentials
    ) -> dict[str, dict[str, str]]:
        """Bring LiveKit from ``olds`` (stored) to ``news``: trunks first, then rules, then removed trunks."""
        from infra.livekit import client
        from infra.livekit.conflicts import Claims, conflict_keys

        old_ids: Mapping[str, Mapping[str, str]] = olds.get(IDS) or {}
        ids: dict[str, dict[str, str]] = {s: dict(old_ids.get(s) or {}) for s in SECTION_NAMES}
        claims = client.state("claims", dict[tuple[str, str], Claims]).setdefault((creds.url, creds.api_key), Claims())
        gate = asyncio.Semaphore(PARALLEL)
        listed: dict[str, dict[str, list[str]]] = {}

        async def by_name(section: str) -> dict[str, list[str]]:
            if section not in listed:
                found: dict[str, list[str]] = {}
                for m in await sections()[section].list(lk, []):
                    found.setdefault(m.name, []).append(sections()[section].object_id(m))
                listed[section] = found
            return listed[section]

        async def write(section: str, key: str) -> None:
            kind, entry = sections()[section], news[section][key]
            message = self._message(section, entry, ids)
            async with gate, claims.hold(conflict_keys(kind.label, message)):
                object_id = ids[section].get(key)
                if object_id is None:  # added: adopt the object of that name, else create it
                    named = (await by_name(section)).get(entry["name"], [])
                    if len(named) > 1:
                        raise client.LiveKitError(f"several LiveKit {kind.label}s are named {entry['name']!r}")
                    if not named:
                        ids[section][key] = kind.object_id(await kind.create(lk, message))
                        return
                    object_id = ids[section][key] = named[0]
                await kind.replace(lk, object_id, message)

        async def remove(section: str, key: str) -> None:
            async with gate:
                await sections()[section].delete(lk, ids[section].pop(key))

        def changed(section: str) -> list[str]:
            old, new = olds.get(section) or {}, news.get(section) or {}
            keys = [k for k, v in new.items() if k not in ids[section] or old.get(k) != v]
            if section == "rules":  # a rule whose trunk got a new id is rewritten too
                moved = {k for k in (news.get("inbound_trunks") or {}) if ids["inbound_trunks"].get(k) !=
                         (old_ids.get("inbound_trunks") or {}).get(k)}  # fmt: skip
                keys += [k for k, v in new.items() if k not in keys and moved & set(v.get(REFS, []))]
            return keys

        async def write_all(section: str) -> None:
            keys = changed(section)
            if any(k not in ids[section] for k in keys):
                await by_name(section)  # one listing per kind, before the writes that adopt from it
            await asyncio.gather(*(write(section, k) for k in keys))

        for section in TRUNKS:
            await write_all(section)
        gone_rules = [k for k in ids["rules"] if k not in (news.get("rules") or {})]
        await asyncio.gather(*(remove("rules", k) for k in gone_rules))
        await write_all("rules")
        for section in TRUNKS:
            await asyncio.gather(
                *(remove(section, k) for k in list(ids[section]) if k not in (news.get(section) or {}))
            )
        return ids

    def _outs(self, news: Mapping[str, Any], ids: dict[str, dict[str, str]]) -> dict[str, Any]:
        from infra.livekit.base import URL_INPUT

        return {**{k: v for k, v in news.items() if not k.startswith("__") or k == URL_INPUT}, IDS: ids}

    def create(self, props: dict[str, Any]) -> CreateResult:
        creds = self._creds(props)
        ids = self._run(props, "create routing table", lambda lk: self._apply(lk, {}, props, creds))
        return CreateResult("routing-table", self._outs(props, ids))

    def update(self, id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        creds = self._creds(news)
        ids = self._run(news, "update routing table", lambda lk: self._apply(lk, olds, news, creds))
        return UpdateResult(self._outs(news, ids))

    def read(self, id: str, props: dict[str, Any]) -> ReadResult:
        """Every entry as LiveKit holds it (one listing per kind); entries whose object is gone are dropped."""
        from pydantic import ValidationError

        from infra.livekit.all_kinds import canonical
        from infra.livekit.base import URL_INPUT

        stored_ids: Mapping[str, Mapping[str, str]] = props.get(IDS) or {}

        async def listing(lk: Any) -> dict[str, dict[str, Any]]:
            found: dict[str, dict[str, Any]] = {}
            for section, kind in sections().items():
                wanted = list((stored_ids.get(section) or {}).values())
                found[section] = {kind.object_id(m): m for m in (await kind.list(lk, wanted) if wanted else [])}
            return found

        live = self._run(props, "read routing table", listing)
        trunk_keys = {v: k for k, v in (stored_ids.get("inbound_trunks") or {}).items()}
        entries: dict[str, Any] = {}
        ids: dict[str, dict[str, str]] = {}
        for section, kind in sections().items():
            entries[section], ids[section] = {}, {}
            for key, object_id in (stored_ids.get(section) or {}).items():
                if object_id not in live[section]:
                    continue
                body = {k: v for k, v in canonical(live[section][object_id]).items() if v is not None}
                refs: list[str] = []
                if section == "rules":
                    refs = [trunk_keys[t] for t in body.get("trunk_ids", []) if t in trunk_keys]
                    body["trunk_ids"] = [t for t in body.get("trunk_ids", []) if t not in trunk_keys]
                try:
                    entry = _compact(kind, body)
                except ValidationError:
                    entry = body  # edited out of band into something we refuse: show it as it is
                entries[section][key] = {**entry, **({REFS: refs} if refs else {})}
                ids[section][key] = object_id
        extra = {URL_INPUT: props[URL_INPUT]} if props.get(URL_INPUT) else {}
        return ReadResult(id, {**entries, **extra, IDS: ids}, {**entries, **extra})

    def delete(self, id: str, props: dict[str, Any]) -> None:
        self._run(props, "delete routing table", lambda lk: self._apply(lk, props, {}, self._creds(props)))


class RoutingTable(Resource, module="bench", name="RoutingTablePrototype"):
    """PROTOTYPE: one resource holding a whole routing table (see the module docstring)."""

    ids: pulumi.Output[dict[str, dict[str, str]]]

    def __init__(
        self,
        resource_name: str,
        inbound_trunks: Mapping[str, Any],
        rules: Mapping[str, Any],
        outbound_trunks: Mapping[str, Any] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        def secret_passwords(entries: Mapping[str, Any]) -> dict[str, Any]:
            return {
                k: {
                    **v,
                    **({"auth_password": pulumi.Output.secret(v["auth_password"])} if v.get("auth_password") else {}),
                }
                for k, v in entries.items()
            }

        props = {
            "inbound_trunks": secret_passwords(inbound_trunks),
            "outbound_trunks": secret_passwords(outbound_trunks or {}),
            "rules": dict(rules),
            IDS: None,
        }
        super().__init__(RoutingTableProvider(), resource_name, props, opts)
