"""A dynamic provider that does nothing: the Pulumi engine's and SDK's own cost per dynamic resource.

``bench/programs/floor`` declares, with ``NullResource``, the same resources (same names, arguments
and trunk references) as ``bench/programs/routes``; its no-op preview is the floor any program with
one dynamic resource per LiveKit object pays, whatever its provider does.
"""

from __future__ import annotations

from typing import Any

from pulumi.dynamic import CheckResult, CreateResult, DiffResult, Resource, ResourceProvider, UpdateResult


class NullProvider(ResourceProvider):
    """Accepts any inputs, creates nothing, never sees a change."""

    serialize_as_secret_always = False

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        return CheckResult(news, [])

    def diff(self, id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return DiffResult(changes=False)

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(str(props.get("name", "x")), {**props, "object_id": str(props.get("name", "x"))})

    def update(self, id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult({**news, "object_id": id})


class NullResource(Resource, module="bench", name="Null"):
    """One do-nothing dynamic resource."""

    object_id: Any

    def __init__(self, name: str, props: dict[str, Any]) -> None:
        super().__init__(NullProvider(), name, {**props, "object_id": None})
