"""Bad targets and cancel (issue 9), through the pure PeerEngine with literal
times (tests/unit/peer_net.py): an id the server never assigned, our own id,
sends before registration, and a message the user takes back."""

from __future__ import annotations

import pytest
from peer_net import Peer, PeerNet, online_pair

from webpeer.api import ApiError
from webpeer.events import StatusChanged
from webpeer.message_flow import CANCELLED
from webpeer.targets import LOOKUP_WAIT


def failures(peer: Peer, message_id: str) -> list[tuple[str, str | None]]:
    return [(e.status, e.error) for e in peer.events if isinstance(e, StatusChanged) and e.message_id == message_id]


# ------------------------------------------------------------ ids never assigned


def test_a_send_to_an_id_never_assigned_is_refused_and_nothing_is_stored(net: PeerNet) -> None:
    alice, bob = online_pair(net)
    refused = alice.submit(7, "anyone there?")
    assert alice.store.get_message(refused) is None  # held while the server is asked
    took = net.run_until(lambda: refused in alice.refused, 1)
    assert took < 0.05  # one round trip to the server
    assert alice.store.conversation(7) == []
    assert 7 not in alice.engine.peer_states  # no phantom peer in the list
    assert [p["id"] for p in alice.engine.peers_json()] == [bob.peer_id]
    assert net.server.stats["introductions_sent"] == 0


def test_a_send_to_an_assigned_id_whose_peer_is_offline_is_queued_and_goes_later(net: PeerNet) -> None:
    carol = net.add("carol")
    net.run_until(lambda: carol.engine.my_id is not None, 2)
    net.stop(carol)  # id 1 is hers, though she is gone; alice never heard of her
    alice = net.add("alice")
    net.run_until(lambda: alice.engine.my_id is not None, 2)
    waiting = alice.submit(1, "for carol")
    net.run_until(lambda: alice.store.get_message(waiting) is not None, 1)
    assert alice.status(waiting) == "queued" and alice.refused == []
    # Known now: the next send is stored at once, with no second question.
    again = alice.submit(1, "again")
    assert alice.status(again) == "queued" and not alice.held
    carol = net.start_again(carol)
    net.run_until(lambda: alice.status(waiting) == alice.status(again) == "delivered", 4)


def test_a_send_to_an_online_peer_not_listed_yet_asks_and_the_answer_connects(net: PeerNet) -> None:
    carol = net.add("carol")
    net.run_until(lambda: carol.engine.my_id is not None, 2)
    alice = net.add("alice")
    net.run_until(lambda: alice.engine.my_id is not None, 2)
    assert alice.engine.session(carol.peer_id).public_key is None  # her first LIST is still on its way
    sent = alice.submit(carol, "hello carol")
    assert alice.held and alice.store.get_message(sent) is None
    took = net.run_until(lambda: alice.store.get_message(sent) is not None and alice.status(sent) == "delivered", 1)
    assert took < 0.1  # the lookup's CONNECT was also the connection's
    assert alice.refused == [] and net.server.stats["connect"] == 1


def test_a_send_to_a_known_peer_asks_the_server_nothing(net: PeerNet) -> None:
    alice, bob = online_pair(net)
    connects = net.server.stats["connect"]
    sent = alice.submit(bob, "hot path")
    assert alice.status(sent) == "sending" and not alice.held  # stored in the same flush
    net.run_until(lambda: alice.status(sent) == "delivered", 1)
    assert net.server.stats["connect"] == connects + 1  # the connection's own CONNECT, no lookup
    alice.submit(bob, "on the link")
    net.run(1)
    assert net.server.stats["connect"] == connects + 1


def test_an_unanswered_lookup_stores_the_message_queued(net: PeerNet) -> None:
    alice, _ = online_pair(net)
    net.server_down = True
    held = alice.submit(5, "the server is silent")
    took = net.run_until(lambda: alice.store.get_message(held) is not None, LOOKUP_WAIT + 1)
    assert took <= LOOKUP_WAIT + 0.1
    assert alice.status(held) == "queued" and alice.refused == []


def test_a_queued_message_to_an_id_the_server_then_says_it_never_gave_fails(net: PeerNet) -> None:
    alice, bob = online_pair(net)
    my_id = alice.peer_id
    net.stop(alice)
    net.server_down = True
    alice = net.start_again(alice, last_id=my_id)
    queued = alice.submit(9, "nobody has 9")  # cannot ask: stored, queued
    for_bob = alice.submit(bob, "bob exists")
    assert alice.status(queued) == alice.status(for_bob) == "queued"
    net.server_down = False
    net.run_until(lambda: alice.status(queued) == "failed", 40)
    assert failures(alice, queued)[-1] == ("failed", "unknown peer 9")
    net.run_until(lambda: alice.status(for_bob) == "delivered", 5)
    assert alice.status(queued) == "failed"  # final: nothing retries it


