"""The offline mailbox through the pure engines (tests/unit/peer_net.py,
literal times): a message for a peer that is offline is sealed and left at
the server, fetched when the peer comes back, and delivered (docs/PROTOCOL.md 11.9)."""

from __future__ import annotations

import dataclasses

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from peer_net import Peer, PeerNet

from rendezvous.mailbox import Mail, MailLimits
from webpeer.events import MessageAdded
from webpeer.mailbox_seal import mail_id, seal

AFTER = 5.0  # --mailbox-after in these tests


def met_then_apart(net: PeerNet, **config: object) -> tuple[Peer, Peer, int, int]:
    """alice and bob were online together (each holds the other's key);
    then bob stops, and alice has seen him go."""
    alice = net.add("alice", mailbox_after=AFTER, **config)
    bob = net.add("bob", mailbox_after=AFTER)
    net.run_until(lambda: alice.engine.my_id is not None and bob.engine.my_id is not None, 2)
    net.run_until(lambda: alice.engine.session(bob.peer_id).online and bob.engine.session(alice.peer_id).online, 5)
    ids = alice.peer_id, bob.peer_id
    net.stop(bob)
    net.run_until(lambda: not alice.engine.session(ids[1]).online, 5)
    return alice, bob, *ids


def shown(peer: Peer, message_id: str) -> bool:
    return any(isinstance(e, MessageAdded) and e.message["id"] == message_id for e in peer.events)


def test_a_message_for_an_offline_peer_waits_in_the_mailbox_and_is_delivered(net: PeerNet) -> None:
    alice, bob, alice_id, bob_id = met_then_apart(net)
    sent = alice.send(bob_id, "hello while you sleep")
    net.run_until(lambda: alice.status(sent) == "stored", AFTER + 5)
    assert alice.statuses(sent) == ["stored"]  # from queued, straight to stored on server
    (stored,) = net.mailbox[bob_id].values()
    assert (stored.sender, stored.mail_id) == (alice_id, mail_id(alice_id, sent))
    assert b"hello" not in stored.sealed  # the server holds ciphertext only
    net.stop(alice)
    # Bob comes back while alice is away: he gets it from the mailbox.
    bob = net.start_again(bob, last_id=bob_id)
    received = f"{alice_id}:{sent}"
    net.run_until(lambda: shown(bob, received), 5)
    message = bob.store.get_message(received)
    assert message is not None and message["text"] == "hello while you sleep"
    net.run_until(lambda: not net.mailbox[bob_id], 5)  # deleted once stored
    # Alice comes back: her stored message reaches bob directly, he acks it
    # (stored once), and she sees it delivered.
    alice = net.start_again(alice, last_id=alice_id)
    net.run_until(lambda: alice.status(sent) == "delivered", 20)
    assert [m["id"] for m in bob.store.conversation(alice_id)].count(received) == 1
    assert sum(1 for e in bob.events if isinstance(e, MessageAdded) and e.message["id"] == received) == 1


def test_a_peer_gone_for_the_grace_already_gets_the_message_at_the_next_sweep(net: PeerNet) -> None:
    alice, _, _, bob_id = met_then_apart(net)
    # Just gone: the grace runs from when alice heard it (he may be restarting).
    gone_at = net.now
    first = alice.send(bob_id, "are you restarting?")
    net.run_until(lambda: alice.status(first) == "stored", AFTER + 5)
    assert net.now - gone_at >= AFTER
    # Gone for longer than the grace: no second wait.
    net.run(AFTER)
    written_at = net.now
    second = alice.send(bob_id, "you have been away a while")
    net.run_until(lambda: alice.status(second) == "stored", AFTER + 5)
    assert net.now - written_at < AFTER / 2  # a sweep (1 s here), not the grace


