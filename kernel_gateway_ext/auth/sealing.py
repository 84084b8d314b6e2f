"""Values the store must keep but a dump of it must not reveal (a Skaha job's env often holds
tokens): AES-GCM with a key derived from the master key, which lives outside the database."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class Sealer:
    """seal(obj) -> text; open(text) -> obj. Bound to `purpose`: a sealed value of one purpose
    does not open as another."""

    def __init__(self, master: bytes, purpose: str) -> None:
        self._aad = purpose.encode()
        self._aead = AESGCM(hmac.new(master, b"kge-seal:" + self._aad, hashlib.sha256).digest())

    def seal(self, obj: Any) -> str:
        nonce = os.urandom(12)
        return base64.b64encode(nonce + self._aead.encrypt(nonce, json.dumps(obj).encode(), self._aad)).decode()

    def open(self, text: str) -> Any:
        raw = base64.b64decode(text)
        try:
            return json.loads(self._aead.decrypt(raw[:12], raw[12:], self._aad))
        except InvalidTag as e:
            raise ValueError("sealed with another master key, or altered") from e
