"""The SQLite registry backend: one file, nothing to install.

Durability model
----------------
The database runs in WAL mode with ``synchronous=NORMAL``.  A transaction is
committed when its frames are appended to the write-ahead log; with NORMAL the
log is not fsync'ed on every commit, only at checkpoints.  The written log
lives in the operating system's page cache, so a committed transaction
survives the *process* dying in any way (``kill -9``, a crash, an OOM kill):
the next open replays the log.  It does not necessarily survive the *machine*
losing power or the kernel crashing; that would need ``synchronous=FULL``
(one fsync per commit).  We accept that trade: on a power loss the server's
peers re-register anyway, and the worst case is that the last few seconds of
new ids are handed out again to different keys.

What must be durable is the binding identity -> id, because a peer learns its
id from the reply and tells its friends.  ``assign_id`` therefore returns only
after the row is committed.  To keep that cheap under a burst of new peers,
calls are grouped: the first caller of a loop iteration schedules one flush
with ``loop.call_soon``; every caller that arrives before the flush runs joins
it, and all of them are committed in a single transaction (group commit).
Known identities are answered by a plain ``SELECT`` with no write at all.

The mutable state written by ``save`` (nickname, addresses, times) is best
effort: it is committed in one transaction per call, with the same
process-crash guarantee.

Everything runs inline on the event loop thread: each statement touches a
handful of B-tree pages and takes tens of microseconds, which is cheaper than
handing work to a thread.  The exceptions are ``count`` (a few milliseconds
at a million rows), ``load_online`` (called once at start-up) and the bulk
``seed`` helper (benchmarks and imports).

Ids come from an ``AUTOINCREMENT`` primary key: they start at 1 and grow
monotonically; a row deleted by hand never gives its id back.  The one way
an id is reused is :meth:`SqliteRegistry.release_unseen`: the rows of keys
unseen (offline) since a given time are deleted and their ids filed in
``free_ids``, which new identities take, lowest first, before any new id.
``max_ids`` caps the rows: a new identity past it gets :class:`RegistryFull`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Container, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .registry import PeerRecord, RegistryError, RegistryFull
from .sqlite_file import open_database
from .sqlite_mailbox import SCHEMA as MAILBOX_SCHEMA
from .sqlite_mailbox import SqliteMailbox
from .stun import Address

SCHEMA_VERSION = 1
SECRET_SIZE = 32

_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS peers (
    peer_id      INTEGER PRIMARY KEY AUTOINCREMENT,
    identity     BLOB UNIQUE NOT NULL,
    nickname     TEXT NOT NULL DEFAULT '',
    observed     TEXT NOT NULL DEFAULT '["", 0]',
    local        TEXT NOT NULL DEFAULT '[]',
    first_seen   REAL NOT NULL DEFAULT 0,
    last_seen    REAL NOT NULL DEFAULT 0,
    expires_at   REAL NOT NULL DEFAULT 0,
    online_since REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS peers_expires_at ON peers (expires_at);
CREATE INDEX IF NOT EXISTS peers_last_seen ON peers (last_seen);
CREATE TABLE IF NOT EXISTS free_ids (
    peer_id INTEGER PRIMARY KEY
);
"""
    + MAILBOX_SCHEMA
)  # created in older files too: every open applies the schema

_COLUMNS = "peer_id, identity, nickname, observed, local, first_seen, last_seen, expires_at, online_since"

_UPDATE_STATE = """
UPDATE peers SET nickname = ?, observed = ?, local = ?, first_seen = ?,
                 last_seen = ?, expires_at = ?, online_since = ?
WHERE peer_id = ? AND identity = ?
"""

_INSERT_FULL = f"INSERT INTO peers ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"


def encode_address(address: Address) -> str:
    """``(host, port)`` as JSON: unlike ``"host:port"`` it survives IPv6."""
    host, port = address
    return json.dumps([host, port], separators=(",", ":"))


def decode_address(text: str) -> Address:
    """Inverse of :func:`encode_address`; raises :class:`RegistryError`."""
    return _address_from_json(_loads(text))


def encode_addresses(addresses: Iterable[Address]) -> str:
    """A sequence of addresses as one JSON array of ``[host, port]`` pairs."""
    return json.dumps([[host, port] for host, port in addresses], separators=(",", ":"))


