"""Kept for state written by release 0.1.0: it records the dynamic providers by these class paths.

Pulumi pickles a dynamic provider instance (dill, by module path and class name) into every
resource's state; 0.1.0 wrote ``infra.livekit.provider.InboundTrunkProvider``,
``...OutboundTrunkProvider`` and ``...DispatchRuleProvider``. Unpickling that state imports this
module, so the names must stay importable here. The classes live with their kind:
``infra.livekit.inbound_trunk``, ``infra.livekit.outbound_trunk`` and ``infra.livekit.dispatch_rule``.
New code imports from there.
"""

from __future__ import annotations

from infra.livekit.dispatch_rule import DispatchRuleProvider
from infra.livekit.inbound_trunk import InboundTrunkProvider
from infra.livekit.outbound_trunk import OutboundTrunkProvider

__all__ = ["DispatchRuleProvider", "InboundTrunkProvider", "OutboundTrunkProvider"]
