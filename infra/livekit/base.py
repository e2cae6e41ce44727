"""The provider and the resource every LiveKit SIP kind subclasses (a kind module names its ``KIND``).

``LiveKitProvider`` holds the generic check/diff/create/read/update/delete of a Pulumi dynamic
provider; ``SipResource`` the constructor of the resources a Pulumi program declares.

Provider instances carry no attributes into state (dill pickles them by class path: each kind module
says which paths to keep); credentials come from ``configure()`` (stack config) or the environment at
call time. The event loop, LiveKit client, name index and conflict claims are per provider process
(``client.state``), never pickled. ``infra.livekit.client`` loads aiohttp and the LiveKit API client
only when a call is made: a program declaring resources, and check and diff (all that a no-op
preview runs), never need them, and importing them costs each of those processes about 0.3 s.

Resource arguments are the fields of the kind's model, given either as the model or as a mapping
whose values may be Pulumi inputs (for example a rule's ``trunk_ids`` taken from a trunk's
``sip_trunk_id``). ``auth_password`` is always made a secret. Type tokens are
``pulumi-python:dynamic/livekit:<Class>`` (class keywords), which state records: they stay as they are.

Adopting objects that already exist in LiveKit: declare them with the same ``name`` they have in
LiveKit. ``pulumi up`` finds the object by name, takes it over (same id) and overwrites it with the
declaration, instead of creating a duplicate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import pulumi
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    ConfigureRequest,
    CreateResult,
    DiffResult,
    ReadResult,
    Resource,
    ResourceProvider,
    UpdateResult,
)
from pydantic import BaseModel, ValidationError

from contract.types import SECRET_FIELDS
from infra.dynamic import InvalidArguments, is_unknown
from infra.livekit import client
from infra.livekit.conflicts import Claims, conflict_keys
from infra.livekit.fields import describe_errors
from infra.livekit.kind import Kind, declared
from infra.livekit.names import NameIndex

if TYPE_CHECKING:
    from livekit import api

URL_INPUT = "__livekit_url"  # optional non-secret input: which LiveKit project the object lives in
ADOPT_INPUT = "__adopt_id"  # optional: the id of the object to adopt on create, when its name is not unique


class LiveKitProvider(ResourceProvider):
    """Shared create/read/update/delete/diff/check logic; subclasses name their ``KIND``."""

    KIND: ClassVar[Kind]
    serialize_as_secret_always = False  # nothing secret is captured: credentials come from configure()

    def configure(self, req: ConfigureRequest) -> None:
        """Remember where LiveKit is (only in this provider process; never pickled)."""
        self._config = {k: req.config.get(k) for k in client.CONFIG_KEYS}

    # -- helpers ------------------------------------------------------------------------------------

    def _creds(self, props: dict[str, Any]) -> client.Credentials:
        config = dict(getattr(self, "_config", {}))
        if props.get(URL_INPUT):  # the stack file's livekit.url wins over config and environment
            config["livekit:url"] = props[URL_INPUT]
        return client.Credentials.resolve(config)

    def _names(self, creds: client.Credentials) -> NameIndex:
        """This process's name index of this kind on this LiveKit project."""
        indexes = client.state("names", dict[tuple[str, str, str], NameIndex])
        return indexes.setdefault((creds.url, creds.api_key, self.KIND.label), NameIndex(self.KIND.object_id))

    def _claims(self, creds: client.Credentials) -> Claims:
        """This process's in-flight write keys for this LiveKit project (every kind shares one)."""
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
        args = self._validate(props)
        name = props["name"]
        message = self.KIND.to_proto(args)
        creds = self._creds(props)
        index = self._names(creds)

        async def create_or_adopt(lk: api.LiveKitAPI) -> str:
            write = _Create(self.KIND, lk, index, name, message, args, props.get(ADOPT_INPUT))
            async with self._claims(creds).hold(conflict_keys(self.KIND.label, message)):
                return await write.created_or_adopted()

        object_id = client.call(creds, self._what("create", props), create_or_adopt)
        return CreateResult(object_id, self._outs(object_id, declared(args), props))

    def update(self, id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        """Replace the whole object in place (same id), resending every field including secrets."""
        args = self._validate(news)
        message = self.KIND.to_proto(args)
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
        found = client.call(self._creds(props), self._what("read", props), lambda lk: self.KIND.list(lk, [id]))
        found = [m for m in found if self.KIND.object_id(m) == id]
        if not found:
            return ReadResult("", {})
        live = self.KIND.canonical(found[0])
        inputs = {**live, **({URL_INPUT: props[URL_INPUT]} if props.get(URL_INPUT) else {})}
        return ReadResult(id, self._outs(id, live, props), inputs)

    def delete(self, id: str, props: dict[str, Any]) -> None:
        """Delete; an object that is already gone counts as deleted."""
        creds = self._creds(props)
        client.call(creds, self._what("delete", props), lambda lk: self.KIND.delete(lk, id))
        self._names(creds).removed(id)


@dataclass(frozen=True)
class _Create:
    """One create, in the steps the provider takes while it holds the write's conflict keys: the ids of the name
    (or the id the import adopts), a new object when there is none, else the one object of the name taken over."""

    kind: Kind
    lk: api.LiveKitAPI
    index: NameIndex
    name: str
    message: Any
    args: BaseModel
    adopt_id: str | None

    async def created_or_adopted(self) -> str:
        """The id of the object created or adopted."""
        ids, seen = await self._named()
        if not ids:
            created, ids = await self._create_unless_named_since(seen)
            if created:
                return created
        return await self._take_over(self._only(ids))

    async def _listing(self) -> list[Any]:
        return await self.kind.list(self.lk, [])

    async def _named(self) -> tuple[list[str], int]:
        """The ids of the name in this process's listing, and the listing's generation."""
        ids, seen = await self.index.lookup(self.name, self._listing)
        if self.adopt_id and self.index.listed(self.adopt_id) is not None:
            ids = [self.adopt_id]  # named like others (e.g. SIPHON's trunks): the import named it by id
        return ids, seen

    async def _create_unless_named_since(self, seen: int) -> tuple[str, list[str]]:
        """A new object's id; or, when LiveKit refuses it and a new listing holds the name (someone created it
        after listing ``seen``), no id and the ids of the name."""
        from livekit.api import TwirpError  # loaded by now: ``lk`` is a client

        try:
            return await self._new(), []
        except TwirpError:
            await self.index.refresh(seen, self._listing)  # someone may have created it since the listing
            ids, _ = await self.index.lookup(self.name, self._listing)
            if not ids:
                raise
            return "", ids

    def _only(self, ids: list[str]) -> str:
        if len(ids) > 1:
            raise client.LiveKitError(
                f"several LiveKit {self.kind.label}s are named {self.name!r} ({', '.join(ids)}): "
                "delete all but one, then retry"
            )
        return ids[0]

    async def _take_over(self, object_id: str) -> str:
        """Adopt ``object_id``: as it is when it already matches the declaration, else overwritten with it (created
        after all when it was deleted since the listing)."""
        from livekit.api import TwirpError  # loaded by now: ``lk`` is a client

        found = self.index.listed(object_id)
        if found is not None and self.kind.canonical(found) == declared(self.args):
            return object_id  # adopted as it already is: nothing to write (`siphon-infra import`)
        try:
            await self.kind.replace(self.lk, object_id, self.message)
            self.index.removed_listing(object_id)
        except TwirpError as e:
            if e.code != "not_found":
                raise
            self.index.removed(object_id)  # deleted since the listing: create it after all
            return await self._new()
        return object_id

    async def _new(self) -> str:
        created = self.kind.object_id(await self.kind.create(self.lk, self.message))
        self.index.added(self.name, created)
        return created


SECRET_OUTPUTS = list(SECRET_FIELDS)


class InvalidDeclaration(pulumi.RunError, InvalidArguments):
    """Invalid arguments caught while the program runs; Pulumi shows the message without a traceback."""


def _set_fields(args: BaseModel) -> dict[str, Any]:
    """Only the fields that differ from their defaults: ``check()`` fills in the rest in the provider.

    Every key sent becomes an Output the SDK tracks until the program ends (and its wait loop is
    quadratic in them), so a trunk declared with two fields costs two keys, not sixteen.
    """
    return args.model_dump(exclude_defaults=True)


def _props(
    resource_name: str, provider: LiveKitProvider, args: BaseModel | Mapping[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    model = provider.KIND.args
    if isinstance(args, BaseModel):
        props: dict[str, Any] = _set_fields(args)
    else:
        props = dict(args)
        plain = not any(isinstance(v, pulumi.Output) for v in props.values())
        if plain:  # fail fast in the program, naming the resource and the field
            hidden = {k: v for k, v in props.items() if k.startswith("__")}  # provider inputs (URL, id to adopt)
            try:
                props = {**_set_fields(model.model_validate({k: v for k, v in props.items() if k not in hidden})),
                         **hidden}  # fmt: skip
            except ValidationError as e:
                lines = "\n".join(f"  {f}: {r}" for f, r in describe_errors(e))
                raise InvalidDeclaration(f"{provider.KIND.label} {resource_name!r} is invalid:\n{lines}") from None
    secrets = [k for k in SECRET_OUTPUTS if k in model.model_fields]
    for key in secrets:
        if props.get(key):
            props[key] = pulumi.Output.secret(props[key])
    props[provider.KIND.id_field] = None  # output-only: filled in by create
    return props, secrets


class SipResource(Resource):
    """Shared constructor: the subclass names its ``PROVIDER`` and, through class keywords, its type token."""

    PROVIDER: ClassVar[type[LiveKitProvider]]

    def __init__(
        self,
        resource_name: str,
        args: BaseModel | Mapping[str, Any],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        provider = self.PROVIDER()
        props, secrets = _props(resource_name, provider, args)
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=secrets))
        super().__init__(provider, resource_name, props, opts)
