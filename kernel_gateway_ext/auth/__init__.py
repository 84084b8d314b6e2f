"""Who is calling: identities, tokens, key pairs, and what each may see."""
from .authenticator import Authenticator, extract_token
from .identity import Identity

__all__ = ["Identity", "Authenticator", "extract_token"]
