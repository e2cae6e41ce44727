"""Pieces every dynamic provider here shares: preview-time unknown detection and the validation error."""

from __future__ import annotations

from pulumi.output import contains_unknowns as is_unknown

__all__ = ["InvalidArguments", "is_unknown"]
"""``is_unknown(value)``: True for a value (or a value containing one) that is not known yet during preview."""


class InvalidArguments(ValueError):
    """Arguments failed validation; the message names the resource and each field."""
