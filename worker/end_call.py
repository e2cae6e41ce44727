"""The end-call tool: the agent can hang up. On by default; a layer switches it off with ``end_call: false``
(``contract.resolve.end_call_enabled``).

The tool is livekit-agents' own ``EndCallTool`` (``livekit.agents.beta.tools``): when the model calls
``end_call``, the agent finishes its turn, the session shuts down and the room is deleted, which makes the
SIP bridge send BYE to the caller. Not hand-written: the library's tool handles the speech-then-hang-up
ordering and realtime models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from contract.metadata import AgentConfig
from contract.resolve import end_call_enabled

if TYPE_CHECKING:  # livekit-agents loads only in tools()
    from livekit.agents import llm


def tools(cfg: AgentConfig) -> list[llm.Tool | llm.Toolset]:
    """The agent's tools for this call: the end-call tool when enabled."""
    from livekit.agents.beta.tools import EndCallTool

    return [EndCallTool(delete_room=True)] if end_call_enabled(cfg) else []
