"""`kernel-gateway-ext keys create|list|revoke`: manage key pairs."""
from __future__ import annotations

import json
import sys

from traitlets import Bool, Dict, Unicode
from traitlets.config import Application

from ..errors import GatewayError
from ..store import Store
from .keypairs import KeyPairs

USAGE = """kernel-gateway-ext keys create --user=NAME [--admin]   # prints the pair once
kernel-gateway-ext keys list
kernel-gateway-ext keys revoke ACCESS_KEY"""


class KeysApp(Application):
    """Manage key pairs (access key + secret key) in the gateway's store."""

    name = "kernel-gateway-ext keys"
    description = USAGE
    user = Unicode("", help="Owner name for `create`.").tag(config=True)
    admin = Bool(False, help="`create` an admin key pair (sees every owner's kernels).").tag(config=True)
    aliases = Dict({"user": "KeysApp.user", "state-dir": "Store.state_dir"})
    flags = Dict({"admin": ({"KeysApp": {"admin": True}}, "Create an admin key pair."),
                  "json": ({"KeysApp": {"as_json": True}}, "Print JSON.")})
    as_json = Bool(False, help="Print JSON.").tag(config=True)

    def start(self) -> None:
        if not self.extra_args:
            print(USAGE, file=sys.stderr)
            self.exit(2)
        store = Store(parent=self)
        keys = KeyPairs(parent=self, store=store)
        cmd, *rest = self.extra_args
        try:
            if cmd == "create":
                if not self.user:
                    raise SystemExit("keys create: --user=NAME is required")
                ak, sk = keys.create(self.user, self.admin)
                if self.as_json:
                    print(json.dumps({"access_key": ak, "secret_key": sk, "user": self.user, "admin": self.admin}))
                else:
                    print(f"access key: {ak}\nsecret key: {sk}\n"
                          f"(shown once; as a Jupyter/Bearer token use {ak}:<secret key>)")
            elif cmd == "list":
                rows = [kp.public() for kp in keys.list()]
                if self.as_json:
                    print(json.dumps(rows))
                for r in rows if not self.as_json else []:
                    state = "revoked" if r["revoked"] else "active"
                    print(f"{r['access_key']}  {r['user']:<20} {'admin' if r['admin'] else 'user ':5}  {state}")
            elif cmd == "revoke" and len(rest) == 1:
                keys.revoke(rest[0])
                print(f"revoked {rest[0]}")
            else:
                print(USAGE, file=sys.stderr)
                self.exit(2)
        except GatewayError as e:
            raise SystemExit(f"keys {cmd}: {e.message}") from None
        finally:
            store.close()
