"""Who is calling: identities, tokens, and what each may see."""
from .identity import Identity
from .authenticator import Authenticator, extract_token

__all__ = ["Identity", "Authenticator", "extract_token"]
