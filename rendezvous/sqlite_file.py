"""Opening a SQLite file the way both of the project's stores want it.

Used by the rendezvous registry and the webpeer's history: autocommit mode
(the caller issues BEGIN/COMMIT, so a commit happens exactly where its
durability contract says), WAL with synchronous=NORMAL (a commit survives a
kill -9 of the process, not a power loss; that would need FULL), the schema
applied in one transaction, and the schema version checked.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

# A statement waits this long for a lock held by another process (a backup,
# an operator's sqlite3 shell) before it fails; the wait blocks the loop.
BUSY_TIMEOUT = 0.05


def open_database(
    path: Path,
    *,
    schema: str,
    version: int,
    error: type[Exception],
    what: str,
    pragmas: tuple[str, ...] = (),
) -> sqlite3.Connection:
    """Connect to ``path``, prepare it, and return the connection.  Every
    failure raises ``error`` naming ``what`` ("registry", "store") and the path."""
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT)
    except sqlite3.Error as exc:
        raise error(f"cannot open {what} {path}: {exc}") from exc
    try:
        _prepare(conn, path, schema, version, error, what, pragmas)
    except sqlite3.Error as exc:
        conn.close()
        raise error(f"cannot use {what} {path}: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _prepare(
    conn: sqlite3.Connection,
    path: Path,
    schema: str,
    version: int,
    error: type[Exception],
    what: str,
    pragmas: tuple[str, ...],
) -> None:
    # The first statement reads the header: a file that is not a
    # database fails here with "file is not a database".
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise error(f"cannot use WAL mode on {path} (got {mode!r})")
    conn.execute("PRAGMA synchronous=NORMAL")
    for pragma in pragmas:
        conn.execute(pragma)
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in schema.split(";"):
            if statement.strip():
                conn.execute(statement)
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (version,))
        elif row[0] != version:
            raise error(f"{what} {path} has schema version {row[0]!r}, this program understands {version}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
