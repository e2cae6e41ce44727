"""What the first ``pulumi up`` of an imported stack file would write: compile it with the plan, compare each object.

The provider adopts an object by name and writes nothing when the object LiveKit holds, in the declared shape
(``infra.livekit.kind.Kind.canonical``), equals the declared arguments; so the same comparison here tells, before
anything is written, which objects the file would rewrite and which fields differ. Passwords compare as the
values the printed ``pulumi config set --secret`` commands will store: LiveKit's own.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import ValidationError

from contract.types import LOCAL_ENVIRONMENT, describe_errors
from infra.adopt.build import Finding, Imported, default_rule
from infra.livekit.all_kinds import DISPATCH_RULE, INBOUND_TRUNK, OUTBOUND_TRUNK
from infra.livekit.fields import object_name
from infra.livekit.kind import declared
from infra.stack.errors import Problem, StackFileError
from infra.stack.model import SECRET_PLACEHOLDER, StackFile
from infra.stack.plan import compile_stack
from infra.stack.types import Plan


def comparable(doc: dict[str, Any]) -> dict[str, Any]:
    """The document with every LiveKit name and rule spelled out and the environment ``local``, so it compiles
    before its workers are filled in (the checks outside ``local`` are about workers and models, not objects)."""
    env = doc["environment"]
    out = copy.deepcopy(doc)
    out["environment"] = LOCAL_ENVIRONMENT
    for section in ("inbound_trunks", "outbound_trunks", "inbound_routes"):
        for key, entry in out.get(section, {}).items():
            entry.setdefault("name", object_name(env, key))
    for key, route in out.get("inbound_routes", {}).items():
        if "rule" not in route:
            route["rule"] = {**default_rule(env, key), "pin": route.pop("pin", "")}
    for agent in out.get("agents", {}).values():
        agent.pop("defaults", None)
        agent.setdefault("local", {})
    return out


def compile_doc(doc: dict[str, Any], file: str) -> Plan:
    """The plan of a document (``StackFileError`` with every problem when it does not compile)."""
    try:
        stack = StackFile.model_validate(doc)
    except ValidationError as e:
        raise StackFileError([Problem(file, None, f, m) for f, m in describe_errors(e)]) from None
    return compile_stack(stack, file, {})


def _diff(declared_: dict[str, Any], live: dict[str, Any]) -> list[str]:
    return [k for k in declared_ if declared_.get(k) != live.get(k)]


def rewrites(imported: Imported, file: str) -> list[Finding]:
    """Each object the file's first ``up`` would write, with the fields that differ (names only, never values)."""
    plan = compile_doc(comparable(imported.doc), file)
    ids = imported.ids
    found: list[Finding] = []
    trunk_sections = (("inbound_trunks", plan.inbound_trunks, INBOUND_TRUNK),
                      ("outbound_trunks", plan.outbound_trunks, OUTBOUND_TRUNK))  # fmt: skip
    for section, trunks, kind in trunk_sections:
        for key, trunk in trunks.items():
            live = imported.live[ids[section][key]]
            want = declared(trunk.args)
            if want.get("auth_password") == SECRET_PLACEHOLDER:
                want["auth_password"] = live.auth_password  # what `pulumi config set --secret` will hold
            fields = _diff(want, imported.shape(live, ids[section][key]))
            if fields:
                found.append(Finding(kind.label, live.name, ids[section][key], "rewritten",
                                     f"the file declares other {', '.join(fields)}"))  # fmt: skip
    inbound_ids = ids.get("inbound_trunks", {})
    for key, route in plan.inbound_routes.items():
        live = imported.live[ids["inbound_routes"][key]]
        args = route.rule.model_copy(update={"trunk_ids": [inbound_ids[t] for t in route.trunks]})
        fields = _diff(declared(args), imported.shape(live, ids["inbound_routes"][key]))
        if fields:
            found.append(Finding(DISPATCH_RULE.label, live.name, ids["inbound_routes"][key], "rewritten",
                                 f"the file declares other {', '.join(fields)}"))  # fmt: skip
    return found
