"""Benchmark program: N inbound routes (an inbound trunk and a dispatch rule each) read from spec.json.

spec.json (written by bench/sip_deploy.py next to this file) = {"inbound": {res: args},
"rules": {res: args + "trunk_refs": [res]}}: the shape tests/programs/sip takes from stack config, in a
file because hundreds of routes do not fit on the `pulumi config set` command line.
"""

import json
from pathlib import Path

import pulumi

from infra.livekit.dispatch_rule import SipDispatchRule
from infra.livekit.inbound_trunk import SipInboundTrunk

spec = json.loads((Path(__file__).parent / "spec.json").read_text())

trunks: dict[str, SipInboundTrunk] = {res: SipInboundTrunk(res, args) for res, args in spec.get("inbound", {}).items()}
for res, args in spec.get("rules", {}).items():
    args = dict(args)
    refs = args.pop("trunk_refs", [])
    if refs:
        args["trunk_ids"] = pulumi.Output.all(*[trunks[r].sip_trunk_id for r in refs])
    SipDispatchRule(res, args)
pulumi.export("routes", len(spec.get("rules", {})))
