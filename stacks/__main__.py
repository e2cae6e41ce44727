"""Pulumi entry point: declares the routing of `stacks/<selected stack>.yaml` (see infra/stack/program.py)."""

from infra.stack.program import run

run()
