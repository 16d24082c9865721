"""The key-change gate and verification (webpeer/trust.py): the pure rules,
then the engine's behaviour on the in-memory network with literal times
(tests/unit/peer_net.py; ``net.new_key`` gives a known id a new key)."""

from __future__ import annotations

import re
import sqlite3
import struct

import pytest
from peer_net import Peer, PeerNet, online_pair

from rendezvous.stun import MessageClass, Method, pack_type
from webpeer.api import ApiError
from webpeer.events import MessageAdded, PeerTrustChanged
from webpeer.identity import fingerprint
from webpeer.link import LinkState, Role
from webpeer.store import KnownPeer, Status
from webpeer.trust import KEY_BLOCKED, KEY_CHANGED, Action, TrustState, assess, link_verdict, safety_number, send_gate

KEY_A, KEY_B, KEY_C = b"A" * 32, b"B" * 32, b"C" * 32


def known(current: bytes, **fields: object) -> KnownPeer:
    values: dict[str, object] = {
        "peer_id": 2,
        "public_key": current,
        "name": "bob",
        "first_seen": 1.0,
        "last_seen": 2.0,
        "key_changed": False,
        "previous_key": None,
        **fields,
    }
    return KnownPeer(**values)  # type: ignore[arg-type]


# ------------------------------------------------------------ pure rules


def test_the_safety_number_is_the_same_from_both_sides_and_changes_with_either_key() -> None:
    number = safety_number(KEY_A, KEY_B)
    assert re.fullmatch(r"[0-9]{5}( [0-9]{5}){11}", number), number
    assert safety_number(KEY_B, KEY_A) == number
    assert safety_number(KEY_A, KEY_C) != number
    assert safety_number(KEY_C, KEY_B) != number


def test_assess_tells_trusted_changed_and_blocked_apart_and_flags_a_verified_key_that_changed() -> None:
    trusted = assess(known(KEY_A, verified_key=KEY_A))
    assert (trusted.state, trusted.verified, trusted.verified_key_changed) == (TrustState.TRUSTED, True, False)
    changed = assess(known(KEY_B, key_changed=True, previous_key=KEY_A, verified_key=KEY_A))
    assert (changed.state, changed.trusted_key, changed.verified, changed.verified_key_changed) == (
        TrustState.CHANGED,
        KEY_A,
        False,
        True,
    )
    unverified_change = assess(known(KEY_B, key_changed=True, previous_key=KEY_A))
    assert unverified_change.verified_key_changed is False
    blocked = assess(known(KEY_B, key_changed=True, previous_key=KEY_A, blocked=True))
    assert blocked.state is TrustState.BLOCKED
    assert assess(None).state is TrustState.TRUSTED  # a peer never seen: its first key will be trusted


def test_the_gate_holds_for_a_change_and_fails_for_a_block() -> None:
    assert send_gate(assess(known(KEY_A))) is None
    assert send_gate(assess(known(KEY_B, key_changed=True, previous_key=KEY_A))) == (Status.HELD, KEY_CHANGED)
    assert send_gate(assess(known(KEY_B, blocked=True))) == (Status.FAILED, KEY_BLOCKED)


def test_link_verdicts() -> None:
    changed = assess(known(KEY_B, key_changed=True, previous_key=KEY_A))
    assert link_verdict(changed, KEY_B, Role.CONNECTOR) == KEY_CHANGED  # we never open one to the new key
    assert link_verdict(changed, KEY_B, Role.ACCEPTOR) is None  # it may talk to us (hidden)
    assert link_verdict(changed, KEY_A, Role.CONNECTOR) is None  # the trusted key's link stays
    blocked = assess(known(KEY_B, blocked=True, key_changed=True, previous_key=KEY_A))
    assert link_verdict(blocked, KEY_B, Role.ACCEPTOR) == KEY_BLOCKED
    accepted = assess(known(KEY_B, previous_key=KEY_A))
    assert link_verdict(accepted, KEY_A, Role.CONNECTOR) is not None  # the old key is no longer trusted
    assert link_verdict(accepted, None, Role.ACCEPTOR) is None  # not authenticated yet


