"""The store's part of the key-change gate: schema 2 and the migration from
1, the held status, hidden incoming messages, blocked and verified keys."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from webpeer.store import (
    KEY_CHANGE_HIDDEN,
    SCHEMA_VERSION,
    NewMessage,
    Status,
    Store,
    StoreError,
    TrustResult,
)

KEY_A, KEY_B = b"A" * 32, b"B" * 32
ME = 1

# The version 1 schema as it shipped (store.py before the trust work).
SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE messages (
    id TEXT PRIMARY KEY, peer INTEGER NOT NULL, sender INTEGER NOT NULL, recipient INTEGER NOT NULL,
    text TEXT NOT NULL, status TEXT NOT NULL, time REAL NOT NULL, updated REAL NOT NULL, error TEXT,
    outgoing INTEGER NOT NULL, read INTEGER NOT NULL
);
CREATE INDEX messages_peer_time ON messages (peer, time);
CREATE INDEX messages_pending ON messages (peer, time) WHERE status IN ('queued', 'sending');
CREATE INDEX messages_unread ON messages (peer) WHERE outgoing = 0 AND read = 0;
CREATE TABLE peers (
    peer_id INTEGER PRIMARY KEY, public_key BLOB NOT NULL, name TEXT NOT NULL, first_seen REAL NOT NULL,
    last_seen REAL NOT NULL, key_changed INTEGER NOT NULL DEFAULT 0, previous_key BLOB
);
INSERT INTO meta VALUES ('schema_version', 1);
INSERT INTO messages VALUES ('in', 2, 2, 1, 'old hello', 'received', 5.0, 5.0, NULL, 0, 0);
INSERT INTO messages VALUES ('out', 2, 1, 2, 'old queued', 'queued', 6.0, 6.0, NULL, 1, 1);
"""


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "history.sqlite3")
    s.open()
    return s


