"""Benchmark floor: the routes program's resources (same spec.json) as do-nothing dynamic resources."""

import json
from pathlib import Path

import pulumi

from bench.null_provider import NullResource

spec = json.loads((Path(__file__).parent / "spec.json").read_text())

trunks = {res: NullResource(res, args) for res, args in spec.get("inbound", {}).items()}
for res, args in spec.get("rules", {}).items():
    args = dict(args)
    refs = args.pop("trunk_refs", [])
    if refs:
        args["trunk_ids"] = pulumi.Output.all(*[trunks[r].object_id for r in refs])
    NullResource(res, args)
pulumi.export("routes", len(spec.get("rules", {})))
