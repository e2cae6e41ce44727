"""``siphon-infra import <env> --url ...``: list the project, write the stack file, say what to do next.

Nothing is written when the file would rewrite a LiveKit object (or leave one out) unless ``allow_changes``.
Output and errors never carry a secret: passwords are named by their config key, the commands to store them
are printed without values (``pulumi config set --secret`` then prompts for it).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from infra.adopt.build import Imported, build
from infra.adopt.changes import rewrites
from infra.adopt.live import list_project
from infra.adopt.yamlout import render
from infra.stack.errors import StackFileError
from infra.stack.plan import plan_file

HEADER = [
    "Imported by `siphon-infra import {env}` from {url} ({when}).",
    "Every trunk and dispatch rule keeps its LiveKit name, so the first `pulumi up` adopts it unchanged.",
]


class ImportFailed(Exception):
    """A one-line reason the import stopped (nothing was written)."""


@dataclass(frozen=True)
class Result:
    """What an import produced, and whether it wrote the file."""

    imported: Imported
    path: Path
    written: bool


def _counts(imported: Imported) -> str:
    n = {k: len(imported.doc.get(k, {})) for k in ("inbound_trunks", "outbound_trunks", "inbound_routes", "agents")}
    return ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in n.items())


def run_import(environment: str, url: str, path: Path, *, allow_changes: bool, force: bool) -> Result:
    """Import the project at ``url`` into ``path``; print what was done. Raises ImportFailed with the reason."""
    from infra.livekit.client import Credentials, LiveKitError

    if path.is_dir():
        raise ImportFailed(f"{path} is a directory: name the stack file to write")
    if path.exists() and not force:
        raise ImportFailed(f"{path} exists: pass --force to overwrite it")
    try:
        creds = Credentials.resolve({"livekit:url": url})
        live = list_project(creds)
    except LiveKitError as e:
        hint = ""
        if e.code in ("unknown", "unauthenticated", "permission_denied") and str(e).endswith(": "):
            hint = "(no reason given: check that LIVEKIT_API_KEY and LIVEKIT_API_SECRET are this project's)"
        raise ImportFailed(f"{e}{hint}") from None
    imported = build(live, environment, url)
    try:
        imported.findings += rewrites(imported, str(path))
    except StackFileError as e:
        first = e.problems[0]
        raise ImportFailed(f"the imported file would not compile ({len(e.problems)} problems), first: "
                           f"{first.field}: {first.message}") from None  # fmt: skip
    out = sys.stdout
    print(f"LiveKit project {url}: {_counts(imported)}", file=out)
    if imported.findings and not allow_changes:
        print(f"\nNot written: the stack file cannot reproduce {len(imported.findings)} object(s) as LiveKit holds "
              "them; the first `pulumi up` would rewrite or leave them out:", file=out)  # fmt: skip
        for finding in imported.findings:
            print(f"  {finding}", file=out)
        print("Pass --allow-changes to write it anyway.", file=out)
        return Result(imported, path, False)
    header = [h.format(env=environment, url=url, when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
              for h in HEADER]  # fmt: skip
    if imported.findings:
        header += ["", "Not reproduced as LiveKit holds it (see `siphon-infra import` output):"]
        header += [f"  {f}" for f in imported.findings]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(imported.doc, header))
    except OSError as e:
        raise ImportFailed(f"cannot write {path}: {e.strerror}") from None
    print(f"Wrote {path}", file=out)
    if imported.secrets:
        print("\nTrunk passwords stay out of the file. Store each one as a config secret (the command prompts for "
              "the value; use the password the trunk has today):", file=out)  # fmt: skip
        for key, where in imported.secrets.items():
            print(f"  pulumi config set --secret {key} --stack {environment}   # {where}", file=out)
    try:
        plan_file(path, secrets=False)
    except StackFileError as e:
        print("\nBefore `pulumi preview`, fill in (siphon-infra validate):", file=out)
        for problem in e.problems:
            print(f"  {problem}", file=out)
    if imported.findings:
        print(f"\nNot reproduced as LiveKit holds it ({len(imported.findings)}):", file=out)
        for finding in imported.findings:
            print(f"  {finding}", file=out)
    return Result(imported, path, True)
