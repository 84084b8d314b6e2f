"""The Skaha session API (skaha 1.7 at /skaha/v0, canfar 1.5 at /skaha/v1)."""
