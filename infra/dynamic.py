"""Pieces every dynamic provider here shares: preview-time unknown detection and the validation error."""

from __future__ import annotations

from typing import Any

from pulumi.output import Unknown
from pulumi.runtime import rpc


def is_unknown(value: Any) -> bool:
    """True for a value (or a value containing one) that is not known yet during preview."""
    if isinstance(value, Unknown) or value == rpc.UNKNOWN:
        return True
    if isinstance(value, dict):
        return any(is_unknown(v) for v in value.values())
    if isinstance(value, list):
        return any(is_unknown(v) for v in value)
    return False


class InvalidArguments(ValueError):
    """Arguments failed validation; the message names the resource and each field."""