def decode_addresses(text: str) -> tuple[Address, ...]:
    """Inverse of :func:`encode_addresses`; raises :class:`RegistryError`."""
    value = _loads(text)
    if not isinstance(value, list):
        raise RegistryError(f"stored address list is not a list: {text[:80]!r}")
    return tuple(_address_from_json(item) for item in value)


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"stored address is not JSON: {str(text)[:80]!r}") from exc


def _address_from_json(value: Any) -> Address:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not isinstance(value[0], str)
        or not isinstance(value[1], int)
        or isinstance(value[1], bool)
    ):
        raise RegistryError(f"stored address is not [host, port]: {value!r:.80}")
    return value[0], value[1]


def _state_row(record: PeerRecord) -> tuple[object, ...]:
    """The parameters of ``_UPDATE_STATE`` for one record."""
    return (
        record.nickname,
        encode_address(record.observed),
        encode_addresses(record.local),
        record.first_seen,
        record.last_seen,
        record.expires_at,
        record.online_since,
        record.peer_id,
        bytes(record.identity),
    )


def _full_row(record: PeerRecord) -> tuple[object, ...]:
    """The parameters of ``_INSERT_FULL`` for one record."""
    return (
        record.peer_id,
        bytes(record.identity),
        record.nickname,
        encode_address(record.observed),
        encode_addresses(record.local),
        record.first_seen,
        record.last_seen,
        record.expires_at,
        record.online_since,
    )


def _record(row: tuple[Any, ...]) -> PeerRecord:
    peer_id, identity, nickname, observed, local, first, last, expires, since = row
    return PeerRecord(
        peer_id=peer_id,
        identity=bytes(identity),
        nickname=nickname,
        observed=decode_address(observed),
        local=decode_addresses(local),
        first_seen=first,
        last_seen=last,
        expires_at=expires,
        online_since=since,
    )


