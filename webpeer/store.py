"""The peer's local history: messages and the keys of peers it has met.

One SQLite file in the peer's data dir.  Everything runs inline on the event
loop thread with plain synchronous methods: each call touches a handful of
B-tree pages (tens of microseconds), which is cheaper than handing it to a
thread.  The file is created with mode 0600 before SQLite opens it; SQLite
gives its ``-wal`` and ``-shm`` files the same mode.

Durability: WAL with ``synchronous=NORMAL``.  A committed write survives the
process dying in any way (the log is in the OS page cache and is replayed on
the next open), not necessarily a power loss.  Each write method commits on
its own; :meth:`Store.batch` groups several into one commit, which is what a
busy peer wants (store a burst of incoming messages, commit once, then send
the receipts).

Message lifecycle (see ``TRANSITIONS``)::

    outgoing:  queued <-> sending -> sent -> delivered
                  \\          \\        \\        ^
                   +----------+--------+-> failed -> (retry) queued | sending
               queued | sending | sent | failed -> held -> queued | sending | failed
    incoming:  received

``delivered`` and ``received`` are final.  A receipt proves delivery, so
``delivered`` is accepted from every other outgoing state; nothing moves a
message backwards from ``sent`` (a late "sent" after "delivered" is refused,
and so is "sending" after "sent").  ``held``: the peer's key changed and the
user has not accepted the new key (webpeer/trust.py); nothing goes out until
they do (then queued | sending), and if they block the key it fails.  A held
message carries the reason in ``error`` too.

Messages received from a key whose change the user has not accepted yet are
stored with ``key_change`` = :data:`KEY_CHANGE_HIDDEN`: no read of the
conversation, the unread counts or the read marks sees them until the change
is accepted (they become :data:`KEY_CHANGE_SHOWN`, and the API marks them
``"key_changed": true``); they are deleted if the key is blocked or the
trusted key comes back instead.

Trust on first use: the first key seen for a peer id is trusted.  A different
key later is stored as the current key with ``key_changed`` set and the last
trusted key kept in ``previous_key``, until the user accepts the change or the
trusted key comes back.  Keys the user blocked are kept per peer id
(``blocked_keys``); ``verified_key`` is the key whose safety number the user
compared and marked verified.

Schema versions: 1 had no held status, no ``key_change``, no
``verified_key`` and no ``blocked_keys``; :data:`_MIGRATIONS` upgrades a
version 1 file when it is opened.
"""

from __future__ import annotations

import enum
import json
import os
import sqlite3
import time as _time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from rendezvous.sqlite_file import open_database

SCHEMA_VERSION = 2
# The error stored on queued messages that outlived the retention limit.
EXPIRED_ERROR = "peer stayed offline"


class StoreError(Exception):
    """The store cannot do what was asked: the file is not a usable database
    (not SQLite, a newer schema, read-only, disk error), the store is closed,
    or an argument is invalid (unknown status, text that is not Unicode)."""


class Status(enum.StrEnum):
    """A message's delivery status; the string value is what the API shows."""

    QUEUED = "queued"  # waiting for the peer to come online
    SENDING = "sending"  # handed to a connection, not yet acknowledged
    SENT = "sent"  # the peer's QUIC stack acknowledged it
    STORED = "stored"  # sealed in the peer's mailbox at the server (it was offline); still sent when it is back
    DELIVERED = "delivered"  # the peer stored it and sent a receipt
    FAILED = "failed"  # gave up; the user can retry
    HELD = "held"  # the peer's key changed: waits for the user to accept (or block) the new key
    RECEIVED = "received"  # an incoming message


# status -> the statuses it may move to.  Anything else is refused.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.QUEUED: frozenset({Status.SENDING, Status.STORED, Status.DELIVERED, Status.FAILED, Status.HELD}),
    Status.SENDING: frozenset(
        {Status.QUEUED, Status.SENT, Status.STORED, Status.DELIVERED, Status.FAILED, Status.HELD}
    ),
    # In the mailbox: delivered on the receiver's ack (it fetched it, or got
    # it again directly); held like a sent one if the key changes meanwhile.
    Status.STORED: frozenset({Status.DELIVERED, Status.FAILED, Status.HELD}),
    # A sent message without a receipt would go again on the next link, which
    # may be to the new key: it is held like the others.
    # Stored: its link died with the peer before the receipt, and the peer went offline.
    Status.SENT: frozenset({Status.STORED, Status.DELIVERED, Status.FAILED, Status.HELD}),
    Status.FAILED: frozenset({Status.QUEUED, Status.SENDING, Status.DELIVERED, Status.HELD}),
    # Released on acceptance; failed when the key is blocked; a receipt (from
    # the old key, for a send before the change) still proves delivery.
    Status.HELD: frozenset({Status.QUEUED, Status.SENDING, Status.FAILED, Status.DELIVERED}),
    Status.DELIVERED: frozenset(),
    Status.RECEIVED: frozenset(),
}

# The same table read backwards, for a single conditional UPDATE.
_SOURCES: dict[Status, tuple[str, ...]] = {
    target: tuple(sorted(s.value for s, targets in TRANSITIONS.items() if target in targets)) for target in Status
}

# One UPDATE per target status, built once (set_status runs per message).
_SET_STATUS = {
    target: "UPDATE messages SET status = ?, error = ?, updated = ?"
    f" WHERE id = ? AND status IN ({', '.join('?' * len(sources))})"
    for target, sources in _SOURCES.items()
    if sources
}
_MARK_DELIVERED = (
    "UPDATE messages SET status = 'delivered', error = NULL, updated = ?"
    " WHERE id IN (SELECT value FROM json_each(?))"
    f" AND status IN ({', '.join(repr(source) for source in _SOURCES[Status.DELIVERED])})"
    " AND recipient = ? RETURNING id"
)

