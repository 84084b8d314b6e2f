"""The container layer: the only part of the gateway that speaks to the container engine."""