# ------------------------------------------------------------ through the engine


def spy_on_transmits(net: PeerNet) -> list[tuple[str, str]]:
    """(source host, destination host) of every datagram from now on."""
    seen: list[tuple[str, str]] = []
    transmit = net.transmit

    def spy(data: bytes, source: tuple[str, int], destination: tuple[str, int]) -> None:
        seen.append((source[0], destination[0]))
        transmit(data, source, destination)

    net.transmit = spy  # type: ignore[method-assign]
    return seen


def key_change_seen(net: PeerNet, alice: Peer, peer_id: int) -> None:
    net.run_until(lambda: alice.engine.trust.of(peer_id).state is TrustState.CHANGED, 3)


def stored_texts(peer: Peer, other: int) -> list[str]:
    """Every message of the conversation in the file, hidden ones too."""
    with sqlite3.connect(peer.store.path) as conn:
        return [row[0] for row in conn.execute("SELECT text FROM messages WHERE peer = ? ORDER BY rowid", (other,))]


def decide(peer: Peer, other: int, action: Action) -> dict[str, object]:
    """The user's decision, as PeerNode.set_trust makes it: one commit, then a flush."""
    with peer.store.batch():
        answer = peer.engine.set_trust(other, action, peer.net.now)
    peer.flush()
    return answer


def test_nothing_goes_to_a_new_key_until_the_user_accepts_it_and_then_the_held_messages_go(net: PeerNet) -> None:
    alice, bob = online_pair(net)
    bob_id = bob.peer_id
    before = alice.send(bob, "before")
    net.run_until(lambda: alice.status(before) == "delivered", 1)
    net.stop(bob)
    # The server's PRESENCE says bob is offline before his goodbye (CONNECTION_CLOSE)
    # arrives: wait for both, as the old LIST every second did by its pace.
    net.run_until(lambda: not alice.engine.session(bob_id).online and alice.engine.session(bob_id).link is None, 3)
    waiting = alice.send(bob_id, "sent while bob was away")
    assert alice.status(waiting) == "queued"

    seen = spy_on_transmits(net)
    bob2 = net.new_key(bob)
    key_change_seen(net, alice, bob_id)
    assert bob2.peer_id == bob_id
    # The queued message is held, and so is a new one; both say why.
    assert alice.status(waiting) == "held"
    held = alice.send(bob_id, "is that you?")
    assert alice.status(held) == "held"
    assert alice.store.get_message(held)["error"] == KEY_CHANGED  # type: ignore[index]
    [peer] = [p for p in alice.engine.peers_json() if p["id"] == bob_id]
    assert (peer["trust"], peer["key_changed"], peer["verified_key_changed"]) == ("changed", True, False)
    assert any(isinstance(e, PeerTrustChanged) and e.peer_id == bob_id and e.trust == "changed" for e in alice.events)

    net.run(15)  # listings, keepalives, expiry of any attempt: still nothing
    assert alice.status(waiting) == "held" and alice.status(held) == "held"
    assert (alice.nat.public_ip, bob2.nat.public_ip) not in seen  # not one datagram to the new key's host
    assert not [link for link in alice.engine.links() if link.peer_key == bob2.identity.public_key]
    assert bob2.store.conversation(alice.peer_id) == []

    answer = decide(alice, bob_id, Action.ACCEPT)
    assert answer["trust"] == "trusted"
    net.run_until(lambda: alice.status(held) == "delivered" and alice.status(waiting) == "delivered", 3)
    assert alice.statuses(held) == ["sending", "sent", "delivered"]
    assert [m["text"] for m in bob2.store.conversation(alice.peer_id)] == ["sent while bob was away", "is that you?"]


def test_the_hold_survives_a_restart(net: PeerNet) -> None:
    alice, bob = online_pair(net)
    bob_id = bob.peer_id
    net.new_key(bob)
    key_change_seen(net, alice, bob_id)
    held = alice.send(bob_id, "held")
    net.stop(alice)
    alice = net.start_again(alice)
    net.run(5)
    assert alice.engine.trust.of(bob_id).state is TrustState.CHANGED
    assert alice.status(held) == "held"


