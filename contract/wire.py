"""The names the worker and the infrastructure agree on, each written once: the LiveKit credential variables,
the ``sip.*`` attributes livekit-sip sets on a caller's participant, and the ``siphon.*`` attributes (the
caller's side writes ``siphon.overrides`` and ``siphon.header.<header>``; the worker publishes the rest).

Both producers and every reader (``worker``, ``infra.verify``, ``infra.stack``, the rehearsal) import these names
rather than agreeing on a string by coincidence, as ``contract.metrics`` does for the metric names. SIPHON's
payload keys sit beside their reader and writer in ``contract.metadata``.
"""

from __future__ import annotations

# The LiveKit credentials, as environment variables (livekit-api, livekit-agents and the providers read them).
LIVEKIT_URL_ENV = "LIVEKIT_URL"
LIVEKIT_API_KEY_ENV = "LIVEKIT_API_KEY"
LIVEKIT_API_SECRET_ENV = "LIVEKIT_API_SECRET"
LIVEKIT_CREDENTIAL_ENV = (LIVEKIT_URL_ENV, LIVEKIT_API_KEY_ENV, LIVEKIT_API_SECRET_ENV)
"""The three variables a LiveKit client reads: URL, key, secret."""
LIVEKIT_AGENT_NAME_ENV = "LIVEKIT_AGENT_NAME"
"""livekit-agents' name for the agent name (the worker also reads ``SIPHON_AGENT_NAME``)."""

# livekit-sip's attributes on a SIP participant.
SIP_ATTRIBUTE_PREFIX = "sip."
SIP_CALL_STATUS = "sip.callStatus"
"""ringing until livekit-sip answers the caller (or the callee answers), then active."""
SIP_PHONE_NUMBER = "sip.phoneNumber"
SIP_TRUNK_PHONE_NUMBER = "sip.trunkPhoneNumber"
SIP_TRUNK_ID = "sip.trunkID"
SIP_CALL_ID = "sip.callID"
SIP_CALL_ID_FULL = "sip.callIDFull"
"""The SIP Call-ID of the caller's leg."""
SIP_RULE_ID = "sip.ruleID"

# siphon.* attributes.
SIPHON_ATTRIBUTE_PREFIX = "siphon."
"""The agent publishes its resolved configuration as ``siphon.<field>`` (``contract.resolve.Resolved.attributes``)."""
OVERRIDES_ATTRIBUTE = "siphon.overrides"
"""The caller-sourced configuration layer (JSON), on the SIP participant."""
HEADER_ATTRIBUTE_PREFIX = "siphon.header."
"""A header a route's ``header_overrides`` reads arrives as ``siphon.header.<header>`` (unless its trunk maps it):
the one part of the ``siphon.`` namespace a trunk may map a SIP header to, since only stack-declared values of it
select anything."""
ROUTE_ATTRIBUTE = "siphon.route"
"""The route key: on a siphon-infra dispatch rule, and published by the agent."""
CALL_STATUS_ATTRIBUTE = "siphon.call_status"
"""The agent's view of its call: active, no_caller, refused..."""
SERVING_ATTRIBUTE = "siphon.{kind}_serving"
"""Agent attribute of a kind served by a fallback chain: the label of the entry serving now, once it has changed."""
CONFIG_HASH_ATTRIBUTE = "siphon.config_hash"
"""The hash of the agent's resolved configuration: set once the agent serves its call."""
CALLER_SPEECH_ATTRIBUTE = "siphon.caller_speech"
"""Agent attribute: how many times VAD has detected the caller starting to speak in this call."""
INTERRUPTED_ATTRIBUTE = "siphon.interrupted"
"""Agent attribute: how many of the agent's utterances the caller interrupted in this call."""
UTTERANCES_ATTRIBUTE = "siphon.agent_utterances"
"""Agent attribute: how many utterances the agent has finished or been interrupted in, in this call."""


def siphon_attribute(field: str) -> str:
    """The ``siphon.*`` attribute the agent publishes a resolved field as (``trunk_id`` -> ``siphon.trunk_id``)."""
    return SIPHON_ATTRIBUTE_PREFIX + field
