"""The store's schema, as numbered migrations applied in order, once, by whichever gateway gets
there first (under the database's own lock, so replicas starting together apply each once).

Written in the SQL both SQLite and PostgreSQL read: DOUBLE PRECISION for times (PostgreSQL's REAL
is 4 bytes), "user" quoted (a reserved word in PostgreSQL). Never edit a released migration: add one.
"""
from __future__ import annotations

import re

MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "key pairs, records, folders", """
CREATE TABLE IF NOT EXISTS keypairs (
    access_key TEXT PRIMARY KEY,
    "user" TEXT NOT NULL,
    is_admin INTEGER NOT NULL DEFAULT 0,
    nonce TEXT NOT NULL,           -- the secret is derived from the master key and this; never stored
    created DOUBLE PRECISION NOT NULL,
    revoked DOUBLE PRECISION
);
-- What must outlive the gateway process: kernels, Jupyter sessions and Skaha sessions, each
-- under the gateway id whose containers carry it (gateways may share one state folder).
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL,             -- 'kernel', 'jupyter-session', 'skaha-session'
    id TEXT NOT NULL,
    gateway TEXT NOT NULL,
    owner TEXT NOT NULL,
    data TEXT NOT NULL,             -- the record as JSON (never a secret)
    PRIMARY KEY (kind, id)
);
CREATE TABLE IF NOT EXISTS folders (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    UNIQUE (owner, name)
);
"""),
    (2, "replicas: each record's home replica, and leases", """
ALTER TABLE records ADD COLUMN home TEXT NOT NULL DEFAULT '';
ALTER TABLE records ADD COLUMN token TEXT NOT NULL DEFAULT '';   -- a v2 kernel's client token
CREATE INDEX IF NOT EXISTS records_home ON records (gateway, home);
CREATE INDEX IF NOT EXISTS records_token ON records (kind, token);
-- A lease is held by one replica until it expires; holders renew theirs. 'replica:<id>' says a
-- replica lives; 'duty:<name>' who does a cluster-wide duty; the takeover of a dead replica's
-- kernels is the lease 'replica:<dead id>' taken by a survivor.
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    url TEXT NOT NULL DEFAULT '',   -- where the holder serves (other replicas forward to it)
    expires DOUBLE PRECISION NOT NULL
);
"""),
    (3, "claims: which replica makes the kernel of a v2 client token", """
-- Two replicas given the same owner's token at once: the first insert wins, the other forwards.
CREATE TABLE IF NOT EXISTS claims (
    gateway TEXT NOT NULL,
    owner TEXT NOT NULL,
    token TEXT NOT NULL,
    home TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (gateway, owner, token)
);
"""),
    (4, "loads: what each replica has promised, for capacity across replicas", """
-- Each replica's own rows, rewritten from what it runs: kernels per owner, and (owner '') its
-- kernel total and the memory it promised (kernels, pools, Skaha sessions).
CREATE TABLE IF NOT EXISTS loads (
    gateway TEXT NOT NULL,
    home TEXT NOT NULL,
    owner TEXT NOT NULL,
    kernels INTEGER NOT NULL,
    memory BIGINT NOT NULL,
    PRIMARY KEY (gateway, home, owner)
);
"""),
]


def statements(sql: str) -> list[str]:
    """A migration's statements: comments dropped (they may hold ';'), split at ';'."""
    return [s.strip() for s in re.sub(r"--[^\n]*", "", sql).split(";") if s.strip()]