def test_own_id_is_refused(net: PeerNet) -> None:
    alice, _ = online_pair(net)
    with pytest.raises(ApiError) as refused:
        alice.submit(alice.peer_id, "note to self")
    assert (refused.value.status, refused.value.message) == (400, "cannot send a message to yourself")


# ------------------------------------------------------------ before registration


def test_a_restarted_peer_queues_sends_under_its_last_id_until_the_server_is_back(net: PeerNet) -> None:
    alice, bob = online_pair(net)
    my_id = alice.peer_id
    net.stop(alice)
    net.server_down = True
    alice = net.start_again(alice, last_id=my_id)
    net.run(3)
    assert alice.engine.registration.state.value != "registered"
    assert alice.engine.me()["id"] == my_id and not alice.engine.me()["registered"]
    sent = alice.submit(bob, "written while the server is down")
    assert alice.status(sent) == "queued"
    assert alice.store.get_message(sent)["from"] == my_id  # type: ignore[index]
    net.server_down = False
    net.run_until(lambda: alice.status(sent) == "delivered", 40)
    assert [m["text"] for m in bob.store.conversation(my_id)] == ["written while the server is down"]


def test_a_peer_that_never_registered_cannot_send_and_says_why(net: PeerNet) -> None:
    net.server_down = True
    alice = net.add("alice")
    with pytest.raises(ApiError) as refused:
        alice.submit(2, "too early")
    assert refused.value.status == 503
    assert "never registered" in refused.value.message


# ------------------------------------------------------------ cancel


def test_a_cancelled_message_is_never_sent_even_when_the_peer_comes_back(net: PeerNet) -> None:
    alice, bob = online_pair(net)
    bob_id = bob.peer_id
    net.stop(bob)
    # The server's PRESENCE says bob is offline before his goodbye (CONNECTION_CLOSE)
    # arrives: wait for both, as the old LIST every second did by its pace.
    net.run_until(lambda: not alice.engine.session(bob_id).online and alice.engine.session(bob_id).link is None, 3)
    dropped = alice.send(bob_id, "never mind")
    kept = alice.send(bob_id, "this one")
    assert alice.status(dropped) == "queued"
    alice.engine.cancel(dropped, net.now)
    alice.flush()
    assert alice.store.get_message(dropped)["error"] == CANCELLED  # type: ignore[index]
    assert failures(alice, dropped) == [("failed", CANCELLED)]
    with pytest.raises(ApiError) as twice:
        alice.engine.cancel(dropped, net.now)
    assert twice.value.status == 409
    bob = net.start_again(bob)
    net.run_until(lambda: alice.status(kept) == "delivered", 5)
    net.run(10)
    assert alice.status(dropped) == "failed"
    assert [m["text"] for m in bob.store.conversation(alice.peer_id)] == ["this one"]


def test_a_message_being_sent_can_be_cancelled_but_not_one_sent(net: PeerNet) -> None:
    alice, bob = online_pair(net)
    bob.crash()  # still listed: alice tries to reach it
    sending = alice.send(bob, "cut short")
    assert alice.status(sending) == "sending"
    alice.engine.cancel(sending, net.now)
    alice.flush()
    assert alice.status(sending) == "failed"
    bob = net.start_again(bob)
    net.run_until(lambda: bob.engine.my_id is not None, 2)
    later = alice.send(bob, "after")
    net.run_until(lambda: alice.status(later) == "delivered", 10)
    net.run(2)
    assert [m["text"] for m in bob.store.conversation(alice.peer_id)] == ["after"]
    with pytest.raises(ApiError) as delivered:
        alice.engine.cancel(later, net.now)
    assert delivered.value.status == 409
    incoming = bob.send(alice, "hi")
    net.run_until(lambda: bob.status(incoming) == "delivered", 2)
    with pytest.raises(ApiError) as theirs:
        alice.engine.cancel(f"{bob.peer_id}:{incoming}", net.now)
    assert theirs.value.status == 404
    with pytest.raises(ApiError) as unknown:
        alice.engine.cancel("no-such-id", net.now)
    assert unknown.value.status == 404
