"""What the AWS dynamic providers share: the stack's region, and checking their arguments against their model (the
preview-time unknowns left for apply time; each problem named by resource and field, never quoting a value)."""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from typing import Any, ClassVar

from pulumi.dynamic import CheckFailure, ConfigureRequest, ResourceProvider
from pydantic import BaseModel, ValidationError

from contract.types import describe_error, describe_errors
from infra.dynamic import InvalidArguments, is_unknown
from infra.ecs.aws import resolve_region


class RegionalProvider(ResourceProvider):
    """A dynamic provider of AWS resources in the stack's region (``aws:region``, else the environment's), whose
    arguments are ``ARGS`` (``DECLARED``: its fields) and whose state adds ``OUTPUT_KEYS``."""

    ARGS: ClassVar[type[BaseModel]]
    LABEL: ClassVar[str]
    WHO: ClassVar[str]  # the argument that tells one resource from another in messages
    DECLARED: ClassVar[tuple[str, ...]]
    OUTPUT_KEYS: ClassVar[tuple[str, ...]]

    def configure(self, req: ConfigureRequest) -> None:
        """Remember the stack's ``aws:region`` (provider process only; never pickled)."""
        self._configured_region = req.config.get("aws:region")

    def _region(self, props: Mapping[str, Any] | None = None) -> str:
        if props and props.get("region"):
            return str(props["region"])
        return resolve_region(getattr(self, "_configured_region", None))

    def _region_moved(self, olds: Mapping[str, Any]) -> bool:
        """The stack's region is no longer the one the resource lives in (a replacement)."""
        configured = getattr(self, "_configured_region", None)
        return bool(configured and olds.get("region") and configured != olds["region"])

    @classmethod
    def who(cls, props: Mapping[str, Any]) -> str:
        """The resource, for a message: ``<LABEL> (<WHO> '<value>')``."""
        value = props.get(cls.WHO)
        return f"{cls.LABEL} ({cls.WHO} {value!r})" if isinstance(value, str) else cls.LABEL

    @classmethod
    def body(cls, props: Mapping[str, Any], skip: AbstractSet[str] = frozenset()) -> dict[str, Any]:
        """The declared arguments among ``props`` (state also holds the outputs and the provider)."""
        return {k: v for k, v in props.items() if k != "__provider" and k not in cls.OUTPUT_KEYS and k not in skip}

    @classmethod
    def validated(cls, props: Mapping[str, Any]) -> Any:
        """The arguments as ``ARGS``, or InvalidArguments naming the resource and each field."""
        try:
            return cls.ARGS.model_validate(cls.body(props))
        except ValidationError as e:
            lines = [f"  {field}: {reason}" for field, reason in describe_errors(e)]
            raise InvalidArguments(f"invalid {cls.who(props)}:\n" + "\n".join(lines)) from None

    @classmethod
    def checked(
        cls, news: Mapping[str, Any], fields: AbstractSet[str]
    ) -> tuple[Any, dict[str, Any], set[str], list[CheckFailure]]:
        """``check``'s part common to every provider: ``(args or None, body, unknown fields, failures)``. Fields
        unknown during preview are left out (checked at apply time); a failure is attributed to its top field when
        that is one of ``fields``."""
        unknown = {k for k, val in news.items() if k in cls.DECLARED and is_unknown(val)}
        body = cls.body(news, unknown)
        try:
            return cls.ARGS.model_validate(body), body, unknown, []
        except ValidationError as e:
            failures = []
            for err in e.errors(include_url=False):
                loc = err["loc"]
                if unknown and (not loc or loc[0] in unknown):
                    continue  # missing because unknown, or a cross-field rule involving an unknown
                field, reason = describe_error(err)
                top = field.split(".")[0]
                failures.append(CheckFailure(top if top in fields else "", f"{cls.who(news)}: {field}: {reason}"))
            return None, body, unknown, failures