def test_a_blocked_key_is_never_sent_anything_and_nothing_from_it_is_kept(net: PeerNet) -> None:
    alice, bob = online_pair(net)
    bob_id = bob.peer_id
    bob2 = net.new_key(bob)
    key_change_seen(net, alice, bob_id)
    held = alice.send(bob_id, "held, then blocked")
    answer = decide(alice, bob_id, Action.BLOCK)
    assert answer["trust"] == "blocked"
    message = alice.store.get_message(held)
    assert message is not None and (message["status"], message["error"]) == ("failed", KEY_BLOCKED)
    with pytest.raises(ApiError) as refused:
        alice.engine.draft(bob_id, "one more", net.now)
    assert refused.value.status == 409
    # A retry of the failed message fails again at once.
    alice.engine.retry(held, net.now)
    alice.flush()
    assert alice.status(held) == "failed"

    # The new key writes to alice: its link is closed before anything is stored or acknowledged.
    knock = bob2.send(alice, "let me in")
    net.run(12)
    assert "let me in" not in stored_texts(alice, bob_id)
    assert bob2.status(knock) != "delivered"
    assert [m["text"] for m in bob2.store.conversation(alice.peer_id)] == ["let me in"]  # nothing from alice
    assert alice.engine.stats["unknown_frames"] == 0
    assert all(
        link.state is LinkState.CLOSED for link in alice.engine.links() if link.peer_key == bob2.identity.public_key
    )


def test_messages_from_a_changed_key_are_kept_hidden_until_the_user_accepts_it(net: PeerNet) -> None:
    alice, bob = online_pair(net)
    bob_id = bob.peer_id
    first = bob.send(alice, "from the old key")
    net.run_until(lambda: bob.status(first) == "delivered", 1)
    bob2 = net.new_key(bob)
    key_change_seen(net, alice, bob_id)
    alice.events.clear()

    hello = bob2.send(alice, "new phone, same bob")
    net.run_until(lambda: bob2.status(hello) == "delivered", 3)  # alice stored and acknowledged it
    assert "new phone, same bob" in stored_texts(alice, bob_id)
    assert [m["text"] for m in alice.store.conversation(bob_id)] == ["from the old key"]
    assert alice.store.unread_counts().get(bob_id, 0) == 1  # only the old one
    assert not [e for e in alice.events if isinstance(e, MessageAdded)]
    # Its link to alice is up, and still nothing of alice's goes on it.
    reply = alice.send(bob_id, "prove it")
    net.run(2)
    assert alice.status(reply) == "held"
    assert [m["text"] for m in bob2.store.conversation(alice.peer_id)] == ["new phone, same bob"]

    decide(alice, bob_id, Action.ACCEPT)
    conversation = [m for m in alice.store.conversation(bob_id) if m["from"] == bob_id]
    assert [(m["text"], m["key_changed"]) for m in conversation] == [
        ("from the old key", False),
        ("new phone, same bob", True),
    ]
    assert alice.store.unread_counts()[bob_id] == 2
    net.run_until(lambda: alice.status(reply) == "delivered", 2)


def test_the_trusted_key_coming_back_lifts_the_hold_by_itself(net: PeerNet) -> None:
    alice, bob = online_pair(net)
    bob_id = bob.peer_id
    bob2 = net.new_key(bob)
    key_change_seen(net, alice, bob_id)
    stray = bob2.send(alice, "from the stranger")
    net.run_until(lambda: bob2.status(stray) == "delivered", 3)
    held = alice.send(bob_id, "waiting for the real bob")
    assert alice.status(held) == "held"

    net.stop(bob2)
    bob3 = net.start_again(bob)  # bob's own key again
    net.run_until(lambda: alice.status(held) == "delivered", 4)
    assert alice.engine.trust.of(bob_id).state is TrustState.TRUSTED
    assert [m["text"] for m in bob3.store.conversation(alice.peer_id)] == ["waiting for the real bob"]
    # What the unaccepted key sent is dropped, not revealed.
    assert "from the stranger" not in stored_texts(alice, bob_id)
    assert any(isinstance(e, PeerTrustChanged) and e.trust == "trusted" for e in alice.events)


