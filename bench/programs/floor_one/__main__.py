"""Benchmark floor: ONE do-nothing dynamic resource, the least any program with a Python dynamic provider pays."""

import pulumi

from bench.null_provider import NullResource

NullResource("one", {"name": "one"})
pulumi.export("routes", 0)