def version_1_file(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.executescript(SCHEMA_1)
        conn.execute(
            "INSERT INTO peers VALUES (2, ?, 'bob', 1.0, 2.0, 1, ?)", (KEY_B, KEY_A)
        )  # a key change pending when the old program stopped
    conn.close()


def test_a_version_1_file_is_migrated_and_keeps_its_history(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    version_1_file(path)
    with Store(path) as store:
        assert [m["text"] for m in store.conversation(2)] == ["old hello", "old queued"]
        assert store.unread_counts() == {2: 1}
        peer = store.known_peer(2)
        assert peer is not None
        assert (peer.public_key, peer.previous_key, peer.key_changed, peer.trusted_key) == (KEY_B, KEY_A, True, KEY_A)
        assert (peer.verified_key, peer.blocked) == (None, False)
        # The new parts work on the migrated file.
        assert store.set_status("out", Status.HELD, "key changed")
        assert store.block_key(2, KEY_B, now=10.0)
        assert store.known_peer(2).blocked  # type: ignore[union-attr]
        assert store.add_messages([NewMessage("hid", 2, ME, "hidden", Status.RECEIVED, 7.0, KEY_CHANGE_HIDDEN)])
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == SCHEMA_VERSION == 2
    conn.close()
    with Store(path) as again:  # opening an up-to-date file changes nothing
        assert again.get_message("out")["status"] == "held"  # type: ignore[index]


def test_a_failed_migration_leaves_the_version_1_file_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    version_1_file(path)
    with sqlite3.connect(path) as conn:
        # A column of that name already there: the ALTER fails half-way.
        conn.execute("ALTER TABLE peers ADD COLUMN verified_key BLOB")
    conn.close()
    with pytest.raises(StoreError, match="duplicate column"):
        Store(path).open()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == 1
        columns = [row[1] for row in conn.execute("PRAGMA table_info(messages)")]
        assert "key_change" not in columns  # the first ALTER was rolled back too
    conn.close()


def test_held_moves_and_keeps_its_reason(store: Store) -> None:
    store.add_message("m", sender=ME, recipient=2, text="hi", status="sent", time=1.0)
    assert store.set_status("m", Status.HELD, "key changed", now=2.0)
    assert store.get_message("m")["error"] == "key changed"  # type: ignore[index]
    assert store.pending_outgoing(2) == []  # held is not sent by the offline queue
    assert [m["id"] for m in store.held_outgoing(2)] == ["m"]
    assert store.set_status("m", Status.HELD, "again", now=3.0) is False
    assert store.set_status("m", Status.SENDING, now=4.0)  # released
    got = store.get_message("m")
    assert got is not None and (got["status"], got["error"]) == ("sending", None)
    assert store.held_outgoing(2) == []
    with pytest.raises(StoreError, match="'failed' or 'held'"):
        store.set_status("m", Status.SENT, "no reason goes with sent")


def test_a_new_message_may_start_held_with_its_reason_only(store: Store) -> None:
    assert store.add_messages([NewMessage("h", ME, 2, "wait", Status.HELD, 1.0, error="key changed")])
    assert store.get_message("h")["error"] == "key changed"  # type: ignore[index]
    with pytest.raises(StoreError, match="only when held"):
        store.add_messages([NewMessage("q", ME, 2, "x", Status.QUEUED, 1.0, error="nope")])
    with pytest.raises(StoreError, match="key_change"):
        store.add_messages([NewMessage("o", ME, 2, "x", Status.QUEUED, 1.0, KEY_CHANGE_HIDDEN)])


def test_hidden_messages_are_not_read_counted_or_marked_until_revealed(store: Store) -> None:
    store.add_messages(
        [
            NewMessage("seen", 2, ME, "from the old key", Status.RECEIVED, 1.0),
            NewMessage("hid", 2, ME, "from the new key", Status.RECEIVED, 2.0, KEY_CHANGE_HIDDEN),
        ]
    )
    assert [m["id"] for m in store.conversation(2)] == ["seen"]
    assert store.unread_counts() == {2: 1}
    assert store.mark_read(2) == 1  # the hidden one stays unread
    assert store.reveal_messages(2) == 1
    assert [(m["id"], m["key_changed"]) for m in store.conversation(2)] == [("seen", False), ("hid", True)]
    assert store.unread_counts() == {2: 1}
    assert store.reveal_messages(2) == 0


def test_hidden_messages_are_dropped_when_the_change_ends_unaccepted(store: Store) -> None:
    store.add_messages([NewMessage("hid", 2, ME, "x", Status.RECEIVED, 2.0, KEY_CHANGE_HIDDEN)])
    store.add_messages([NewMessage("kept", 2, ME, "y", Status.RECEIVED, 1.0)])
    assert store.drop_hidden_messages(2) == 1
    assert store.get_message("hid") is None and store.get_message("kept") is not None


def test_blocked_and_verified_keys(store: Store) -> None:
    assert store.remember_peer(2, KEY_A, "bob", 1.0) is TrustResult.NEW
    assert store.set_verified_key(2, KEY_A)
    assert store.set_verified_key(99, KEY_A) is False
    assert store.remember_peer(2, KEY_B, "bob", 2.0) is TrustResult.CHANGED
    peer = store.known_peer(2)
    assert peer is not None and (peer.verified_key, peer.trusted_key, peer.blocked) == (KEY_A, KEY_A, False)
    assert store.block_key(2, KEY_B, 3.0)
    assert store.block_key(2, KEY_B, 4.0) is False
    assert store.known_peer(2).blocked  # type: ignore[union-attr]
    # The trusted key comes back: not blocked; the blocked one again: blocked again.
    assert store.remember_peer(2, KEY_A, "bob", 5.0) is TrustResult.RESTORED
    assert store.known_peer(2).blocked is False  # type: ignore[union-attr]
    assert store.remember_peer(2, KEY_B, "bob", 6.0) is TrustResult.CHANGED
    assert store.known_peer(2).blocked  # type: ignore[union-attr]
    assert store.unblock_key(2, KEY_B)
    assert store.known_peer(2).blocked is False  # type: ignore[union-attr]


def test_strangers_are_forgotten_past_the_bounds_and_contacts_never(store: Store) -> None:
    # Ten strangers a directory page showed, seen at times 10..19.
    for n in range(10):
        store.remember_peer(100 + n, bytes([n]) * 32, f"stranger{n}", 10.0 + n)
    # And peers that are contacts in every way the store knows, all seen long ago.
    store.remember_peer(2, KEY_A, "wrote", 1.0)
    store.add_message("m1", sender=ME, recipient=2, text="hi", status=Status.SENT, time=1.0)
    store.remember_peer(3, KEY_A, "verified", 1.0)
    store.set_verified_key(3, KEY_A)
    store.remember_peer(4, KEY_A, "blocked", 1.0)
    store.block_key(4, KEY_A, 1.0)
    store.remember_peer(5, KEY_A, "named", 1.0)
    store.set_nickname(5, "my friend")
    store.remember_peer(6, KEY_A, "changed", 1.0)
    store.remember_peer(6, KEY_B, "changed", 1.0)
    # Keep the 4 seen last, and 105 (in use now: on the page, say).
    forgotten = store.prune_strangers({105}, unseen_before=0.0, at_most=4)
    assert sorted(forgotten) == [100, 101, 102, 103, 104]
    assert {p.peer_id for p in store.known_peers()} == {2, 3, 4, 5, 6, 105, 106, 107, 108, 109}
    # Unseen since 18: only the most recent stranger (19) and the kept one stay.
    assert sorted(store.prune_strangers({105}, unseen_before=19.0, at_most=1000)) == [106, 107, 108]
    assert {p.peer_id for p in store.known_peers()} == {2, 3, 4, 5, 6, 105, 109}
