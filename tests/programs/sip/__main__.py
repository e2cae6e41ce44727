"""Test program: declares SIP trunks and dispatch rules from the `spec` object in stack config.

spec = {"inbound": {res: args}, "outbound": {res: args}, "rules": {res: args + "trunk_refs": [res]}}.
The secret config value `password` is used wherever an args value is the string "$password".
"""

import pulumi

from infra.livekit.dispatch_rule import SipDispatchRule
from infra.livekit.inbound_trunk import SipInboundTrunk
from infra.livekit.outbound_trunk import SipOutboundTrunk

config = pulumi.Config()
spec = config.require_object("spec")
password = config.get_secret("password")


def resolve(args: dict) -> dict:
    return {k: (password if v == "$password" else v) for k, v in args.items()}


trunks: dict[str, pulumi.Resource] = {}
for res, args in spec.get("inbound", {}).items():
    trunks[res] = SipInboundTrunk(res, resolve(args))
    pulumi.export(f"{res}.id", trunks[res].sip_trunk_id)
for res, args in spec.get("outbound", {}).items():
    trunks[res] = SipOutboundTrunk(res, resolve(args))
    pulumi.export(f"{res}.id", trunks[res].sip_trunk_id)
for res, args in spec.get("rules", {}).items():
    args = dict(args)
    refs = args.pop("trunk_refs", [])
    if refs:
        args["trunk_ids"] = pulumi.Output.all(*[trunks[r].sip_trunk_id for r in refs])
    rule = SipDispatchRule(res, resolve(args))
    pulumi.export(f"{res}.id", rule.sip_dispatch_rule_id)
