"""Benchmark program, PROTOTYPE: the routes of spec.json (as bench/programs/routes reads them) as one RoutingTable."""

import json
from pathlib import Path

import pulumi

from bench.prototype_table import RoutingTable

spec = json.loads((Path(__file__).parent / "spec.json").read_text())
table = RoutingTable("routes", spec.get("inbound", {}), spec.get("rules", {}), spec.get("outbound", {}))
pulumi.export("routes", len(spec.get("rules", {})))
