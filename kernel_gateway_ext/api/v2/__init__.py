"""The Backend.AI kernel API v2 (backend.ai-client 1.1/1.4, sorna-client 0.9)."""