class SqliteRegistry:
    """:class:`rendezvous.registry.Registry` on one SQLite file.

    Not safe to share between event loops; one instance per server process.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_ids: int | None = None) -> None:
        self._path = Path(path)
        self._max_ids = max_ids
        self._count: int | None = None  # rows, read at the first assignment that needs it
        # Ids handed out whose state has not been saved since: their rows may
        # still say "unseen for a year" (a key back after long), so
        # release_unseen must not take them.
        self._unsaved: set[int] = set()
        self._conn: sqlite3.Connection | None = None
        self._secret: bytes | None = None
        # identity -> futures of every caller waiting for it in the next flush.
        self._pending: dict[bytes, list[asyncio.Future[int]]] = {}
        self._flush_handle: asyncio.Handle | None = None
        self._transactions = 0

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    @property
    def transactions(self) -> int:
        """Write transactions committed by this instance (for tests and
        metrics: a burst of new identities should cost one, not one each)."""
        return self._transactions

    # -- lifecycle -------------------------------------------------------

    async def open(self) -> None:
        """Create or open the file, apply the schema, check its version."""
        if self._conn is not None:
            return
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RegistryError(f"cannot create directory for {self._path}: {exc}") from exc
        # 32 MiB of page cache keeps the identity index of ~1M peers hot.
        self._conn = open_database(
            self._path,
            schema=_SCHEMA,
            version=SCHEMA_VERSION,
            error=RegistryError,
            what="registry",
            pragmas=("PRAGMA cache_size=-32768",),
        )

    async def close(self) -> None:
        """Commit the ids still waiting for a flush, then close the file.
        Calling it again does nothing."""
        if self._conn is None:
            return
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush()
        conn, self._conn = self._conn, None
        self._secret = None
        try:
            conn.close()
        except sqlite3.Error as exc:
            raise RegistryError(f"cannot close registry {self._path}: {exc}") from exc

    async def __aenter__(self) -> SqliteRegistry:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- ids -------------------------------------------------------------

    async def assign_id(self, identity: bytes) -> int:
        """The id bound to ``identity``, binding the next one if it has none.
        Returns only once the binding is committed."""
        identity = bytes(identity)
        existing = await self.lookup_id(identity)
        if existing is not None:
            self._handed_out(existing)
            return existing
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        # Several callers may wait on one identity: each gets its own future,
        # so that cancelling one caller does not cancel the others.
        self._pending.setdefault(identity, []).append(future)
        if self._flush_handle is None:
            self._flush_handle = loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        """Insert every pending identity in one transaction, then wake the
        callers.  Runs as a loop callback, so it must not raise."""
        self._flush_handle = None
        pending, self._pending = self._pending, {}
        if not pending:
            return
        results: dict[bytes, int | None] = {}  # None: refused, the registry is full
        error: RegistryError | None = None
        try:
            with self._transaction() as conn:
                count = self._rows(conn)
                for identity in pending:
                    row = conn.execute("SELECT peer_id FROM peers WHERE identity = ?", (identity,)).fetchone()
                    if row is not None:
                        results[identity] = row[0]
                    elif self._max_ids is not None and count >= self._max_ids:
                        results[identity] = None
                    else:
                        results[identity] = self._insert(conn, identity)
                        count += 1
            self._count = count
        except RegistryError as exc:
            error = exc
            self._count = None  # rolled back: read again
        for identity, futures in pending.items():
            for future in futures:
                if future.done():  # the caller was cancelled
                    continue
                if error is not None:
                    future.set_exception(error)
                elif (peer_id := results[identity]) is None:
                    future.set_exception(RegistryFull(f"the registry holds its maximum of {self._max_ids} ids"))
                else:
                    self._handed_out(peer_id)
                    future.set_result(peer_id)

    def _handed_out(self, peer_id: int) -> None:
        if len(self._unsaved) >= 100_000:
            self._unsaved.clear()  # registrations that never completed: only the release's guard forgets them
        self._unsaved.add(peer_id)

    def _rows(self, conn: sqlite3.Connection) -> int:
        if self._count is None:
            self._count = int(conn.execute("SELECT count(*) FROM peers").fetchone()[0])
        return self._count

    @staticmethod
    def _insert(conn: sqlite3.Connection, identity: bytes) -> int:
        """Bind ``identity`` to the lowest released id, else to the next new one."""
        free = conn.execute(
            "DELETE FROM free_ids WHERE peer_id = (SELECT min(peer_id) FROM free_ids) RETURNING peer_id"
        )
        row = free.fetchone()
        if row is not None:
            conn.execute("INSERT INTO peers (peer_id, identity) VALUES (?, ?)", (row[0], identity))
            return int(row[0])
        cursor = conn.execute("INSERT INTO peers (identity) VALUES (?)", (identity,))
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    async def release_unseen(self, before: float, limit: int = 1000, *, keep: Container[int] = ()) -> list[int]:
        """Delete up to ``limit`` rows of keys last seen before ``before`` and
        offline since, and file their ids for reuse; returns those ids.
        Rows never saved (last seen 0: an assignment whose registration
        has not been written yet) and ids in ``keep`` (online) are left alone."""
        with self._transaction() as conn:
            candidates = conn.execute(
                "SELECT peer_id FROM peers WHERE last_seen > 0 AND last_seen < ? AND expires_at < ?"
                " ORDER BY last_seen LIMIT ?",
                (before, before, 2 * limit + len(self._unsaved)),
            ).fetchall()
            released = sorted(i for (i,) in candidates if i not in self._unsaved and i not in keep)[:limit]
            conn.executemany("DELETE FROM peers WHERE peer_id = ?", ((i,) for i in released))
            conn.executemany("INSERT OR IGNORE INTO free_ids (peer_id) VALUES (?)", ((i,) for i in released))
        if self._count is not None:
            self._count -= len(released)
        return released

    async def lookup_id(self, identity: bytes) -> int | None:
        """The id bound to ``identity``, or None.  Never writes."""
        with self._errors() as conn:
            row = conn.execute("SELECT peer_id FROM peers WHERE identity = ?", (bytes(identity),)).fetchone()
        return None if row is None else int(row[0])

    # -- state -----------------------------------------------------------

    async def save(self, records: Iterable[PeerRecord]) -> None:
        """Record the latest state of peers whose id is already bound to
        their identity; records for unknown ids are ignored."""
        rows = [_state_row(record) for record in records]
        if not rows:
            return
        with self._transaction() as conn:
            conn.executemany(_UPDATE_STATE, rows)
        self._unsaved.difference_update(row[-2] for row in rows)

    async def load_online(self, now: float, after_id: int = 0, limit: int | None = None) -> list[PeerRecord]:
        """Records whose ``expires_at`` is after ``now``, by id; with ``limit``,
        one page of them starting after ``after_id`` (so a million online
        peers can be loaded without holding every row twice)."""
        with self._errors() as conn:
            if limit is None:
                # No ORDER BY: with it the planner prefers walking the whole
                # table in rowid order over the expires_at index.
                rows = conn.execute(f"SELECT {_COLUMNS} FROM peers WHERE expires_at > ?", (now,)).fetchall()
                rows.sort(key=lambda row: row[0])
            else:
                # Walks the primary key from ``after_id``: one pass over the table in all.
                rows = conn.execute(
                    f"SELECT {_COLUMNS} FROM peers WHERE peer_id > ? AND expires_at > ? ORDER BY peer_id LIMIT ?",
                    (after_id, now, limit),
                ).fetchall()
        return [_record(row) for row in rows]

    async def get(self, peer_id: int) -> PeerRecord | None:
        """The record of ``peer_id``, or None if the id was never assigned."""
        with self._errors() as conn:
            row = conn.execute(f"SELECT {_COLUMNS} FROM peers WHERE peer_id = ?", (peer_id,)).fetchone()
        return None if row is None else _record(row)

    async def count(self) -> int:
        """How many identities have an id."""
        with self._errors() as conn:
            (value,) = conn.execute("SELECT count(*) FROM peers").fetchone()
        return int(value)

    async def highest_id(self) -> int:
        """The highest id ever assigned (0 before the first).  AUTOINCREMENT
        keeps it in sqlite_sequence, which outlives deleted rows; max(peer_id)
        covers a table made without it (or before any row)."""
        with self._errors() as conn:
            (value,) = conn.execute(
                "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'peers'), 0),"
                " coalesce((SELECT max(peer_id) FROM peers), 0))"
            ).fetchone()
        return int(value)

    async def secret(self) -> bytes:
        """The server's 32-byte secret, created on first use and kept."""
        if self._secret is None:
            with self._transaction() as conn:
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('secret', ?) ON CONFLICT (key) DO NOTHING",
                    (os.urandom(SECRET_SIZE),),
                )
                (value,) = conn.execute("SELECT value FROM meta WHERE key = 'secret'").fetchone()
            if not isinstance(value, bytes) or len(value) != SECRET_SIZE:
                raise RegistryError(f"stored secret in {self._path} is not {SECRET_SIZE} bytes")
            self._secret = value
        return self._secret

    # -- bulk ------------------------------------------------------------

    async def seed(self, records: Iterable[PeerRecord]) -> int:
        """Insert complete records with their own ids in one transaction and
        return how many were inserted.

        For benchmarks and imports: it blocks the loop for as long as it runs
        (a few seconds per million rows).  Ids already in use or identities
        already bound raise :class:`RegistryError` and nothing is inserted.
        Later ``assign_id`` calls continue after the largest seeded id.
        """
        with self._transaction() as conn:
            before = conn.total_changes
            conn.executemany(_INSERT_FULL, (_full_row(record) for record in records))
            return conn.total_changes - before

    def mailbox(self) -> SqliteMailbox:
        """The offline mailbox, in this file (docs/PROTOCOL.md 5.11)."""
        return SqliteMailbox(self._errors, self._transaction)

    # -- helpers ---------------------------------------------------------

    @contextmanager
    def _errors(self) -> Iterator[sqlite3.Connection]:
        """The open connection; sqlite errors become RegistryError."""
        if self._conn is None:
            raise RegistryError(f"registry {self._path} is not open")
        try:
            yield self._conn
        except sqlite3.Error as exc:
            raise RegistryError(f"registry {self._path}: {exc}") from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed on success, rolled back on error."""
        with self._errors() as conn:
            # IMMEDIATE takes the write lock now, so a second process holding
            # it fails here instead of half-way through.
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            self._transactions += 1
