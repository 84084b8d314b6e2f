"""The web page for the gateway's users: sign in, see and act on what is mine, the operator's view."""
