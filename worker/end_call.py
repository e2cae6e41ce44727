"""The end-call tool: the agent can hang up. On by default; a layer switches it off with ``end_call: false``.

The tool is livekit-agents' own ``EndCallTool`` (``livekit.agents.beta.tools``): when the model calls
``end_call``, the agent finishes its turn, the session shuts down and the room is deleted, which makes the
SIP bridge send BYE to the caller. Not hand-written: the library's tool handles the speech-then-hang-up
ordering and realtime models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from worker.metadata import AgentConfig

if TYPE_CHECKING:  # import-light: worker.config imports this module; livekit-agents loads only in tools()
    from livekit.agents import llm

END_CALL_DEFAULT = True
"""Whether the agent has the tool when no layer says (SIPHON's ``HANGUP_CALL`` default is true too)."""


def enabled(cfg: AgentConfig) -> bool:
    """Whether the merged configuration gives the agent the end-call tool."""
    return END_CALL_DEFAULT if cfg.end_call is None else cfg.end_call


def tools(cfg: AgentConfig) -> list[llm.Tool | llm.Toolset]:
    """The agent's tools for this call: the end-call tool when enabled."""
    from livekit.agents.beta.tools import EndCallTool

    return [EndCallTool(delete_room=True)] if enabled(cfg) else []
