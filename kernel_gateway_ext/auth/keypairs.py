"""Key pairs: an access key (public) and a secret key (shown once).

The secret is never stored: it is HMAC(master key, access key + nonce), recomputed when a request
is checked. The database holds only the nonce, the master key lives in its own 0600 file (or the
KGE_MASTER_KEY env var), so a dump of the database reveals no secret.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traitlets import Instance, Unicode, default

from ..config import EnvConfigurable, env
from ..errors import BadRequest, NotFound
from ..store import Store
from .identity import ADMIN_USER, Identity

USER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


@dataclass(frozen=True)
class KeyPair:
    access_key: str
    user: str
    admin: bool
    created: float
    revoked: float | None

    def public(self) -> dict[str, Any]:
        return {"access_key": self.access_key, "user": self.user, "admin": self.admin,
                "created": self.created, "revoked": self.revoked}


class KeyPairs(EnvConfigurable):
    store = Instance(Store)
    master_key_file = env(
        Unicode(help="File holding the master key secrets are derived from (default: STATE_DIR/master.key)."),
        "KGE_MASTER_KEY_FILE",
    )

    master_key = env(
        Unicode(help="The master key itself, instead of master_key_file (a secret: set it in the environment of "
                     "the gateway's service, never on a command line; it is never logged)."),
        "KGE_MASTER_KEY",
    )

    @default("master_key_file")
    def _master_key_file_default(self) -> str:
        return os.path.join(self.store.state_dir, "master.key")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._master: bytes | None = None
        self._cache: dict[str, tuple[KeyPair, str]] = {}

    # ---- the master key -------------------------------------------------------------------------
    @property
    def master(self) -> bytes:
        if self._master is None:
            if self.master_key:
                self._master = self.master_key.encode()
            else:
                path = Path(self.master_key_file)
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "w") as f:
                        f.write(secrets.token_urlsafe(48))
                self._master = path.read_text().strip().encode()
        return self._master

    def derive(self, purpose: str, nonce: str) -> str:
        """A secret derived from the master key: a key pair's secret key (purpose: its access key),
        a kernel's connection key, a notebook server's token, the cookie key. Nothing derived is stored."""
        mac = hmac.new(self.master, f"{purpose}:{nonce}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    # ---- management (the CLI, and the page's admin view) ------------------------------------------
    async def add(self, user: str, admin: bool = False) -> tuple[str, str]:
        """A new key pair for `user`: (access key, secret key). The secret is shown this once."""
        if not USER_RE.match(user):
            raise BadRequest("user names are 1-64 letters, digits and _.@-")
        if user == ADMIN_USER:  # the gateway token's user: a key pair named so would own its kernels
            raise BadRequest(f"{ADMIN_USER!r} is the gateway token's user; name another (--admin makes an admin key pair)")
        access_key = "AKKGE" + secrets.token_hex(8).upper()
        nonce = secrets.token_hex(16)
        await self.store.execute('INSERT INTO keypairs (access_key, "user", is_admin, nonce, created) VALUES (?, ?, ?, ?, ?)',
                                 access_key, user, int(admin), nonce, time.time())
        return access_key, self.derive(access_key, nonce)

    async def all(self) -> list[KeyPair]:
        return [self._row(r) for r in await self.store.fetch("SELECT * FROM keypairs ORDER BY created")]

    async def withdraw(self, access_key: str) -> None:
        """Revoke a key pair: every request, cookie and session signed with it fails from now on."""
        changed = await self.store.execute(
            "UPDATE keypairs SET revoked = ? WHERE access_key = ? AND revoked IS NULL", time.time(), access_key)
        if changed == 0:
            raise NotFound(f"no active key pair {access_key}")

    def create(self, user: str, admin: bool = False) -> tuple[str, str]:
        return self.store.run_sync(lambda: self.add(user, admin))

    def list(self) -> list[KeyPair]:
        return self.store.run_sync(self.all)

    def revoke(self, access_key: str) -> None:
        self.store.run_sync(lambda: self.withdraw(access_key))

    @staticmethod
    def _row(r: dict[str, Any]) -> KeyPair:
        return KeyPair(r["access_key"], r["user"], bool(r["is_admin"]), r["created"], r["revoked"])

    # ---- lookups (server) -----------------------------------------------------------------------
    async def lookup(self, access_key: str) -> tuple[KeyPair, str] | None:
        """The active key pair and its secret, or None. Not cached: a revocation is immediate."""
        if not access_key or len(access_key) > 64:
            return None
        row = await self.store.fetchrow("SELECT * FROM keypairs WHERE access_key = ? AND revoked IS NULL", access_key)
        if row is None:
            return None
        return self._row(row), self.derive(row["access_key"], row["nonce"])

    async def identify_token(self, token: str) -> Identity | None:
        """A key pair used as a bearer token: "ACCESS_KEY:SECRET_KEY"."""
        access_key, sep, secret = token.partition(":")
        if not sep:
            return None
        found = await self.lookup(access_key)
        if found is None or not hmac.compare_digest(found[1].encode(), secret.encode()):
            return None
        kp = found[0]
        return Identity(kp.user, admin=kp.admin, access_key=kp.access_key)
