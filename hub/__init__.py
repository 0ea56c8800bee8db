"""CareHub: the hub itself (core decisions, store, API, CLI)."""
