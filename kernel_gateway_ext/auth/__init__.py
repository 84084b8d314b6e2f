"""Who is calling (identities, tokens, key pairs) and what each may see (the authorizer)."""
from .authenticator import Authenticator, extract_token
from .authorizer import Authorizer
from .identity import Identity

__all__ = ["Identity", "Authenticator", "Authorizer", "extract_token"]
