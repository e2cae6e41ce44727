"""Model specs -> livekit-agents components: the registry (import-light) and the offline providers."""