# Statuses an outgoing message may be created with (``sent``: handed to a
# live connection in the same transaction that stores it; ``held``: the
# peer's key change is pending, see webpeer/trust.py).
_NEW_OUTGOING = frozenset({Status.QUEUED, Status.SENDING, Status.SENT, Status.HELD})


@dataclass(slots=True)
class FileRecord:
    """A file offered to or by a peer (webpeer/file_transfer.py).  ``path``:
    the file's name inside the data dir's files/ ("" until the receiver
    accepts); ``done``: bytes the receiver holds (sender: bytes sent)."""

    id: str
    peer: int
    outgoing: bool
    name: str
    path: str
    size: int
    sha256: str
    mime: str
    status: str
    done: int
    error: str | None
    time: float

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "peer": self.peer,
            "direction": "out" if self.outgoing else "in",
            "name": self.name,
            "size": self.size,
            "sha256": self.sha256,
            "mime": self.mime,
            "status": self.status,
            "bytes": self.done,
            "error": self.error,
            "time": self.time,
        }


_FILE_COLUMNS = "id, peer, outgoing, name, path, size, sha256, mime, status, done, error, time"


def _file(row: tuple[Any, ...]) -> FileRecord:
    file_id, peer, outgoing, name, path, size, sha256, mime, status, done, error, time = row
    return FileRecord(file_id, peer, bool(outgoing), name, path, size, sha256, mime, status, done, error, time)


class TrustResult(enum.Enum):
    """What :meth:`Store.remember_peer` learned about a peer's key."""

    NEW = "new"  # first time this id was seen; its key is now trusted
    SAME = "same"  # the key is the one stored (a pending change stays pending)
    CHANGED = "changed"  # a key different from the stored one: warn the user
    RESTORED = "restored"  # the trusted key came back; the warning is cleared


# messages.key_change: how an incoming message relates to a key change.
KEY_CHANGE_NONE = 0
KEY_CHANGE_HIDDEN = 1  # from a key not accepted (yet): not shown, not counted
KEY_CHANGE_SHOWN = 2  # from a key the user accepted after it came: shown under a "key changed" line


@dataclass(frozen=True, slots=True)
class KnownPeer:
    """What the store remembers about a peer id."""

    peer_id: int
    public_key: bytes  # the key last seen for this id
    name: str
    first_seen: float
    last_seen: float
    key_changed: bool  # public_key is not the trusted key: the user was not asked yet
    previous_key: bytes | None  # while key_changed: the trusted key; after, history
    verified_key: bytes | None = None  # the key the user marked verified (safety number compared)
    blocked: bool = False  # public_key is one the user blocked for this peer

    @property
    def trusted_key(self) -> bytes | None:
        """The key the user trusts for this peer (None: a change is pending and no key was trusted)."""
        return self.previous_key if self.key_changed else self.public_key


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id        TEXT PRIMARY KEY,
    peer      INTEGER NOT NULL,
    sender    INTEGER NOT NULL,
    recipient INTEGER NOT NULL,
    text      TEXT NOT NULL,
    status    TEXT NOT NULL,
    time      REAL NOT NULL,
    updated   REAL NOT NULL,
    error     TEXT,
    outgoing  INTEGER NOT NULL,
    read      INTEGER NOT NULL,
    key_change INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_peer_time ON messages (peer, time);
CREATE INDEX IF NOT EXISTS messages_pending ON messages (peer, time)
    WHERE status IN ('queued', 'sending');
CREATE INDEX IF NOT EXISTS messages_unread ON messages (peer)
    WHERE outgoing = 0 AND read = 0;
