"""Pulumi dynamic providers for LiveKit SIP objects (one class per kind, shared logic in the base).

State refers to these classes by import path (``infra.livekit.provider.InboundTrunkProvider`` ...):
keep the path stable. Instances carry no attributes into state; credentials come from
``configure()`` (stack config) or the environment at call time. The event loop, LiveKit client,
name index and conflict claims are per provider process (``client.state``), never pickled.

``infra.livekit.client`` (aiohttp and the LiveKit API client) is imported by the methods that call
LiveKit, not by this module: a program declaring resources, and check and diff (all that a no-op
preview runs), never need it, and importing it costs each of those processes about 0.3 s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    ConfigureRequest,
    CreateResult,
    DiffResult,
    ReadResult,
    ResourceProvider,
    UpdateResult,
)
from pydantic import BaseModel, ValidationError

from infra.dynamic import InvalidArguments, is_unknown
from infra.livekit.conflicts import Claims, conflict_keys
from infra.livekit.convert import canonical, declared, to_proto
from infra.livekit.kinds import DISPATCH_RULE, INBOUND_TRUNK, OUTBOUND_TRUNK, Kind
from infra.livekit.names import NameIndex
from infra.livekit.validation import describe_errors

if TYPE_CHECKING:
    from livekit import api

    from infra.livekit import client

CONFIG_KEYS = ("livekit:url", "livekit:apiKey", "livekit:apiSecret")
URL_INPUT = "__livekit_url"  # optional non-secret input: which LiveKit project the object lives in
ADOPT_INPUT = "__adopt_id"  # optional: the id of the object to adopt on create, when its name is not unique


class LiveKitProvider(ResourceProvider):
    """Shared create/read/update/delete/diff/check logic; subclasses name their ``KIND``."""

    KIND: ClassVar[Kind]
    serialize_as_secret_always = False  # nothing secret is captured: credentials come from configure()

    def configure(self, req: ConfigureRequest) -> None:
        """Remember where LiveKit is (only in this provider process; never pickled)."""
        self._config = {k: req.config.get(k) for k in CONFIG_KEYS}

    # -- helpers ------------------------------------------------------------------------------------

    def _creds(self, props: dict[str, Any]) -> client.Credentials:
        from infra.livekit import client

        config = dict(getattr(self, "_config", {}))
        if props.get(URL_INPUT):  # the stack file's livekit.url wins over config and environment
            config["livekit:url"] = props[URL_INPUT]
        return client.Credentials.resolve(config)

    def _names(self, creds: client.Credentials) -> NameIndex:
        """This process's name index of this kind on this LiveKit project."""
        from infra.livekit import client

        indexes = client.state("names", dict[tuple[str, str, str], NameIndex])
        return indexes.setdefault((creds.url, creds.api_key, self.KIND.label), NameIndex(self.KIND.object_id))

    def _claims(self, creds: client.Credentials) -> Claims:
        """This process's in-flight write keys for this LiveKit project (every kind shares one)."""
        from infra.livekit import client

        claims = client.state("claims", dict[tuple[str, str], Claims])
        return claims.setdefault((creds.url, creds.api_key), Claims())

    def _declared_keys(self) -> list[str]:
        return list(self.KIND.args.model_fields)

    def _is_input(self, key: str) -> bool:
        return not key.startswith("__") and key != self.KIND.id_field

    def _validate(self, props: dict[str, Any]) -> BaseModel:
        body = {k: v for k, v in props.items() if self._is_input(k)}
        try:
            return self.KIND.args.model_validate(body)
        except ValidationError as e:
            lines = [f"  {field}: {reason}" for field, reason in describe_errors(e)]
            name = props.get("name") or "?"
            raise InvalidArguments(f"invalid {self.KIND.label} {name!r}:\n" + "\n".join(lines)) from None

    def _outs(self, object_id: str, values: dict[str, Any], props: dict[str, Any]) -> dict[str, Any]:
        extra = {URL_INPUT: props[URL_INPUT]} if props.get(URL_INPUT) else {}
        return {**values, **extra, self.KIND.id_field: object_id}

    def _what(self, verb: str, props: dict[str, Any]) -> str:
        return f"{verb} {self.KIND.label} {props.get('name')!r}"

    # -- Pulumi provider protocol -------------------------------------------------------------------

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        """Validate and normalise; fields still unknown during preview are checked once known."""
        unknown = {k for k, v in news.items() if is_unknown(v)}
        body = {k: v for k, v in news.items() if self._is_input(k) and k not in unknown}
        failures = []
        try:
            normalised = declared(self.KIND.args.model_validate(body))
        except ValidationError as e:
            for field, reason in describe_errors(e):
                top = field.split(".")[0]
                if top in unknown or (unknown and field == "(root)"):
                    continue  # depends on a value that is not known yet; checked again at apply time
                failures.append(
                    CheckFailure(top if top in news or top in self._declared_keys() else "", f"{field}: {reason}")
                )
            normalised = body
        if failures:
            return CheckResult(news, failures)
        passthrough = {k: news[k] for k in news if k in (URL_INPUT, ADOPT_INPUT) or k in unknown}
        return CheckResult({**normalised, **passthrough}, [])

    def diff(self, id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        """Compare declared fields only (never ``__provider``); everything updates in place."""
        changed = [k for k in self._declared_keys() if is_unknown(news.get(k)) or olds.get(k) != news.get(k)]
        return DiffResult(changes=bool(changed), replaces=[], delete_before_replace=False)

    def create(self, props: dict[str, Any]) -> CreateResult:
        """Create, or adopt the object of the same name (a retried or interrupted create leaves no duplicate).

        One LiveKit call per object: the names come from one listing per kind per provider process
        (``infra.livekit.names``), and only writes LiveKit could find conflicting wait for each other.
        """
        from infra.livekit import client

        args = self._validate(props)
        name = props["name"]
        message = to_proto(args, self.KIND.message)
        creds = self._creds(props)
        index = self._names(creds)

        async def create_or_adopt(lk: api.LiveKitAPI) -> str:
            async def listing() -> list[Any]:
                return await self.KIND.list(lk, [])

            async with self._claims(creds).hold(conflict_keys(self.KIND.label, message)):
                ids, seen = await index.lookup(name, listing)
                adopt = props.get(ADOPT_INPUT)
                if adopt and index.listed(adopt) is not None:
                    ids = [adopt]  # named like others (e.g. SIPHON's trunks): the import named it by id
                if not ids:
                    try:
                        created = self.KIND.object_id(await self.KIND.create(lk, message))
                    except client.api.TwirpError:
                        await index.refresh(seen, listing)  # someone may have created it since the listing
                        ids, seen = await index.lookup(name, listing)
                        if not ids:
                            raise
                    else:
                        index.added(name, created)
                        return created
                if len(ids) > 1:
                    raise client.LiveKitError(
                        f"several LiveKit {self.KIND.label}s are named {name!r} ({', '.join(ids)}): "
                        "delete all but one, then retry"
                    )
                found = index.listed(ids[0])
                if found is not None and canonical(found) == declared(args):
                    return ids[0]  # adopted as it already is: nothing to write (`siphon-infra import`)
                try:
                    await self.KIND.replace(lk, ids[0], message)
                    index.removed_listing(ids[0])
                except client.api.TwirpError as e:
                    if e.code != "not_found":
                        raise
                    index.removed(ids[0])  # deleted since the listing: create it after all
                    created = self.KIND.object_id(await self.KIND.create(lk, message))
                    index.added(name, created)
                    return created
                return ids[0]

        object_id = client.call(creds, self._what("create", props), create_or_adopt)
        return CreateResult(object_id, self._outs(object_id, declared(args), props))

    def update(self, id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        """Replace the whole object in place (same id), resending every field including secrets."""
        from infra.livekit import client

        args = self._validate(news)
        message = to_proto(args, self.KIND.message)
        creds = self._creds(news)

        async def replace(lk: api.LiveKitAPI) -> None:
            async with self._claims(creds).hold(conflict_keys(self.KIND.label, message)):
                await self.KIND.replace(lk, id, message)

        try:
            client.call(creds, self._what("update", news), replace)
        except client.LiveKitError as e:
            if e.code == "not_found":
                raise client.LiveKitError(
                    f"{self.KIND.label} {news.get('name')!r} ({id}) was deleted outside Pulumi: run `pulumi refresh`, "
                    "then `pulumi up` recreates it"
                ) from None
            raise
        return UpdateResult(self._outs(id, declared(args), news))

    def read(self, id: str, props: dict[str, Any]) -> ReadResult:
        """Refresh: report the object as LiveKit holds it, or that it is gone."""
        from infra.livekit import client

        found = client.call(self._creds(props), self._what("read", props), lambda lk: self.KIND.list(lk, [id]))
        found = [m for m in found if self.KIND.object_id(m) == id]
        if not found:
            return ReadResult("", {})
        live = canonical(found[0])
        inputs = {**live, **({URL_INPUT: props[URL_INPUT]} if props.get(URL_INPUT) else {})}
        return ReadResult(id, self._outs(id, live, props), inputs)

    def delete(self, id: str, props: dict[str, Any]) -> None:
        """Delete; an object that is already gone counts as deleted."""
        from infra.livekit import client

        creds = self._creds(props)
        client.call(creds, self._what("delete", props), lambda lk: self.KIND.delete(lk, id))
        self._names(creds).removed(id)


class InboundTrunkProvider(LiveKitProvider):
    """Provider for ``SipInboundTrunk``."""

    KIND = INBOUND_TRUNK


class OutboundTrunkProvider(LiveKitProvider):
    """Provider for ``SipOutboundTrunk``."""

    KIND = OUTBOUND_TRUNK


class DispatchRuleProvider(LiveKitProvider):
    """Provider for ``SipDispatchRule``."""

    KIND = DISPATCH_RULE
