"""Opening a SQLite file the way both of the project's stores want it.

Used by the rendezvous registry and the webpeer's history: autocommit mode
(the caller issues BEGIN/COMMIT, so a commit happens exactly where its
durability contract says), WAL with synchronous=NORMAL (a commit survives a
kill -9 of the process, not a power loss; that would need FULL), the schema
applied in one transaction, and the schema version checked.  A file of an
older version is brought up to date in the same transaction by the caller's
``migrations`` (version N -> the SQL that makes it N + 1), run before the
schema so that the schema's indexes may name the columns they add.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
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
    migrations: Mapping[int, str] | None = None,
) -> sqlite3.Connection:
    """Connect to ``path``, prepare it, and return the connection.  Every
    failure raises ``error`` naming ``what`` ("registry", "store") and the path.
    ``migrations``: version N -> the statements (``;``-separated) that turn a
    version N file into version N + 1."""
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT)
    except sqlite3.Error as exc:
        raise error(f"cannot open {what} {path}: {exc}") from exc
    try:
        _prepare(conn, path, schema, version, error, what, pragmas, migrations or {})
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
    migrations: Mapping[int, str],
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
        found = _version(conn)
        if found is not None and found != version:
            steps = range(found, version) if isinstance(found, int) and found < version else None
            if steps is None or any(step not in migrations for step in steps):
                raise error(f"{what} {path} has schema version {found!r}, this program understands {version}")
            # Older: upgrade step by step, all in this transaction (a failure
            # leaves the file as it was).
            for step in steps:
                _run(conn, migrations[step])
        _run(conn, schema)
        if found is None:
            conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (version,))
        elif found != version:
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (version,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _version(conn: sqlite3.Connection) -> object:
    """The file's schema version, or None for a new file."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone() is None:
        return None
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return None if row is None else row[0]


def _run(conn: sqlite3.Connection, statements: str) -> None:
    for statement in statements.split(";"):
        if statement.strip():
            conn.execute(statement)