CREATE TABLE IF NOT EXISTS peers (
    peer_id      INTEGER PRIMARY KEY,
    public_key   BLOB NOT NULL,
    name         TEXT NOT NULL,
    first_seen   REAL NOT NULL,
    last_seen    REAL NOT NULL,
    key_changed  INTEGER NOT NULL DEFAULT 0,
    previous_key BLOB,
    verified_key BLOB
);
CREATE TABLE IF NOT EXISTS blocked_keys (
    peer_id    INTEGER NOT NULL,
    public_key BLOB NOT NULL,
    blocked_at REAL NOT NULL,
    PRIMARY KEY (peer_id, public_key)
);
CREATE TABLE IF NOT EXISTS files (
    id       TEXT PRIMARY KEY,
    peer     INTEGER NOT NULL,
    outgoing INTEGER NOT NULL,
    name     TEXT NOT NULL,
    path     TEXT NOT NULL,
    size     INTEGER NOT NULL,
    sha256   TEXT NOT NULL,
    mime     TEXT NOT NULL,
    status   TEXT NOT NULL,
    done     INTEGER NOT NULL,
    error    TEXT,
    time     REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS files_peer_time ON files (peer, time);
CREATE TABLE IF NOT EXISTS nicknames (
    peer_id  INTEGER PRIMARY KEY,
    nickname TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS read_marks (
    peer       INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL,
    time       REAL NOT NULL,
    seq        INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
)
"""

# Groups (webpeer/groups.py): each op and each delivered message as the JSON
# its author signed, in the order this member accepted them (the rowid), so
# the group log rebuilds by replaying them.  Additive: no version change.
_GROUP_SCHEMA = """
CREATE TABLE IF NOT EXISTS group_ops (
    op_id    TEXT PRIMARY KEY,
    group_id TEXT NOT NULL,
    body     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS group_ops_group ON group_ops (group_id);
CREATE TABLE IF NOT EXISTS group_messages (
    group_id TEXT NOT NULL,
    sender   INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    body     TEXT NOT NULL,
    UNIQUE (group_id, sender, seq)
);
CREATE INDEX IF NOT EXISTS group_messages_group ON group_messages (group_id)
"""
# Files (webpeer/file_transfer.py): per peer, the size up to which its offers
# are accepted without asking the user (no row: every offer waits for the
# user).  Additive: no version change.
_FILE_SCHEMA = """
CREATE TABLE IF NOT EXISTS auto_accept (
    peer_id   INTEGER PRIMARY KEY,
    max_bytes INTEGER NOT NULL
)
"""
# The tables after blocked_keys are new in files of version 2 and need no
# migration: _SCHEMA (CREATE ... IF NOT EXISTS) runs at every open.
#   nicknames:  the user's own names for peers, shown instead of theirs.
#   read_marks: per peer, the latest of our messages it said it has read
#               (its "read" frame, docs/PROTOCOL.md); every earlier one is read too.
#               (time, seq) is the message's place in the conversation's order
#               (seq: its rowid), so a mark never moves back.
#   settings:   the page's settings (SETTINGS holds the names and defaults).

# setting name -> default value (JSON text).
SETTINGS: dict[str, str] = {"read_receipts": "true"}

# version -> what turns a file of that version into the next one (run before
# _SCHEMA, which then adds the new tables and indexes).
_MIGRATIONS = {
    1: """
ALTER TABLE messages ADD COLUMN key_change INTEGER NOT NULL DEFAULT 0;
ALTER TABLE peers ADD COLUMN verified_key BLOB
""",
}

_MESSAGE_COLUMNS = "id, peer, sender, recipient, text, status, time, error, key_change"
_PEER_COLUMNS = (
    "peer_id, public_key, name, first_seen, last_seen, key_changed, previous_key, verified_key,"
    " EXISTS (SELECT 1 FROM blocked_keys b WHERE b.peer_id = peers.peer_id AND b.public_key = peers.public_key)"
)
# Incoming messages from a key not accepted (yet) are left out of every read.
_VISIBLE = f"key_change != {KEY_CHANGE_HIDDEN}"
# The partial indexes are used only when the query repeats their WHERE terms.
_PENDING = "status IN ('queued', 'sending')"


def _message(row: tuple[Any, ...]) -> dict[str, Any]:
    """A row as the API's message object."""
    message_id, peer, sender, recipient, text, status, time, error, key_change = row
    return {
        "id": message_id,
        "peer": peer,
        "from": sender,
        "to": recipient,
        "text": text,
        "status": status,
        "time": time,
        "error": error,
        "key_changed": key_change != KEY_CHANGE_NONE,
    }


class NewMessage(NamedTuple):
    """A message to store (see :meth:`Store.add_message`).  A tuple: made
    per message on busy paths, where a frozen dataclass costs several times
    more to build."""

    message_id: str
    sender: int
    recipient: int
    text: str
    status: Status | str
    time: float
    key_change: int = KEY_CHANGE_NONE  # incoming only: KEY_CHANGE_HIDDEN from a key not accepted yet
    error: str | None = None  # only with held or failed (a new message held for a key change)


_INSERT = (
    "INSERT INTO messages (id, peer, sender, recipient, text, status, time, updated, error, outgoing, read, key_change)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"
)


# The INSERT's values: id, peer, sender, recipient, text, status, time, updated, error, outgoing, read, key_change.
_MessageRow = tuple[str, int, int, int, str, str, float, float, str | None, int, int, int]


def _message_row(message: NewMessage) -> _MessageRow:
    """The INSERT values for a new message, checked (StoreError if bad)."""
    _check_id(message.message_id)
    _check_text(message.text)
    state = _status(message.status)
    if state is Status.RECEIVED:
        peer, outgoing = message.sender, False
    elif state in _NEW_OUTGOING:
        peer, outgoing = message.recipient, True
    else:
        raise StoreError(f"a new message cannot start as {state.value!r}")
    if message.key_change not in (KEY_CHANGE_NONE, KEY_CHANGE_HIDDEN) or (message.key_change and outgoing):
        raise StoreError(f"a new message cannot have key_change {message.key_change!r:.20} with status {state.value!r}")
    if message.error is not None:
        if state is not Status.HELD:
            raise StoreError(f"a new message has an error only when held, not {state.value!r}")
        _check_text(message.error)
    # Our own messages are never unread.
    return (
        message.message_id,
        peer,
        message.sender,
        message.recipient,
        message.text,
        state.value,
        message.time,
        message.time,
        message.error,
        int(outgoing),
        int(outgoing),
        message.key_change,
    )


def _prefixed(table: str, columns: str) -> str:
    return ", ".join(f"{table}.{column.strip()}" for column in columns.split(","))


def _like_escape(word: str) -> str:
    return word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _open_fts(conn: sqlite3.Connection) -> bool:
    """Make the full-text index if this SQLite has FTS5; False if it has not."""
    try:
        conn.execute(
            "CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING fts5("
            "text, message_id UNINDEXED, tokenize = 'unicode61 remove_diacritics 2')"
        )
    except sqlite3.OperationalError as error:
        if "fts5" not in str(error):
            raise
        return False
    return True


def _known_peer(row: tuple[Any, ...]) -> KnownPeer:
    peer_id, public_key, name, first_seen, last_seen, key_changed, previous_key, verified_key, blocked = row
    return KnownPeer(
        peer_id=peer_id,
        public_key=bytes(public_key),
        name=name,
        first_seen=first_seen,
        last_seen=last_seen,
        key_changed=bool(key_changed),
        previous_key=None if previous_key is None else bytes(previous_key),
        verified_key=None if verified_key is None else bytes(verified_key),
        blocked=bool(blocked),
    )


def _status(value: Status | str) -> Status:
    try:
        return Status(value)
    except ValueError:
        raise StoreError(f"unknown message status {value!r:.40}") from None


def _check_text(text: str) -> None:
    # A lone surrogate (JSON allows "\ud800") cannot be encoded as UTF-8 and
    # would make sqlite3 raise UnicodeEncodeError, not an sqlite3.Error.
    if not isinstance(text, str):
        raise StoreError(f"message text must be str, not {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise StoreError(f"message text is not valid Unicode: {exc.reason}") from None


def _check_id(message_id: str) -> None:
    if not isinstance(message_id, str) or not message_id:
        raise StoreError(f"message id must be a non-empty str, not {message_id!r:.40}")
    _check_text(message_id)


def _create_private(path: Path) -> None:
    """Create ``path`` with mode 0600 unless it exists; never loosen or
    truncate an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


class Store:
    """Message history and known peers in one SQLite file.

    Synchronous, for use on the event loop thread only; one instance per
    peer process.  Every method raises :class:`StoreError` and nothing else.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._batch_depth = 0
        self._fts: bool | None = None  # FTS5 search index usable (None: not tried yet; see search)

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    @property
    def rows_written(self) -> int:
        """Rows inserted, updated or deleted since the store was opened (a
        commit that wrote nothing proves nothing about a full disk)."""
        return self._conn.total_changes if self._conn is not None else 0

    # -- lifecycle -------------------------------------------------------

    def open(self) -> None:
        """Create (mode 0600, parent dirs 0700) or open the file, apply the
        schema and check its version.  Calling it again does nothing."""
        if self._conn is not None:
            return
        try:
            self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _create_private(self._path)
        except OSError as exc:
            raise StoreError(f"cannot create {self._path}: {exc}") from exc
        self._conn = open_database(
            self._path,
            schema=_SCHEMA + ";" + _GROUP_SCHEMA + ";" + _FILE_SCHEMA,
            version=SCHEMA_VERSION,
            error=StoreError,
            what="store",
            migrations=_MIGRATIONS,
        )

    def close(self) -> None:
        """Close the file.  Calling it again does nothing."""
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        self._batch_depth = 0
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.close()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot close store {self._path}: {exc}") from exc

    def __enter__(self) -> Store:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group the writes made inside into one transaction, committed when
        the block ends and rolled back if it raises.  Nested batches join the
        outer one.  A :class:`StoreError` for a bad argument is raised before
        any SQL runs, so a caller may catch it inside the block and go on."""
        with self._write():
            yield

    # -- messages --------------------------------------------------------

    def add_message(
        self,
        message_id: str,
        *,
        sender: int,
        recipient: int,
        text: str,
        status: Status | str,
        time: float,
    ) -> bool:
        """Store a new message; False, changing nothing, if ``message_id`` is
        already stored (a retransmission: the caller should still send the
        receipt).

        ``status`` says the direction: ``received`` for an incoming message
        (the conversation is with ``sender``, and it counts as unread),
        ``queued``, ``sending`` or ``sent`` for an outgoing one (the
        conversation is with ``recipient``).  ``time`` orders the conversation.
        The text is stored verbatim; length limits are the caller's
        (api.MAX_TEXT_BYTES).
        """
        return bool(self.add_messages([NewMessage(message_id, sender, recipient, text, status, time)]))

    def add_messages(self, messages: Sequence[NewMessage]) -> set[str]:
        """Store several new messages as :meth:`add_message` stores each (in
        this order), in one transaction; return the ids that were new.  All
        are checked before any is stored."""
        rows = [_message_row(message) for message in messages]
        fresh: set[str] = set()
        with self._write() as conn:
            # One cached statement, run per row: a multi-row INSERT would be
            # parsed again for every new row count.
            for row in rows:
                if conn.execute(_INSERT, row).rowcount == 1:
                    fresh.add(row[0])
        return fresh

    def set_status(
        self,
        message_id: str,
        status: Status | str,
        error: str | None = None,
        *,
        now: float | None = None,
    ) -> bool:
        """Move a message to ``status`` if ``TRANSITIONS`` allows it from its
        current one.  True if the message changed; False, changing nothing,
        for an unknown id, the same status again, or a refused transition.

        ``error`` goes with ``failed`` and ``held`` only (it is cleared on any
        other status); ``now`` (default: the clock) is recorded as the update time.
        """
        _check_id(message_id)
        target = _status(status)
        if error is not None:
            if target not in (Status.FAILED, Status.HELD):
                raise StoreError(f"an error goes with status 'failed' or 'held', not {target.value!r}")
            _check_text(error)
        sources = _SOURCES[target]
        if not sources:
            return False
        when = _time.time() if now is None else now
        with self._write() as conn:
            cursor = conn.execute(_SET_STATUS[target], (target.value, error, when, message_id, *sources))
            return cursor.rowcount == 1

    def mark_delivered(self, message_ids: Sequence[str], recipient: int, *, now: float) -> list[str]:
        """Receipts from ``recipient``: each of ``message_ids`` that was sent
        to it moves to ``delivered`` (as set_status would), with one
        statement; returns the ids that changed, in the given order."""
        for message_id in message_ids:
            _check_id(message_id)
        with self._write() as conn:
            # The ids go as one JSON array: a cached statement whatever their number.
            rows = conn.execute(_MARK_DELIVERED, (now, json.dumps(message_ids), recipient)).fetchall()
        changed = {row[0] for row in rows}
        return [message_id for message_id in dict.fromkeys(message_ids) if message_id in changed]

    def get_message(self, message_id: str) -> dict[str, Any] | None:
        """The message as the API shows it, or None."""
        with self._read() as conn:
            row = conn.execute(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ?", (message_id,)).fetchone()
        return None if row is None else _message(row)

    def conversation(self, peer: int, limit: int = 500) -> list[dict[str, Any]]:
        """The latest ``limit`` messages with ``peer``, oldest first (messages
        with equal times in the order they were stored)."""
        if not isinstance(limit, int) or limit < 0:
            raise StoreError(f"limit must be an int >= 0, not {limit!r:.40}")
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE peer = ? AND {_VISIBLE}"
                " ORDER BY time DESC, rowid DESC LIMIT ?",
                (peer, limit),
            ).fetchall()
        rows.reverse()
        return [_message(row) for row in rows]

    def conversation_page(
        self, peer: int, limit: int, *, before: str | None = None, after: str | None = None
    ) -> list[dict[str, Any]] | None:
        """Up to ``limit`` messages with ``peer`` just before (or just after)
        the message ``before`` (``after``), oldest first; None if that message
        is not in this conversation.  Exactly one of the two is given.

        Pages go by (time, rowid), the order :meth:`conversation` lists in, so
        walking back page by page meets every message once, equal times
        included.  ``time <= ?`` (or ``>=``) bounds the range of the
        ``messages_peer_time`` index (whose entries end with the rowid); the
        OR only filters the rows of the boundary time."""
        if (before is None) == (after is None):
            raise StoreError("give exactly one of before and after")
        if not isinstance(limit, int) or limit < 0:
            raise StoreError(f"limit must be an int >= 0, not {limit!r:.40}")
        anchor_id = before if before is not None else after
        with self._read() as conn:
            anchor = conn.execute(
                f"SELECT time, rowid FROM messages WHERE id = ? AND peer = ? AND {_VISIBLE}", (anchor_id, peer)
            ).fetchone()
            if anchor is None:
                return None
            if before is not None:
                rows = conn.execute(
                    f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE peer = ? AND {_VISIBLE}"
                    " AND time <= ? AND (time < ? OR rowid < ?)"
                    " ORDER BY time DESC, rowid DESC LIMIT ?",
                    (peer, anchor[0], anchor[0], anchor[1], limit),
                ).fetchall()
                rows.reverse()
            else:
                rows = conn.execute(
                    f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE peer = ? AND {_VISIBLE}"
                    " AND time >= ? AND (time > ? OR rowid > ?)"
                    " ORDER BY time, rowid LIMIT ?",
                    (peer, anchor[0], anchor[0], anchor[1], limit),
                ).fetchall()
        return [_message(row) for row in rows]

    def pending_outgoing(self, peer: int | None = None) -> list[dict[str, Any]]:
        """Outgoing messages to (re)send, oldest first: ``queued`` and
        ``sending`` ones (after a restart, ``sending`` means the send was cut
        off).  ``failed`` ones wait for the user's retry."""
        with self._read() as conn:
            if peer is None:
                rows = conn.execute(
                    f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE {_PENDING} ORDER BY time, rowid"
                ).fetchall()
            else:
                rows = conn.execute(
                    f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE {_PENDING} AND peer = ? ORDER BY time, rowid",
                    (peer,),
                ).fetchall()
        return [_message(row) for row in rows]

    def expire_queued(self, older_than: float, *, now: float | None = None) -> list[str]:
        """Mark ``failed`` (error :data:`EXPIRED_ERROR`) every ``queued``
        message whose time is before ``older_than``; return their ids, oldest
        first, so the caller can tell the page."""
        with self._write() as conn:
            rows = conn.execute(
                f"UPDATE messages SET status = 'failed', error = ?, updated = ?"
                f" WHERE {_PENDING} AND status = 'queued' AND time < ?"
                " RETURNING id, time, rowid",
                (EXPIRED_ERROR, _time.time() if now is None else now, older_than),
            ).fetchall()
        rows.sort(key=lambda row: (row[1], row[2]))
        return [row[0] for row in rows]

    def unread_counts(self) -> dict[int, int]:
        """Peer id -> number of unread incoming messages (peers with none are left out)."""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT peer, count(*) FROM messages WHERE outgoing = 0 AND read = 0 AND {_VISIBLE} GROUP BY peer"
            ).fetchall()
        return {peer: count for peer, count in rows}

    def last_message(self, peer: int) -> dict[str, Any] | None:
        """The latest message with ``peer`` (the peer list's preview and order), or None."""
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE peer = ? AND {_VISIBLE}"
                " ORDER BY time DESC, rowid DESC LIMIT 1",
                (peer,),
            ).fetchone()
        return None if row is None else _message(row)

    def last_activity(self) -> dict[int, float]:
        """peer -> the time of its latest message (either way), for every peer
        with one: which contacts the presence subscription keeps when there
        are more than the server watches."""
        with self._read() as conn:
            rows = conn.execute("SELECT peer, MAX(time) FROM messages GROUP BY peer").fetchall()
        return {int(peer): float(latest) for peer, latest in rows}

    def stored_bytes_from(self, sender: int) -> int:
        """UTF-8 bytes of the texts stored from ``sender``, hidden ones too
        (webpeer/quota.py: what a sender may make us keep)."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT coalesce(sum(length(CAST(text AS BLOB))), 0) FROM messages WHERE peer = ? AND outgoing = 0",
                (sender,),
            ).fetchone()
        return int(row[0])

    def mark_read(self, peer: int) -> int:
        """Mark every incoming message from ``peer`` read; return how many were unread."""
        with self._write() as conn:
            cursor = conn.execute(
                f"UPDATE messages SET read = 1 WHERE outgoing = 0 AND read = 0 AND peer = ? AND {_VISIBLE}",
                (peer,),
            )
            return cursor.rowcount

    def latest_received(self, peer: int) -> str | None:
        """The id (as stored: ``"<peer>:<sender's id>"``) of the latest visible
        message received from ``peer``, or None (what a read receipt names)."""
        with self._read() as conn:
            row = conn.execute(
                f"SELECT id FROM messages WHERE peer = ? AND outgoing = 0 AND {_VISIBLE}"
                " ORDER BY time DESC, rowid DESC LIMIT 1",
                (peer,),
            ).fetchone()
        return None if row is None else str(row[0])

    # -- search ------------------------------------------------------------

    def search(self, words: Sequence[str], *, peer: int | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The latest ``limit`` visible messages (with ``peer``, or with
        anyone) whose text has every one of ``words`` as the start of a word
        (case- and accent-blind), newest first.

        Full-text search with SQLite's FTS5 where this SQLite has it (the
        index, ``messages_fts``, is made at the first search and caught up at
        each one: storing a message costs nothing more); else a scan with
        LIKE (every word anywhere in the text)."""
        words = [w for w in words if w]
        if not words or limit <= 0:
            return []
        with self._write() as conn:
            if self._fts is None:
                self._fts = _open_fts(conn)
            if self._fts:
                # Index what was stored since the last search (rowids only grow;
                # the id is kept so a reused rowid never matches another message).
                conn.execute(
                    "INSERT INTO messages_fts (rowid, text, message_id) SELECT rowid, text, id FROM messages"
                    " WHERE rowid > (SELECT coalesce(max(rowid), 0) FROM messages_fts)"
                )
        peer_clause = "" if peer is None else " AND m.peer = ?"
        peer_args: tuple[int, ...] = () if peer is None else (peer,)
        with self._read() as conn:
            if self._fts:
                query = " ".join('"' + word.replace('"', '""') + '"*' for word in words)
                rows = conn.execute(
                    f"SELECT {_prefixed('m', _MESSAGE_COLUMNS)} FROM messages_fts f"
                    " JOIN messages m ON m.rowid = f.rowid AND m.id = f.message_id"
                    f" WHERE messages_fts MATCH ? AND m.{_VISIBLE}{peer_clause}"
                    " ORDER BY m.time DESC, m.rowid DESC LIMIT ?",
                    (query, *peer_args, limit),
                ).fetchall()
            else:
                likes = " AND ".join("m.text LIKE ? ESCAPE '\\'" for _ in words)
                patterns = tuple("%" + _like_escape(word) + "%" for word in words)
                rows = conn.execute(
                    f"SELECT {_prefixed('m', _MESSAGE_COLUMNS)} FROM messages m"
                    f" WHERE {likes} AND m.{_VISIBLE}{peer_clause}"
                    " ORDER BY m.time DESC, m.rowid DESC LIMIT ?",
                    (*patterns, *peer_args, limit),
                ).fetchall()
        return [_message(row) for row in rows]

    # -- read receipts, nicknames, settings ------------------------------

    def mark_seen_by(self, peer: int, message_id: str, *, now: float) -> float | None:
        """``peer`` says it has read our message ``message_id`` (and so all
        before it): keep that as its read mark if the message is ours, went
        to ``peer``, and is not older than the mark it has.  Returns the
        message's time if the mark moved, else None."""
        _check_id(message_id)
        with self._write() as conn:
            row = conn.execute(
                "SELECT time, rowid FROM messages WHERE id = ? AND outgoing = 1 AND recipient = ?", (message_id, peer)
            ).fetchone()
            if row is None:
                return None
            when, seq = float(row[0]), int(row[1])
            moved = conn.execute(
                "INSERT INTO read_marks (peer, message_id, time, seq) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (peer) DO UPDATE SET message_id = excluded.message_id, time = excluded.time,"
                " seq = excluded.seq WHERE (excluded.time, excluded.seq) > (read_marks.time, read_marks.seq)",
                (peer, message_id, when, seq),
            ).rowcount
        return when if moved else None

    def read_marks(self) -> dict[int, dict[str, Any]]:
        """Peer id -> ``{"id": our latest message it has read, "time": its time}``."""
        with self._read() as conn:
            rows = conn.execute("SELECT peer, message_id, time FROM read_marks").fetchall()
        return {peer: {"id": message_id, "time": time} for peer, message_id, time in rows}

    def set_nickname(self, peer_id: int, nickname: str | None) -> None:
        """The user's name for ``peer_id``; None or "" forgets it."""
        with self._write() as conn:
            if nickname:
                _check_text(nickname)
                conn.execute(
                    "INSERT INTO nicknames (peer_id, nickname) VALUES (?, ?)"
                    " ON CONFLICT (peer_id) DO UPDATE SET nickname = excluded.nickname",
                    (peer_id, nickname),
                )
            else:
                conn.execute("DELETE FROM nicknames WHERE peer_id = ?", (peer_id,))

    def nicknames(self) -> dict[int, str]:
        with self._read() as conn:
            rows = conn.execute("SELECT peer_id, nickname FROM nicknames").fetchall()
        return {peer_id: nickname for peer_id, nickname in rows}

    def settings(self) -> dict[str, Any]:
        """Every setting of :data:`SETTINGS`, stored or default, decoded."""
        with self._read() as conn:
            stored = dict(conn.execute("SELECT key, value FROM settings").fetchall())
        return {key: json.loads(stored.get(key, default)) for key, default in SETTINGS.items()}

    def set_setting(self, key: str, value: Any) -> None:
        if key not in SETTINGS:
            raise StoreError(f"unknown setting {key!r:.40}")
        with self._write() as conn:
            conn.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value)),
            )

    # -- peers (trust on first use) --------------------------------------

    def remember_peer(self, peer_id: int, public_key: bytes, name: str, now: float) -> TrustResult:
        """Record that ``peer_id`` presented ``public_key`` under ``name`` at
        ``now``, and compare the key with what we knew (see
        :class:`TrustResult`).  The name and last_seen are updated in every
        case; a changed key is stored, never silently trusted."""
        if not isinstance(public_key, (bytes, bytearray, memoryview)) or not public_key:
            raise StoreError("public_key must be non-empty bytes")
        _check_text(name)
        key = bytes(public_key)
        with self._write() as conn:
            row = conn.execute(
                "SELECT public_key, key_changed, previous_key FROM peers WHERE peer_id = ?",
                (peer_id,),
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO peers (peer_id, public_key, name, first_seen, last_seen) VALUES (?, ?, ?, ?, ?)",
                    (peer_id, key, name, now, now),
                )
                return TrustResult.NEW
            current, changed, previous = bytes(row[0]), bool(row[1]), row[2]
            if key == current:
                conn.execute(
                    "UPDATE peers SET name = ?, last_seen = ? WHERE peer_id = ?",
                    (name, now, peer_id),
                )
                return TrustResult.SAME
            if changed and previous is not None and key == bytes(previous):
                # The key the user trusted is back: the unaccepted one is gone.
                conn.execute(
                    "UPDATE peers SET public_key = ?, name = ?, last_seen = ?,"
                    " key_changed = 0, previous_key = ? WHERE peer_id = ?",
                    (key, name, now, current, peer_id),
                )
                return TrustResult.RESTORED
            # While a change is pending, previous_key keeps the trusted key,
            # not the unaccepted one we are replacing.
            trusted = previous if changed else current
            conn.execute(
                "UPDATE peers SET public_key = ?, name = ?, last_seen = ?,"
                " key_changed = 1, previous_key = ? WHERE peer_id = ?",
                (key, name, now, trusted, peer_id),
            )
            return TrustResult.CHANGED

    def known_peer(self, peer_id: int) -> KnownPeer | None:
        """What we remember about ``peer_id``, or None if never seen."""
        with self._read() as conn:
            row = conn.execute(f"SELECT {_PEER_COLUMNS} FROM peers WHERE peer_id = ?", (peer_id,)).fetchone()
        return None if row is None else _known_peer(row)

    def known_peers(self) -> list[KnownPeer]:
        """Every peer ever seen, by id."""
        with self._read() as conn:
            rows = conn.execute(f"SELECT {_PEER_COLUMNS} FROM peers ORDER BY peer_id").fetchall()
        return [_known_peer(row) for row in rows]

    def contacts(self) -> list[KnownPeer]:
        """The known peers that are contacts, by id: those we have messages
        with or made a trust decision about (verified, key change pending,
        blocked).  A stranger whose key a directory page gave (remembered so
        the page can show its safety number) is not one."""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_PEER_COLUMNS} FROM peers WHERE verified_key IS NOT NULL OR key_changed != 0"
                " OR EXISTS (SELECT 1 FROM messages m WHERE m.peer = peers.peer_id)"
                " OR EXISTS (SELECT 1 FROM blocked_keys b WHERE b.peer_id = peers.peer_id)"
                " ORDER BY peer_id"
            ).fetchall()
        return [_known_peer(row) for row in rows]

    def prune_strangers(self, keep: Collection[int], *, unseen_before: float, at_most: int) -> list[int]:
        """Forget strangers: known peers that are not contacts (no message,
        no trust decision, no file, no nickname of ours, no group message;
        see :meth:`contacts`) and not in ``keep`` (the peers in use now),
        when unseen since ``unseen_before``, and beyond the ``at_most``
        seen most recently.  Directory pages remember every key they show
        (so the page can show a safety number before a first message): this
        keeps pages from growing the store without bound.  Returns their ids."""
        with self._write() as conn:
            rows = conn.execute(
                "SELECT peer_id, last_seen FROM peers p WHERE verified_key IS NULL AND key_changed = 0"
                " AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.peer = p.peer_id)"
                " AND NOT EXISTS (SELECT 1 FROM blocked_keys b WHERE b.peer_id = p.peer_id)"
                " AND NOT EXISTS (SELECT 1 FROM files f WHERE f.peer = p.peer_id)"
                " AND NOT EXISTS (SELECT 1 FROM nicknames n WHERE n.peer_id = p.peer_id)"
                " AND NOT EXISTS (SELECT 1 FROM group_messages g WHERE g.sender = p.peer_id)"
                " ORDER BY last_seen DESC, peer_id DESC"
            ).fetchall()
            strangers = [(int(peer_id), float(seen)) for peer_id, seen in rows if peer_id not in keep]
            doomed = [
                peer_id for rank, (peer_id, seen) in enumerate(strangers) if rank >= at_most or seen < unseen_before
            ]
            conn.executemany("DELETE FROM peers WHERE peer_id = ?", [(peer_id,) for peer_id in doomed])
        return doomed

    def accept_key_change(self, peer_id: int) -> bool:
        """The user trusts the peer's current key: clear the warning (the old
        key stays in previous_key as history).  False if no change was pending."""
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE peers SET key_changed = 0 WHERE peer_id = ? AND key_changed = 1",
                (peer_id,),
            )
            return cursor.rowcount == 1

    # -- key changes: held messages, hidden messages, blocked and verified keys --

    def held_outgoing(self, peer: int) -> list[dict[str, Any]]:
        """Outgoing messages to ``peer`` that are ``held``, oldest first."""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE peer = ? AND outgoing = 1 AND status = 'held'"
                " ORDER BY time, rowid",
                (peer,),
            ).fetchall()
        return [_message(row) for row in rows]

    def reveal_messages(self, peer: int) -> int:
        """The user accepted ``peer``'s new key: the messages it sent before
        that are shown from now on (marked as received across a key change).
        Returns how many."""
        with self._write() as conn:
            return conn.execute(
                "UPDATE messages SET key_change = ? WHERE peer = ? AND key_change = ?",
                (KEY_CHANGE_SHOWN, peer, KEY_CHANGE_HIDDEN),
            ).rowcount

    def drop_hidden_messages(self, peer: int) -> int:
        """The key change ended without acceptance (blocked, or the trusted key
        came back): delete what that key sent.  Returns how many."""
        with self._write() as conn:
            return conn.execute(
                "DELETE FROM messages WHERE peer = ? AND key_change = ?", (peer, KEY_CHANGE_HIDDEN)
            ).rowcount

    def block_key(self, peer_id: int, public_key: bytes, now: float) -> bool:
        """Never trust ``public_key`` for ``peer_id``; False if it already was blocked."""
        if not isinstance(public_key, bytes) or not public_key:
            raise StoreError("public_key must be non-empty bytes")
        with self._write() as conn:
            return (
                conn.execute(
                    "INSERT INTO blocked_keys (peer_id, public_key, blocked_at) VALUES (?, ?, ?)"
                    " ON CONFLICT DO NOTHING",
                    (peer_id, public_key, now),
                ).rowcount
                == 1
            )

    def unblock_key(self, peer_id: int, public_key: bytes) -> bool:
        """Undo :meth:`block_key`; False if the key was not blocked."""
        with self._write() as conn:
            return (
                conn.execute(
                    "DELETE FROM blocked_keys WHERE peer_id = ? AND public_key = ?", (peer_id, public_key)
                ).rowcount
                == 1
            )

    def set_verified_key(self, peer_id: int, public_key: bytes | None) -> bool:
        """Record the key whose safety number the user compared (None: not
        verified).  False for a peer never seen."""
        with self._write() as conn:
            return (
                conn.execute("UPDATE peers SET verified_key = ? WHERE peer_id = ?", (public_key, peer_id)).rowcount == 1
            )

    # -- files (webpeer/file_transfer.py) -----------------------------

    def add_file(self, record: FileRecord) -> bool:
        """Store a new file record; False if its id is taken."""
        with self._write() as conn:
            cursor = conn.execute(
                f"INSERT OR IGNORE INTO files ({_FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.peer,
                    int(record.outgoing),
                    record.name,
                    record.path,
                    record.size,
                    record.sha256,
                    record.mime,
                    record.status,
                    record.done,
                    record.error,
                    record.time,
                ),
            )
            return cursor.rowcount == 1

    def update_file(self, record: FileRecord) -> None:
        """Write back what changes in a record: status, progress, error, local path."""
        with self._write() as conn:
            conn.execute(
                "UPDATE files SET status = ?, done = ?, error = ?, path = ? WHERE id = ?",
                (record.status, record.done, record.error, record.path, record.id),
            )

    def get_file(self, file_id: str) -> FileRecord | None:
        with self._read() as conn:
            row = conn.execute(f"SELECT {_FILE_COLUMNS} FROM files WHERE id = ?", (file_id,)).fetchone()
        return _file(row) if row else None

    def files(self, peer: int | None = None, limit: int = 500) -> list[FileRecord]:
        """A conversation's files (or all), oldest first, the latest ``limit``."""
        where, args = ("WHERE peer = ?", (peer, limit)) if peer is not None else ("", (limit,))
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_FILE_COLUMNS} FROM files {where} ORDER BY time DESC, rowid DESC LIMIT ?", args
            ).fetchall()
        return [_file(row) for row in reversed(rows)]

    def active_files(self) -> list[FileRecord]:
        """Files not finished yet (offered, transferring, or paused by a full disk)."""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE status IN ('offered', 'accepted', 'paused') ORDER BY time"
            ).fetchall()
        return [_file(row) for row in rows]

    def set_auto_accept(self, peer_id: int, max_bytes: int | None) -> None:
        """Accept ``peer_id``'s offers of at most ``max_bytes`` without
        asking the user; None (or 0) asks for every one again."""
        if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0):
            raise StoreError("max_bytes must be a non-negative int or None")
        with self._write() as conn:
            if max_bytes:
                conn.execute(
                    "INSERT INTO auto_accept (peer_id, max_bytes) VALUES (?, ?)"
                    " ON CONFLICT (peer_id) DO UPDATE SET max_bytes = excluded.max_bytes",
                    (peer_id, max_bytes),
                )
            else:
                conn.execute("DELETE FROM auto_accept WHERE peer_id = ?", (peer_id,))

    def auto_accept(self, peer_id: int) -> int:
        """The size up to which ``peer_id``'s offers are accepted by
        themselves; 0: none is."""
        with self._read() as conn:
            row = conn.execute("SELECT max_bytes FROM auto_accept WHERE peer_id = ?", (peer_id,)).fetchone()
        return int(row[0]) if row else 0

    def auto_accepts(self) -> dict[int, int]:
        """Every peer with an auto-accept size: peer id -> bytes."""
        with self._read() as conn:
            rows = conn.execute("SELECT peer_id, max_bytes FROM auto_accept").fetchall()
        return {peer_id: max_bytes for peer_id, max_bytes in rows}

    # -- groups (webpeer/groups.py) ---------------------------------------

    def add_group_ops(self, group_id: str, ops: Sequence[tuple[str, str]]) -> None:
        """Store ``(op id, signed JSON)`` pairs of a group; known ones are kept as they are."""
        with self._write() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO group_ops (op_id, group_id, body) VALUES (?, ?, ?)",
                [(op_id, group_id, body) for op_id, body in ops],
            )

    def add_group_messages(self, group_id: str, messages: Sequence[tuple[int, int, str]]) -> None:
        """Store delivered ``(sender, seq, signed JSON)`` messages of a group, in delivery order."""
        with self._write() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO group_messages (group_id, sender, seq, body) VALUES (?, ?, ?, ?)",
                [(group_id, sender, seq, body) for sender, seq, body in messages],
            )

    def group_ids(self) -> list[str]:
        """Every group with stored ops, in the order they were first stored."""
        with self._read() as conn:
            rows = conn.execute("SELECT group_id FROM group_ops GROUP BY group_id ORDER BY MIN(rowid)").fetchall()
        return [row[0] for row in rows]

    def group_ops(self, group_id: str) -> list[str]:
        """A group's ops (signed JSON) in the order they were accepted."""
        with self._read() as conn:
            rows = conn.execute("SELECT body FROM group_ops WHERE group_id = ? ORDER BY rowid", (group_id,)).fetchall()
        return [row[0] for row in rows]

    def group_messages(self, group_id: str) -> list[str]:
        """A group's delivered messages (signed JSON) in delivery order."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT body FROM group_messages WHERE group_id = ? ORDER BY rowid", (group_id,)
            ).fetchall()
        return [row[0] for row in rows]

    # -- helpers ---------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """The open connection; sqlite errors become StoreError."""
        if self._conn is None:
            raise StoreError(f"store {self._path} is not open")
        try:
            yield self._conn
        except sqlite3.Error as exc:
            raise StoreError(f"store {self._path}: {exc}") from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, or the enclosing batch's one."""
        with self._read() as conn:
            if self._batch_depth:
                self._batch_depth += 1
                try:
                    yield conn
                finally:
                    self._batch_depth -= 1
                return
            # IMMEDIATE takes the write lock now, so another process holding
            # it fails here instead of half-way through.
            conn.execute("BEGIN IMMEDIATE")
            self._batch_depth = 1
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            finally:
                self._batch_depth = 0