def test_a_verified_peer_whose_key_changes_is_flagged_louder(net: PeerNet) -> None:
    alice, bob = online_pair(net)
    bob_id = bob.peer_id
    answer = decide(alice, bob_id, Action.VERIFY)
    assert answer["verified"] is True
    [peer] = [p for p in alice.engine.peers_json() if p["id"] == bob_id]
    assert peer["verified"] is True
    bob2 = net.new_key(bob)
    key_change_seen(net, alice, bob_id)
    [peer] = [p for p in alice.engine.peers_json() if p["id"] == bob_id]
    assert (peer["verified"], peer["verified_key_changed"], peer["trust"]) == (False, True, "changed")
    assert any(isinstance(e, PeerTrustChanged) and e.verified_key_changed for e in alice.events)
    safety = alice.engine.safety(bob_id)
    assert safety["previous_fingerprint"] == fingerprint(bob.identity.public_key)
    assert safety["their_fingerprint"] == fingerprint(bob2.identity.public_key)
    # Accepting the new key does not carry the verification over to it.
    decide(alice, bob_id, Action.ACCEPT)
    assert alice.engine.safety(bob_id)["verified"] is False
    decide(alice, bob_id, Action.VERIFY)
    assert alice.engine.safety(bob_id)["verified"] is True
    decide(alice, bob_id, Action.UNVERIFY)
    assert alice.engine.safety(bob_id)["verified"] is False


def test_both_peers_compute_the_same_safety_number(net: PeerNet) -> None:
    alice, bob = online_pair(net)
    mine, theirs = alice.engine.safety(bob.peer_id), bob.engine.safety(alice.peer_id)
    assert mine["safety_number"] == theirs["safety_number"]
    assert mine["my_fingerprint"] == theirs["their_fingerprint"] == alice.identity.fingerprint
    with pytest.raises(ApiError) as unknown:
        alice.engine.safety(99)
    assert unknown.value.status == 404


def test_actions_that_do_not_apply_are_refused(net: PeerNet) -> None:
    alice, bob = online_pair(net)
    with pytest.raises(ApiError) as nothing_to_accept:
        alice.engine.set_trust(bob.peer_id, Action.ACCEPT, net.now)
    assert nothing_to_accept.value.status == 409
    decide(alice, bob.peer_id, Action.BLOCK)
    with pytest.raises(ApiError) as twice:
        alice.engine.set_trust(bob.peer_id, Action.BLOCK, net.now)
    assert twice.value.status == 409
    with pytest.raises(ApiError) as unknown:
        alice.engine.set_trust(99, Action.ACCEPT, net.now)
    assert unknown.value.status == 404


def test_a_connect_answer_that_brings_a_new_key_opens_no_link_to_it(net: PeerNet) -> None:
    alice, bob = online_pair(net)
    bob_id = bob.peer_id
    # The server's PRESENCE (or, against an old server, the next LIST) would
    # show bob2's key at once: lose them, so that the CONNECT answer is the
    # first to bring it.
    presence = struct.pack("!H", pack_type(Method.PRESENCE, MessageClass.REQUEST))
    net.lose = lambda data, source, destination: data[:2] == presence
    bob2 = net.new_key(bob)
    net.run(0.1)  # bob2 is registered; alice has not heard of the change yet
    assert alice.engine.session(bob_id).online and alice.engine.trust.of(bob_id).state is TrustState.TRUSTED
    sent = alice.send(bob_id, "to whoever answers")
    assert alice.status(sent) == "sending"  # a CONNECT is on its way; its answer carries bob2's key
    net.run(10)
    assert alice.status(sent) == "held"
    assert not [link for link in alice.engine.links() if link.peer_key == bob2.identity.public_key]
    assert bob2.store.conversation(alice.peer_id) == []
