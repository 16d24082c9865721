"""Read receipts and nicknames through the pure engines (tests/unit/peer_net.py,
literal times): the reader's "read" frame moves the sender's read mark; the
off switch keeps it from going; a reader with no link sends it on the next one."""

from __future__ import annotations

from peer_net import Peer, PeerNet

from webpeer.events import PeersChanged, ReadUpTo


def pair(net: PeerNet) -> tuple[Peer, Peer]:
    alice = net.add("alice")
    bob = net.add("bob")
    net.run_until(lambda: alice.engine.my_id is not None and bob.engine.my_id is not None, 2)
    net.run_until(lambda: alice.engine.session(bob.peer_id).online and bob.engine.session(alice.peer_id).online, 3)
    return alice, bob


def read_marks(peer: Peer, other: Peer) -> list[ReadUpTo]:
    return [e for e in peer.events if isinstance(e, ReadUpTo) and e.peer_id == other.peer_id]


def test_the_reader_reading_moves_the_senders_read_mark_to_its_latest_message(net: PeerNet) -> None:
    alice, bob = pair(net)
    first = alice.send(bob, "one")
    second = alice.send(bob, "two")
    net.run_until(lambda: alice.status(second) == "delivered" and alice.status(first) == "delivered", 3)
    assert read_marks(alice, bob) == []  # delivered is not read
    bob.engine.mark_read(alice.peer_id, net.now)
    bob.flush()
    net.run_until(lambda: bool(read_marks(alice, bob)), 2)
    mark = read_marks(alice, bob)[-1]
    assert mark.message_id == second
    assert alice.store.read_marks()[bob.peer_id]["id"] == second
    peer = next(p for p in alice.engine.peers_json() if p["id"] == bob.peer_id)
    assert peer["read_up_to"] == {"id": second, "time": mark.time}
    # Reading again with nothing new sends nothing new.
    bob.engine.mark_read(alice.peer_id, net.now)
    bob.flush()
    net.run(1)
    assert len(read_marks(alice, bob)) == 1


def test_with_read_receipts_off_the_sender_never_learns(net: PeerNet) -> None:
    alice, bob = pair(net)
    bob.store.set_setting("read_receipts", False)
    sent = alice.send(bob, "private")
    net.run_until(lambda: alice.status(sent) == "delivered", 3)
    bob.engine.mark_read(alice.peer_id, net.now)
    bob.flush()
    net.run(2)
    assert read_marks(alice, bob) == []
    assert alice.store.read_marks() == {}
    assert bob.store.unread_counts() == {}  # still read locally


def test_a_read_without_a_link_goes_on_the_next_one(net: PeerNet) -> None:
    alice, bob = pair(net)
    sent = alice.send(bob, "while we are apart")
    net.run_until(lambda: alice.status(sent) == "delivered", 3)
    net.cut(alice, bob)
    net.run_until(lambda: bob.engine.session(alice.peer_id).ready_link is None, 60)
    bob.engine.mark_read(alice.peer_id, net.now)
    bob.flush()
    net.run(1)
    assert read_marks(alice, bob) == []
    net.mend(alice, bob)
    alice.send(bob, "back")  # a new link opens for this one
    net.run_until(lambda: bool(read_marks(alice, bob)), 30)
    assert read_marks(alice, bob)[-1].message_id == sent


def test_a_read_frame_naming_someone_elses_or_an_older_message_changes_nothing(net: PeerNet) -> None:
    alice, bob = pair(net)
    old = alice.send(bob, "old")
    new = alice.send(bob, "new")
    net.run_until(lambda: alice.status(new) == "delivered", 3)
    assert alice.store.mark_seen_by(bob.peer_id, new, now=net.now) is not None
    assert alice.store.mark_seen_by(bob.peer_id, old, now=net.now) is None  # never backwards
    assert alice.store.mark_seen_by(bob.peer_id + 7, new, now=net.now) is None  # not sent to that peer
    assert alice.store.mark_seen_by(bob.peer_id, "no-such-message", now=net.now) is None
    assert alice.store.read_marks()[bob.peer_id]["id"] == new


def test_a_nickname_is_shown_in_the_peer_list_and_forgotten_when_cleared(net: PeerNet) -> None:
    alice, bob = pair(net)
    alice.events.clear()
    alice.engine.set_nickname(bob.peer_id, "Bobby")
    events = alice.engine.take_events()
    assert any(isinstance(e, PeersChanged) for e in events)
    peer = next(p for p in alice.engine.peers_json() if p["id"] == bob.peer_id)
    assert (peer["nickname"], peer["name"]) == ("Bobby", "bob")
    alice.engine.set_nickname(bob.peer_id, None)
    peer = next(p for p in alice.engine.peers_json() if p["id"] == bob.peer_id)
    assert peer["nickname"] is None
