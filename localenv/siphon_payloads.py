"""Real SIPHON 0.1.4 call-metadata payloads, shared by the tests and the benchmarks (development code)."""

# Key order as SIPHON emits them; provider dicts from plugin to_config().
SIPHON_INBOUND = {
    "agent_config": {
        "llm": {
            "provider": "openai",
            "model": "gpt-4.1-mini",
            "base_url": "https://api.openai.com/v1",
            "temperature": 0.3,
            "max_completion_tokens": 150,
            "parallel_tool_calls": True,
            "timeout": 15,
        },
        "tts": {"provider": "cartesia", "model": "sonic-2", "voice": "794f9389-aac1-45b6-b726-9d9369183238"},
        "stt": {"provider": "deepgram", "model": "nova-3", "language": "en-US"},
        "greeting_instructions": "Greet the caller warmly",
        "system_instructions": "You are the front desk of a dental clinic.",
    },
    "inbound_trunk_id": "ST_inboundAbc123",
    "agent_number": "+15550100",
}
SIPHON_OUTBOUND = {
    "number_to_call": "+15550199",
    "standalone_call": True,
    "agent_config": {"llm": None, "tts": None, "stt": None, "greeting_instructions": None, "system_instructions": None},
    "outbound_trunk_id": "ST_outboundXyz789",
    "agent_number": "+15550100",
}