def test_over_quota_the_sender_is_told_and_nothing_stored_is_lost(net: PeerNet) -> None:
    net.server.config = dataclasses.replace(net.server.config, mailbox=MailLimits(max_messages=1))
    alice, _, _, bob_id = met_then_apart(net)
    first = alice.send(bob_id, "one")
    second = alice.send(bob_id, "two")
    net.run_until(lambda: alice.status(second) == "failed", AFTER + 5)
    assert alice.status(first) == "stored"
    message = alice.store.get_message(second)
    assert message is not None and message["error"] == "the peer's mailbox on the server is full"
    assert [m.mail_id for m in net.mailbox[bob_id].values()] == [mail_id(alice.peer_id, first)]


def test_a_letter_signed_by_another_key_is_stored_hidden(net: PeerNet) -> None:
    alice, bob, alice_id, bob_id = met_then_apart(net)
    # Someone else seals a letter in alice's name (the server files it as hers).
    forger = Ed25519PrivateKey.generate()
    sealed = seal(forger, alice_id, bob_id, bob.identity.public_key, "forged1", "it is me, alice", net.now)
    net.mailbox.setdefault(bob_id, {})[mail_id(alice_id, "forged1")] = Mail(
        bob_id, alice_id, mail_id(alice_id, "forged1"), sealed, net.now
    )
    bob = net.start_again(bob, last_id=bob_id)
    net.run_until(lambda: not net.mailbox[bob_id], 5)
    # Kept, as trust.py keeps what a link with a key not accepted brings, but not shown.
    stored = bob.store.get_message(f"{alice_id}:forged1")
    assert stored is not None and stored["key_changed"]
    assert not shown(bob, f"{alice_id}:forged1")
    assert f"{alice_id}:forged1" not in [m["id"] for m in bob.store.conversation(alice_id)]
    assert bob.engine.stats["mail_hidden"] == 1


def test_with_no_mailbox_a_message_waits_queued(net: PeerNet) -> None:
    alice, _, _, bob_id = met_then_apart(net, mailbox=False)
    sent = alice.send(bob_id, "stays here")
    net.run(AFTER * 4)
    assert alice.status(sent) == "queued"
    assert not net.mailbox.get(bob_id)


def test_a_message_sent_into_a_link_that_died_with_its_peer_is_stored_too(net: PeerNet) -> None:
    alice = net.add("alice", mailbox_after=AFTER)
    bob = net.add("bob", mailbox_after=AFTER)
    net.run_until(lambda: alice.engine.my_id is not None and bob.engine.my_id is not None, 2)
    first = alice.send(bob.peer_id, "hello")
    net.run_until(lambda: alice.status(first) == "delivered", 5)
    alice_id, bob_id = alice.peer_id, bob.peer_id
    bob.crash()  # gone, still listed until its registration expires
    sent = alice.send(bob_id, "into a link that is dead")
    assert alice.status(sent) == "sent"
    # Its registration expires (TTL 60 s): offline; then, after AFTER, in the mailbox.
    net.run_until(lambda: alice.status(sent) == "stored", 60 + AFTER + 10)
    bob = net.start_again(bob, last_id=bob_id)
    net.run_until(lambda: alice.status(sent) == "delivered", 10)
    net.run_until(lambda: not net.mailbox[bob_id], 5)
    texts = [m["text"] for m in bob.store.conversation(alice_id)]
    assert texts.count("into a link that is dead") == 1


def test_garbage_in_the_mailbox_is_dropped_counted_and_deleted(net: PeerNet) -> None:
    _, bob, alice_id, bob_id = met_then_apart(net)
    junk = Mail(bob_id, alice_id, bytes(16), b"\x00" * 200, net.now)
    net.mailbox.setdefault(bob_id, {})[junk.mail_id] = junk
    bob = net.start_again(bob, last_id=bob_id)
    net.run_until(lambda: not net.mailbox[bob_id], 5)
    assert bob.engine.stats["mail_dropped: does not open"] == 1
    assert bob.store.conversation(alice_id) == []  # nothing stored of it
