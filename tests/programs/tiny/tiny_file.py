"""A minimal dynamic resource for the engine smoke test: a text file on local disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ReadResult, Resource, ResourceProvider, UpdateResult


class FileProvider(ResourceProvider):
    """Writes ``content`` to ``path``; refresh notices edits and deletion made out of band."""

    serialize_as_secret_always = False

    def create(self, props: dict[str, Any]) -> CreateResult:
        Path(props["path"]).write_text(props["content"])
        return CreateResult(props["path"], {"path": props["path"], "content": props["content"]})

    def diff(self, id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [k for k in ("path", "content") if olds.get(k) != news.get(k)]
        return DiffResult(changes=bool(changed), replaces=[k for k in changed if k == "path"])

    def update(self, id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        Path(news["path"]).write_text(news["content"])
        return UpdateResult({"path": news["path"], "content": news["content"]})

    def read(self, id: str, props: dict[str, Any]) -> ReadResult:
        p = Path(id)
        if not p.exists():
            return ReadResult("", {})
        outs = {"path": id, "content": p.read_text()}
        return ReadResult(id, outs)

    def delete(self, id: str, props: dict[str, Any]) -> None:
        Path(id).unlink(missing_ok=True)


class TinyFile(Resource, module="test", name="File"):
    """A file managed by FileProvider."""

    path: pulumi.Output[str]
    content: pulumi.Output[str]

    def __init__(self, name: str, path: str, content: str, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(FileProvider(), name, {"path": path, "content": content}, opts)
