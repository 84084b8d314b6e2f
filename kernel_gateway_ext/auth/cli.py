"""`kernel-gateway-ext keys create|list|revoke`: manage key pairs."""
from __future__ import annotations

import json
import sys

from traitlets import Bool, Dict, List, Unicode

from ..application import GatewayApplication, common_aliases, common_flags
from ..errors import GatewayError
from ..store import Store
from .keypairs import KeyPairs

USAGE = """kernel-gateway-ext keys create --user=NAME [--admin]   # prints the pair once
kernel-gateway-ext keys list
kernel-gateway-ext keys revoke ACCESS_KEY"""

DESCRIPTION = """Manage key pairs (access key + secret key) in the gateway's store: the credentials of
Backend.AI clients (HMAC signatures), and of Jupyter and Skaha callers as the token ACCESS_KEY:SECRET_KEY.
The secret is derived from the master key and shown once, at creation. The gateway need not be stopped:
it reads key pairs from the store, and a revoked pair is refused at once.

It uses the gateway's configuration (its config file, KGE_* env vars, --state-dir), so it works on the
same store as the running gateway."""


class KeysApp(GatewayApplication):
    """Manage key pairs."""

    name = "kernel-gateway-ext keys"
    description = DESCRIPTION
    examples = USAGE + """

kernel-gateway-ext keys create --user=alice
kernel-gateway-ext keys create --user=ops --admin --json
kernel-gateway-ext keys --config=/etc/kge/kernel_gateway_ext_config.py list
kernel-gateway-ext keys revoke AKKGE0123456789ABCDEF"""
    user = Unicode("", help="Owner name for `create`.").tag(config=True)
    admin = Bool(False, help="`create` an admin key pair (sees every owner's kernels).").tag(config=True)
    aliases = Dict({**common_aliases, "user": "KeysApp.user", "state-dir": "Store.state_dir"})
    flags = Dict({**common_flags,
                  "admin": ({"KeysApp": {"admin": True}}, "Create an admin key pair."),
                  "json": ({"KeysApp": {"as_json": True}}, "Print JSON.")})
    as_json = Bool(False, help="Print JSON.").tag(config=True)
    classes = List([Store, KeyPairs])  # type: ignore[assignment]

    def start(self) -> None:
        if self.generate_config:
            self.write_default_config()
            return
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
