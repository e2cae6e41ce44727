"""The imported stack file as YAML in the committed stacks' style: short lists and maps inline, the rest as blocks."""

from __future__ import annotations

from typing import Any

import yaml

INLINE_WIDTH = 100


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]  # libyaml's emitter: ~4x faster
    def ignore_aliases(self, data: object) -> bool:
        return True  # a stack file spells every value out (no &anchors / *aliases)


def _scalar(value: object) -> bool:
    return not isinstance(value, dict | list)


def _list(dumper: yaml.SafeDumper, value: list[Any]) -> yaml.Node:
    inline = all(_scalar(v) for v in value) and len(repr(value)) < INLINE_WIDTH
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=inline)


def _dict(dumper: yaml.SafeDumper, value: dict[str, Any]) -> yaml.Node:
    inline = not value or (all(_scalar(v) for v in value.values()) and len(repr(value)) < INLINE_WIDTH // 2)
    return dumper.represent_mapping("tag:yaml.org,2002:map", value.items(), flow_style=inline)


_Dumper.add_representer(list, _list)
_Dumper.add_representer(dict, _dict)


def render(doc: dict[str, Any], header: list[str]) -> str:
    """The document as YAML text, ``header`` lines first as comments."""
    body = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=4096)
    return "".join(f"# {line}\n" if line else "#\n" for line in header) + "\n" + body
