"""webpeer.store.Store on real SQLite files in tmp_path."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from webpeer.api import MAX_TEXT_BYTES
from webpeer.store import (
    EXPIRED_ERROR,
    KEY_CHANGE_HIDDEN,
    SCHEMA_VERSION,
    TRANSITIONS,
    NewMessage,
    Status,
    Store,
    StoreError,
    TrustResult,
)

ME = 1
KEY_A = b"A" * 32
KEY_B = b"B" * 32
KEY_C = b"C" * 32


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "alice" / "history.sqlite3"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    s = Store(db_path)
    s.open()
    yield s
    s.close()


def send(store: Store, message_id: str, to: int, time: float, text: str = "hi", status: str = "queued") -> bool:
    return store.add_message(message_id, sender=ME, recipient=to, text=text, status=status, time=time)


def receive(store: Store, message_id: str, sender: int, time: float, text: str = "yo") -> bool:
    return store.add_message(message_id, sender=sender, recipient=ME, text=text, status="received", time=time)


def statuses(store: Store, peer: int) -> dict[str, str]:
    return {m["id"]: m["status"] for m in store.conversation(peer)}


# -- file ----------------------------------------------------------------


def test_open_creates_private_file_and_parent_dirs(db_path: Path) -> None:
    assert not db_path.parent.exists()
    with Store(db_path) as s:
        send(s, "m1", 2, 1.0)
        assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
        # SQLite copies the database file's mode to its WAL and SHM files.
        wal = db_path.with_name(db_path.name + "-wal")
        assert wal.exists()
        assert stat.S_IMODE(wal.stat().st_mode) == 0o600
    assert stat.S_IMODE(db_path.parent.stat().st_mode) == 0o700


def test_private_mode_does_not_depend_on_umask(db_path: Path) -> None:
    old = os.umask(0)
    try:
        with Store(db_path):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600


def test_wal_and_schema_version(store: Store, db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == SCHEMA_VERSION
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "messages_peer_time" in indexes
    finally:
        conn.close()


def test_newer_schema_is_refused(db_path: Path) -> None:
    with Store(db_path):
        pass
    conn = sqlite3.connect(db_path)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="schema version"):
        Store(db_path).open()


def test_a_file_that_is_not_a_database_is_refused(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"this is not sqlite" * 100)
    s = Store(db_path)
    with pytest.raises(StoreError):
        s.open()
    with pytest.raises(StoreError, match="not open"):
        s.conversation(2)


def test_closed_store_raises_store_error(db_path: Path) -> None:
    s = Store(db_path)
    with pytest.raises(StoreError, match="not open"):
        send(s, "m1", 2, 1.0)
    s.open()
    s.close()
    s.close()  # twice is fine
    with pytest.raises(StoreError, match="not open"):
        s.unread_counts()


def test_history_survives_close_and_reopen(db_path: Path) -> None:
    with Store(db_path) as s:
        send(s, "out", 2, 10.0, text="to two")
        receive(s, "in", 2, 11.0, text="from two")
        assert s.set_status("out", "sending", now=10.5)
        assert s.remember_peer(2, KEY_A, "bob", now=9.0) is TrustResult.NEW
    with Store(db_path) as s:
        assert [(m["id"], m["text"], m["status"]) for m in s.conversation(2)] == [
            ("out", "to two", "sending"),
            ("in", "from two", "received"),
        ]
        assert [m["id"] for m in s.pending_outgoing()] == ["out"]
        assert s.unread_counts() == {2: 1}
        assert s.remember_peer(2, KEY_A, "bob", now=20.0) is TrustResult.SAME
        # Idempotence holds across restarts too.
        assert receive(s, "in", 2, 11.0) is False


# -- messages ------------------------------------------------------------


def test_message_shape(store: Store) -> None:
    assert send(store, "m1", 2, 100.25, text="hello")
    assert store.get_message("m1") == {
        "id": "m1",
        "peer": 2,
        "from": ME,
        "to": 2,
        "text": "hello",
        "status": "queued",
        "time": 100.25,
        "error": None,
        "key_changed": False,
    }
    assert receive(store, "m2", 3, 101.0, text="hey")
    incoming = store.get_message("m2")
    assert incoming is not None
    assert (incoming["peer"], incoming["from"], incoming["to"], incoming["status"]) == (3, 3, ME, "received")
    assert store.get_message("nope") is None


def test_conversation_is_oldest_first_and_per_peer(store: Store) -> None:
    # Stored out of order, with a tie at t=20 kept in insertion order.
    send(store, "c", 2, 30.0)
    receive(store, "a", 2, 10.0)
    send(store, "b1", 2, 20.0)
    receive(store, "b2", 2, 20.0)
    send(store, "other", 3, 15.0)
    assert [m["id"] for m in store.conversation(2)] == ["a", "b1", "b2", "c"]
    assert [m["id"] for m in store.conversation(3)] == ["other"]
    assert store.conversation(4) == []


def test_conversation_pages_back_and_forth_without_gap_or_duplicate(store: Store) -> None:
    # 5,000 messages, stored out of time order, four to a timestamp (ties go
    # by storage order), one of them from a key not accepted yet (never listed).
    messages = [
        NewMessage(f"m{i}", ME if i % 2 else 2, 2 if i % 2 else ME, "x", "sent" if i % 2 else "received", float(i // 4))
        for i in range(5000)
    ]
    store.add_messages(messages[2500:] + messages[:2500])
    store.add_messages([NewMessage("hidden", 2, ME, "x", Status.RECEIVED, 100.0, KEY_CHANGE_HIDDEN)])
    send(store, "elsewhere", 3, 100.0)
    everything = [m["id"] for m in store.conversation(2, limit=10_000)]
    assert len(everything) == 5000 and "hidden" not in everything

    page = store.conversation(2, limit=300)
    seen = [m["id"] for m in page]
    while page:
        page = store.conversation_page(2, 300, before=page[0]["id"]) or []
        seen[:0] = [m["id"] for m in page]
    assert seen == everything

    assert store.conversation_page(2, 1, before=everything[0]) == []  # the start
    forward = [everything[0]]
    page = [{"id": everything[0]}]
    while page:
        page = store.conversation_page(2, 700, after=page[-1]["id"]) or []
        forward += [m["id"] for m in page]
    assert forward == everything


def test_conversation_page_needs_a_message_of_that_conversation(store: Store) -> None:
    send(store, "a", 2, 1.0)
    send(store, "b", 3, 2.0)
    store.add_messages([NewMessage("hidden", 2, ME, "x", Status.RECEIVED, 3.0, KEY_CHANGE_HIDDEN)])
    assert store.conversation_page(2, 10, before="b") is None  # bob's message is not alice's
    assert store.conversation_page(2, 10, after="hidden") is None
    assert store.conversation_page(2, 10, before="nope") is None
    assert store.conversation_page(2, 10, after="a") == []
    with pytest.raises(StoreError):
        store.conversation_page(2, 10)
    with pytest.raises(StoreError):
        store.conversation_page(2, 10, before="a", after="a")


def test_last_message_is_the_latest_visible_one(store: Store) -> None:
    assert store.last_message(2) is None
    send(store, "a", 2, 1.0)
    receive(store, "b", 2, 5.0, text="latest")
    send(store, "c", 2, 3.0)
    store.add_messages([NewMessage("hidden", 2, ME, "x", Status.RECEIVED, 9.0, KEY_CHANGE_HIDDEN)])
    latest = store.last_message(2)
    assert latest is not None and (latest["id"], latest["text"]) == ("b", "latest")


def test_conversation_limit_keeps_the_latest(store: Store) -> None:
    for i in range(10):
        send(store, f"m{i}", 2, float(i))
    assert [m["id"] for m in store.conversation(2, limit=3)] == ["m7", "m8", "m9"]
    assert store.conversation(2, limit=0) == []
    with pytest.raises(StoreError):
        store.conversation(2, limit=-1)


def test_insert_is_idempotent_on_id(store: Store) -> None:
    assert receive(store, "dup", 2, 10.0, text="first")
    # A retransmission, even with different content, changes nothing.
    assert receive(store, "dup", 2, 99.0, text="second") is False
    assert send(store, "dup", 3, 5.0, text="third") is False
    assert store.conversation(2) == [
        {
            "id": "dup",
            "peer": 2,
            "from": 2,
            "to": ME,
            "text": "first",
            "status": "received",
            "time": 10.0,
            "error": None,
            "key_changed": False,
        }
    ]
    assert store.conversation(3) == []
    assert store.unread_counts() == {2: 1}


def test_text_is_stored_verbatim(store: Store) -> None:
    texts = [
        "<img src=x onerror=alert(1)>",
        "<script>alert('x')</script> & &amp; \"quoted\"",
        "Grüße, 你好, مرحبا, 🙂👍🏽, e\u0301, zero\u200bwidth",
        "line one\nline two\r\n\ttabbed\x00nul",
        "'; DROP TABLE messages; --",
    ]
    for i, text in enumerate(texts):
        receive(store, f"t{i}", 2, float(i), text=text)
    assert [m["text"] for m in store.conversation(2)] == texts


def test_64_kib_texts(store: Store) -> None:
    ascii_text = "x" * MAX_TEXT_BYTES
    emoji_text = "🙂" * (MAX_TEXT_BYTES // 4)  # 4 bytes each in UTF-8
    assert len(emoji_text.encode()) == MAX_TEXT_BYTES
    send(store, "big1", 2, 1.0, text=ascii_text)
    receive(store, "big2", 2, 2.0, text=emoji_text)
    got = store.conversation(2)
    assert got[0]["text"] == ascii_text
    assert got[1]["text"] == emoji_text


def test_bad_arguments_raise_store_error(store: Store) -> None:
    with pytest.raises(StoreError, match="Unicode"):
        receive(store, "s", 2, 1.0, text="lone \ud800 surrogate")
    with pytest.raises(StoreError, match="unknown message status"):
        store.add_message("x", sender=ME, recipient=2, text="t", status="bogus", time=1.0)
    with pytest.raises(StoreError, match="cannot start as"):
        store.add_message("x", sender=ME, recipient=2, text="t", status="delivered", time=1.0)
    with pytest.raises(StoreError):
        store.add_message("", sender=ME, recipient=2, text="t", status="queued", time=1.0)
    send(store, "m", 2, 1.0)
    with pytest.raises(StoreError, match="unknown message status"):
        store.set_status("m", "lost")
    with pytest.raises(StoreError, match="error goes with"):
        store.set_status("m", "sending", error="boom")
    assert store.conversation(2)[0]["status"] == "queued"
    assert [m["id"] for m in store.conversation(2)] == ["m"]


# -- status transitions ---------------------------------------------------


def test_happy_path_transitions(store: Store) -> None:
    send(store, "m", 2, 1.0)
    assert store.set_status("m", Status.SENDING, now=2.0)
    assert store.set_status("m", "sent", now=3.0)
    assert store.set_status("m", "delivered", now=4.0)
    assert store.get_message("m")["status"] == "delivered"  # type: ignore[index]


def test_late_sent_does_not_downgrade_delivered(store: Store) -> None:
    send(store, "m", 2, 1.0, status="sending")
    # The receipt can overtake the "sent" notification.
    assert store.set_status("m", "delivered")
    assert store.set_status("m", "sent") is False
    assert store.set_status("m", "failed", error="timeout") is False
    assert store.set_status("m", "sending") is False
    assert store.set_status("m", "queued") is False
    assert store.get_message("m") == {
        "id": "m",
        "peer": 2,
        "from": ME,
        "to": 2,
        "text": "hi",
        "status": "delivered",
        "time": 1.0,
        "error": None,
        "key_changed": False,
    }


def test_sent_does_not_go_back_to_sending(store: Store) -> None:
    send(store, "m", 2, 1.0, status="sending")
    assert store.set_status("m", "sent")
    assert store.set_status("m", "sending") is False
    assert store.set_status("m", "queued") is False
    assert store.get_message("m")["status"] == "sent"  # type: ignore[index]


def test_same_status_again_is_not_a_change(store: Store) -> None:
    send(store, "m", 2, 1.0)
    assert store.set_status("m", "queued") is False
    assert store.set_status("m", "sending")
    assert store.set_status("m", "sending") is False


def test_received_is_final(store: Store) -> None:
    receive(store, "in", 2, 1.0)
    for status in Status:
        assert store.set_status("in", status) is False
    assert store.get_message("in")["status"] == "received"  # type: ignore[index]


def test_unknown_id_is_refused(store: Store) -> None:
    assert store.set_status("ghost", "delivered") is False


def test_failed_keeps_error_and_retry_clears_it(store: Store) -> None:
    send(store, "m", 2, 1.0, status="sending")
    assert store.set_status("m", "failed", error="refused: wrong key")
    assert store.get_message("m")["error"] == "refused: wrong key"  # type: ignore[index]
    assert [m["id"] for m in store.pending_outgoing()] == []
    assert store.set_status("m", "sending")  # the user's retry
    got = store.get_message("m")
    assert got is not None and (got["status"], got["error"]) == ("sending", None)


def test_every_transition_follows_the_table(tmp_path: Path) -> None:
    """Drive each (from, to) pair on a fresh message and compare with TRANSITIONS."""
    with Store(tmp_path / "t.sqlite3") as s:
        # How to reach each state from a new outgoing message.
        paths: dict[Status, list[Status]] = {
            Status.QUEUED: [],
            Status.SENDING: [Status.SENDING],
            Status.SENT: [Status.SENDING, Status.SENT],
            Status.DELIVERED: [Status.SENDING, Status.DELIVERED],
            Status.FAILED: [Status.FAILED],
            Status.HELD: [Status.HELD],
        }
        n = 0
        for source, path in paths.items():
            for target in Status:
                n += 1
                message_id = f"m{n}"
                send(s, message_id, 2, float(n))
                for step in path:
                    assert s.set_status(message_id, step), (source, step)
                error = "e" if target in (Status.FAILED, Status.HELD) else None
                changed = s.set_status(message_id, target, error)
                expected = target in TRANSITIONS[source]
                assert changed is expected, (source, target)
                assert s.get_message(message_id)["status"] == (target if expected else source).value  # type: ignore[index]


# -- pending and retention ------------------------------------------------


def test_pending_outgoing_is_queued_and_sending_oldest_first(store: Store) -> None:
    send(store, "q2", 2, 20.0)
    send(store, "s2", 2, 10.0, status="sending")
    send(store, "q3", 3, 15.0)
    send(store, "sent", 2, 5.0, status="sending")
    store.set_status("sent", "sent")
    send(store, "failed", 2, 6.0)
    store.set_status("failed", "failed", error="x")
    receive(store, "in", 2, 1.0)
    assert [m["id"] for m in store.pending_outgoing()] == ["s2", "q3", "q2"]
    assert [m["id"] for m in store.pending_outgoing(2)] == ["s2", "q2"]
    assert [m["id"] for m in store.pending_outgoing(3)] == ["q3"]
    assert store.pending_outgoing(4) == []
    assert all(m["to"] == m["peer"] for m in store.pending_outgoing())


def test_expire_queued(store: Store) -> None:
    send(store, "old1", 2, 100.0)
    send(store, "old2", 3, 50.0)
    send(store, "young", 2, 500.0)
    send(store, "old_sending", 2, 10.0, status="sending")  # on a connection: not expired here
    receive(store, "old_in", 2, 1.0)
    assert store.expire_queued(older_than=200.0, now=1000.0) == ["old2", "old1"]
    for message_id in ("old1", "old2"):
        got = store.get_message(message_id)
        assert got is not None and (got["status"], got["error"]) == ("failed", EXPIRED_ERROR)
    assert store.get_message("young")["status"] == "queued"  # type: ignore[index]
    assert store.get_message("old_sending")["status"] == "sending"  # type: ignore[index]
    assert store.get_message("old_in")["status"] == "received"  # type: ignore[index]
    assert store.expire_queued(older_than=200.0, now=1001.0) == []
    # An expired message can still be retried by the user.
    assert store.set_status("old1", "queued")
    assert [m["id"] for m in store.pending_outgoing(2)] == ["old_sending", "old1", "young"]


# -- unread ---------------------------------------------------------------


def test_unread_counts_and_mark_read(store: Store) -> None:
    assert store.unread_counts() == {}
    receive(store, "a1", 2, 1.0)
    receive(store, "a2", 2, 2.0)
    receive(store, "b1", 3, 3.0)
    send(store, "mine", 2, 4.0)  # our own messages are never unread
    assert store.unread_counts() == {2: 2, 3: 1}
    assert store.mark_read(2) == 2
    assert store.unread_counts() == {3: 1}
    assert store.mark_read(2) == 0
    receive(store, "a3", 2, 5.0)
    assert store.unread_counts() == {2: 1, 3: 1}
    assert store.mark_read(3) == 1
    assert store.mark_read(99) == 0
    assert store.unread_counts() == {2: 1}


# -- trust on first use ---------------------------------------------------


def test_tofu_new_then_same(store: Store) -> None:
    assert store.known_peer(2) is None
    assert store.remember_peer(2, KEY_A, "bob", now=10.0) is TrustResult.NEW
    assert store.remember_peer(2, KEY_A, "bobby", now=20.0) is TrustResult.SAME
    peer = store.known_peer(2)
    assert peer is not None
    assert (peer.public_key, peer.name, peer.first_seen, peer.last_seen) == (KEY_A, "bobby", 10.0, 20.0)
    assert peer.key_changed is False and peer.previous_key is None


def test_tofu_changed_key_keeps_both_and_waits_for_acceptance(store: Store) -> None:
    store.remember_peer(2, KEY_A, "bob", now=10.0)
    assert store.remember_peer(2, KEY_B, "bob?", now=20.0) is TrustResult.CHANGED
    peer = store.known_peer(2)
    assert peer is not None
    assert (peer.public_key, peer.previous_key, peer.key_changed) == (KEY_B, KEY_A, True)
    # Seen again with the new key: no new warning, but still not accepted.
    assert store.remember_peer(2, KEY_B, "bob?", now=30.0) is TrustResult.SAME
    assert store.known_peer(2).key_changed is True  # type: ignore[union-attr]
    assert store.accept_key_change(2) is True
    peer = store.known_peer(2)
    assert peer is not None
    assert (peer.public_key, peer.previous_key, peer.key_changed) == (KEY_B, KEY_A, False)
    assert store.accept_key_change(2) is False
    assert store.accept_key_change(99) is False
    # The accepted key is now the trusted one.
    assert store.remember_peer(2, KEY_B, "bob", now=40.0) is TrustResult.SAME
    assert store.remember_peer(2, KEY_A, "bob", now=50.0) is TrustResult.CHANGED
    assert store.known_peer(2).previous_key == KEY_B  # type: ignore[union-attr]


def test_tofu_second_change_keeps_the_trusted_key(store: Store) -> None:
    store.remember_peer(2, KEY_A, "bob", now=10.0)
    store.remember_peer(2, KEY_B, "mallory", now=20.0)
    assert store.remember_peer(2, KEY_C, "eve", now=30.0) is TrustResult.CHANGED
    peer = store.known_peer(2)
    assert peer is not None
    # previous_key is the key the user trusted, not the unaccepted B.
    assert (peer.public_key, peer.previous_key, peer.key_changed) == (KEY_C, KEY_A, True)


def test_tofu_trusted_key_coming_back_clears_the_warning(store: Store) -> None:
    store.remember_peer(2, KEY_A, "bob", now=10.0)
    store.remember_peer(2, KEY_B, "mallory", now=20.0)
    assert store.remember_peer(2, KEY_A, "bob", now=30.0) is TrustResult.RESTORED
    peer = store.known_peer(2)
    assert peer is not None
    assert (peer.public_key, peer.key_changed, peer.previous_key) == (KEY_A, False, KEY_B)
    assert store.remember_peer(2, KEY_A, "bob", now=40.0) is TrustResult.SAME


def test_tofu_survives_restart_and_lists_peers(db_path: Path) -> None:
    with Store(db_path) as s:
        s.remember_peer(3, KEY_C, "carol", now=1.0)
        s.remember_peer(2, KEY_A, "bob", now=1.0)
        s.remember_peer(2, KEY_B, "bob", now=2.0)
    with Store(db_path) as s:
        assert [p.peer_id for p in s.known_peers()] == [2, 3]
        assert s.remember_peer(2, KEY_B, "bob", now=3.0) is TrustResult.SAME
        assert s.known_peer(2).key_changed is True  # type: ignore[union-attr]
        with pytest.raises(StoreError):
            s.remember_peer(4, b"", "empty", now=1.0)


# -- batches --------------------------------------------------------------


def test_batch_commits_once_and_rolls_back_on_error(db_path: Path, store: Store) -> None:
    with store.batch():
        receive(store, "b1", 2, 1.0)
        with store.batch():  # nested batches join the outer one
            receive(store, "b2", 2, 2.0)
        # Not visible to another connection until the batch commits.
        other = sqlite3.connect(db_path)
        assert other.execute("SELECT count(*) FROM messages").fetchone()[0] == 0
        # A refused argument inside the batch does not spoil it.
        with pytest.raises(StoreError):
            receive(store, "bad", 2, 3.0, text="\udfff")
    assert other.execute("SELECT count(*) FROM messages").fetchone()[0] == 2
    other.close()

    with pytest.raises(RuntimeError):
        with store.batch():
            receive(store, "lost", 2, 4.0)
            raise RuntimeError("boom")
    assert [m["id"] for m in store.conversation(2)] == ["b1", "b2"]
    # The store is usable after a rolled back batch.
    assert receive(store, "after", 2, 5.0)
    assert store.unread_counts() == {2: 3}


# -- many at once (one transaction) ----------------------------------------


def test_add_messages_stores_in_order_and_returns_the_new_ids(store: Store) -> None:
    assert receive(store, "2:a", 2, 1.0)
    many = [NewMessage(f"2:{n}", 2, ME, f"text {n}", "received", 2.0) for n in range(1200)]
    many.insert(5, NewMessage("2:a", 2, ME, "a repeat", "received", 2.0))  # stored before: not new
    many.append(NewMessage("2:7", 2, ME, "a repeat in the same call", "received", 2.0))
    fresh = store.add_messages(many)
    assert fresh == {f"2:{n}" for n in range(1200)}
    conversation = store.conversation(2, limit=5000)
    assert [m["text"] for m in conversation] == ["yo"] + [f"text {n}" for n in range(1200)]
    assert store.unread_counts() == {2: 1201}
    sent = store.add_messages(
        [NewMessage("s", ME, 3, "out", "sent", 3.0), NewMessage("q", ME, 3, "later", "queued", 4.0)]
    )
    assert sent == {"s", "q"} and statuses(store, 3) == {"s": "sent", "q": "queued"}
    assert store.unread_counts() == {2: 1201}  # our own are never unread


def test_add_messages_checks_all_before_storing_any(store: Store) -> None:
    good = NewMessage("ok", ME, 2, "fine", "queued", 1.0)
    with pytest.raises(StoreError, match="Unicode"):
        store.add_messages([good, NewMessage("bad", ME, 2, "lone \ud800", "queued", 1.0)])
    with pytest.raises(StoreError, match="cannot start as"):
        store.add_messages([good, NewMessage("bad", ME, 2, "x", "delivered", 1.0)])
    assert store.conversation(2) == []


def test_mark_delivered_counts_only_receipts_from_the_recipient(store: Store) -> None:
    ids = [f"m{n}" for n in range(700)]
    store.add_messages([NewMessage(i, ME, 2, "hi", "sent", 1.0) for i in ids])
    send(store, "to-carol", 3, 1.0, status="sent")
    receive(store, "2:in", 2, 1.0)
    send(store, "failed", 2, 1.0)
    store.set_status("failed", "failed", "gave up")
    asked = ["failed", *reversed(ids), "to-carol", "2:in", "unknown", "m3"]
    changed = store.mark_delivered(asked, 2, now=5.0)
    assert changed == ["failed", *reversed(ids)]  # in the order given, each once
    assert store.get_message("failed") == {**store.get_message("failed"), "status": "delivered", "error": None}  # type: ignore[dict-item]
    assert store.get_message("to-carol")["status"] == "sent"  # type: ignore[index]
    assert store.get_message("2:in")["status"] == "received"  # type: ignore[index]
    assert store.mark_delivered(ids, 2, now=6.0) == []  # already delivered
    with pytest.raises(StoreError):
        store.mark_delivered([""], 2, now=7.0)
