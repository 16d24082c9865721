"""The peer's decisions, through the pure PeerEngine with literal times
(tests/unit/peer_net.py: a ServerCore and engines behind modelled NATs,
datagrams moved in memory).  Each test names the rule it pins down."""

from __future__ import annotations

from peer_net import Peer, PeerNet

from webpeer.engine import QUIC_IDLE_TIMEOUT
from webpeer.events import ConnectionChanged
from webpeer.link import LinkState, Role
from webpeer.message_flow import RECEIPT_WAIT_MAX
from webpeer.pathfinder import SPARE_SOCKETS, SPRAY_PROBES, OpenSpare
from webpeer.peer_session import CONNECT_TIMEOUT, KEEPALIVE_INTERVAL, UPGRADE_INTERVAL
from webpeer.punch import TIMEOUT as CHECKS_TIMEOUT
from webpeer.store import StoreError


def registered_pair(net: PeerNet, a_nat: str = "none", b_nat: str = "none", **config: object) -> tuple[Peer, Peer]:
    alice = net.add("alice", a_nat, **config)
    bob = net.add("bob", b_nat, **config)
    net.run_until(lambda: alice.engine.my_id is not None and bob.engine.my_id is not None, 2)
    # Both listed each other (LIST every second), and NAT discovery is done.
    net.run_until(lambda: alice.engine.session(bob.peer_id).online and bob.engine.session(alice.peer_id).online, 3)
    net.run(2)
    return alice, bob


def connection_states(peer: Peer, other: Peer) -> list[str | None]:
    states = []
    for event in peer.events:
        if isinstance(event, ConnectionChanged) and event.peer_id == other.peer_id:
            state = event.connection["state"] if event.connection else None
            if not states or states[-1] != state:
                states.append(state)
    return states


# ------------------------------------------------------------ message states


def test_a_message_goes_sending_sent_delivered_and_each_step_is_told(net: PeerNet) -> None:
    alice, bob = registered_pair(net)
    sent = alice.send(bob, "hello")
    assert alice.status(sent) == "sending"  # bob is online, no link yet
    took = net.run_until(lambda: alice.status(sent) == "delivered", 2)
    assert took < 0.1  # a few 5 ms round trips, no timer waited on
    assert alice.statuses(sent) == ["sent", "delivered"]
    assert [m["text"] for m in bob.store.conversation(alice.peer_id)] == ["hello"]
    # On the ready link, the next one is stored as sent at once.
    again = alice.send(bob, "again")
    assert alice.status(again) == "sent"
    net.run_until(lambda: alice.status(again) == "delivered", 1)


def test_a_message_for_an_offline_peer_waits_queued_then_goes(net: PeerNet) -> None:
    alice = net.add("alice")
    net.run_until(lambda: alice.engine.my_id is not None, 2)
    queued = alice.send(2, "for whoever gets id 2")
    assert alice.status(queued) == "queued"
    net.run(5)
    assert alice.status(queued) == "queued"  # nothing happens while nobody is there
    bob = net.add("bob")
    net.run_until(lambda: alice.status(queued) == "delivered", 4)
    assert bob.peer_id == 2
    assert alice.statuses(queued) == ["sending", "sent", "delivered"]


# ------------------------------------------------------------ connect timeout


def test_an_unreachable_peer_keeps_its_messages_queued_and_gets_them_when_back(net: PeerNet) -> None:
    # Without the mailbox: once bob's registration expires (60 s) alice would
    # leave the message there, stored (test_mailbox_engine.py); this is about
    # the attempts.
    alice, bob = registered_pair(net, mailbox=False)
    bob.crash()  # still listed by the server, but gone
    sent = alice.send(bob, "into the void")
    started = net.now
    net.run(CONNECT_TIMEOUT - 0.1)
    assert alice.status(sent) == "sending"  # the relay was tried; nothing answered yet
    net.run_until(lambda: alice.status(sent) == "queued", 0.5)
    assert CONNECT_TIMEOUT - 0.1 <= net.now - started <= CONNECT_TIMEOUT + 0.1
    assert alice.engine.session(bob.peer_id).last_error == "could not reach the peer"
    assert [p["online"] for p in alice.engine.peers_json()] == [False]  # shown offline, though listed
    # It is never failed for that: attempts go on, further and further apart.
    net.run(120)
    assert alice.status(sent) == "queued"
    assert "failed" not in alice.statuses(sent)
    attempts = [s for s in alice.statuses(sent) if s == "sending"]
    assert 4 <= len(attempts) <= 10  # 1, 2, 4, 8, 16, 30 s apart (each attempt lasts 8 s)
    # Bob comes back: it goes, with no user action.
    bob = net.start_again(bob)
    took = net.run_until(lambda: alice.status(sent) == "delivered", 5)
    assert took < 2.5
    assert [m["text"] for m in bob.store.conversation(alice.peer_id)] == ["into the void"]


def test_a_peer_that_goes_silent_is_shown_offline_within_ten_seconds(net: PeerNet) -> None:
    alice, bob = registered_pair(net)
    first = alice.send(bob, "hello")
    net.run_until(lambda: alice.status(first) == "delivered", 1)
    bob.crash()
    took = net.run_until(lambda: not alice.engine.peers_json()[0]["online"], 12)
    # The last answered ping, the next one, then QUIC's idle timeout.
    assert QUIC_IDLE_TIMEOUT <= took <= KEEPALIVE_INTERVAL + QUIC_IDLE_TIMEOUT + 0.1 <= 10.1
    later = alice.send(bob, "are you there?")
    assert alice.status(later) == "queued"  # never "sent" into a dead link
    net.run(30)
    # Attempts to reach it come and go (sending, queued); none is "sent".
    assert alice.status(later) in ("queued", "sending")
    assert set(alice.statuses(later)) == {"sending", "queued"}


def test_a_receiver_that_could_not_store_gets_the_message_again(net: PeerNet, monkeypatch) -> None:
    alice, bob = registered_pair(net)
    first = alice.send(bob, "warm up")
    net.run_until(lambda: alice.status(first) == "delivered", 1)

    def disk_full(*args: object, **kwargs: object) -> set[str]:
        raise StoreError("database or disk is full")

    monkeypatch.setattr(bob.store, "add_messages", disk_full)
    sent = alice.send(bob, "while bob's disk is full")
    net.run(20)
    assert alice.status(sent) == "sent"  # QUIC delivered the bytes; no receipt, since nothing was stored
    assert bob.store.conversation(alice.peer_id)[-1]["text"] == "warm up"
    monkeypatch.undo()  # space again
    took = net.run_until(lambda: alice.status(sent) == "delivered", RECEIPT_WAIT_MAX + 1)
    assert took <= RECEIPT_WAIT_MAX + 0.1
    assert [m["text"] for m in bob.store.conversation(alice.peer_id)] == ["warm up", "while bob's disk is full"]


def test_messages_written_while_unregistered_wait_queued_and_go_on_registration(net: PeerNet) -> None:
    alice, bob = registered_pair(net)
    alice.engine.registration.stop(net.now)  # as if our registration was lost
    alice.flush()
    net.run(0.5)
    assert alice.engine.my_id is None or alice.engine.registration.state.value != "registered"
    sent = alice.send(bob, "written offline")
    assert alice.status(sent) == "queued"
    alice.engine.registration.start(net.now)
    alice.flush()
    net.run_until(lambda: alice.status(sent) == "delivered", 3)


# ------------------------------------------------------------ relay, then upgrade


def test_with_no_direct_path_the_relay_carries_it_and_it_upgrades_when_one_opens(net: PeerNet) -> None:
    alice, bob = registered_pair(net)
    net.cut(alice, bob)
    sent = alice.send(bob, "relayed")
    took = net.run_until(lambda: alice.status(sent) == "delivered", 4)
    # The relay starts beside the checks, not after their 2 s: CONNECT, the
    # handshake through the relay, the message and its receipt (10 ms round trips).
    assert took < 0.1
    assert alice.connection(bob) == {"state": "relayed", "address": None}
    assert bob.connection(alice) == {"state": "relayed", "address": None}
    relayed_at = net.now
    net.run(CHECKS_TIMEOUT)  # the checks end, finding nothing; the early direct guess is dropped
    assert [link.relayed for link in alice.engine.peer_links(bob.peer_id)] == [True]
    net.mend(alice, bob)
    net.run_until(lambda: (alice.connection(bob) or {}).get("state") == "direct", UPGRADE_INTERVAL + 2)
    assert net.now - relayed_at >= UPGRADE_INTERVAL - 1  # the periodic attempt, not sooner
    assert connection_states(alice, bob)[-2:] == ["relayed", "direct"]
    after = alice.send(bob, "direct now")
    net.run_until(lambda: alice.status(after) == "delivered", 1)
    assert [m["text"] for m in bob.store.conversation(alice.peer_id)] == ["relayed", "direct now"]
    assert not alice.engine._upgrades  # the direct link took over; no half-set-up one is left


def test_while_the_path_stays_cut_the_upgrade_attempts_keep_the_relay(net: PeerNet) -> None:
    alice, bob = registered_pair(net)
    net.cut(alice, bob)
    sent = alice.send(bob, "relayed")
    net.run_until(lambda: alice.status(sent) == "delivered", 4)
    net.run(3 * UPGRADE_INTERVAL)
    assert alice.connection(bob) == {"state": "relayed", "address": None}
    later = alice.send(bob, "still relayed")
    net.run_until(lambda: alice.status(later) == "delivered", 1)


# ------------------------------------------------------------ two links to one peer


def test_both_sides_connecting_at_once_keep_the_same_one_link(net: PeerNet) -> None:
    alice, bob = registered_pair(net)
    a = alice.send(bob, "from alice")
    b = bob.send(alice, "from bob")
    net.run_until(lambda: alice.status(a) == "delivered" and bob.status(b) == "delivered", 3)
    net.run(1)
    link_at_alice = alice.engine.session(bob.peer_id).link
    link_at_bob = bob.engine.session(alice.peer_id).link
    assert link_at_alice is not None and link_at_bob is not None
    assert link_at_alice.state is LinkState.READY and link_at_bob.state is LinkState.READY
    # The rule: both keep the connection the lower id (alice, 1) opened.
    assert link_at_alice.role is Role.CONNECTOR and link_at_bob.role is Role.ACCEPTOR
    assert link_at_alice.quic.host_cid in {c.cid for c in link_at_bob.quic._peer_cid_available} | {
        link_at_bob.quic._peer_cid.cid
    }
    # Nothing else is left open, and both messages arrived once.
    assert [link for link in alice.engine.links() if link.state is not LinkState.CLOSED] == [link_at_alice]
    assert [link for link in bob.engine.links() if link.state is not LinkState.CLOSED] == [link_at_bob]
    assert [m["text"] for m in alice.store.conversation(bob.peer_id)] == ["from alice", "from bob"]


# ------------------------------------------------------------ a peer restarts


def test_a_restarted_peer_is_reconnected_at_its_next_listing(net: PeerNet) -> None:
    alice, bob = registered_pair(net)
    first = alice.send(bob, "before")
    net.run_until(lambda: alice.status(first) == "delivered", 1)
    old_link = alice.engine.session(bob.peer_id).link
    # Bob restarts, and his CONNECTION_CLOSE is lost on the way: to alice the
    # old link looks fine (QUIC would take 30 s to notice it is dead).
    net.cut(alice, bob)
    net.stop(bob)
    net.mend(alice, bob)
    assert old_link is not None and old_link.state is LinkState.READY
    bob = net.start_again(bob)
    net.run_until(lambda: bob.engine.my_id is not None, 2)
    assert bob.peer_id == 2  # same key, same id
    # The rule: the server's PRESENCE (bob is a watched contact; the LIST
    # entry against an old server) shows a new online-since, so alice drops
    # the old link at once and connects anew.
    took = net.run_until(lambda: old_link.state is LinkState.CLOSED, 1.1)  # told at bob's registration
    assert old_link.close_reason == "peer restarted", took
    second = alice.send(bob, "after")
    took = net.run_until(lambda: alice.status(second) == "delivered", 1)
    assert took < 0.2
    assert [m["text"] for m in bob.store.conversation(alice.peer_id)] == ["before", "after"]


def test_a_peer_that_crashed_and_came_back_within_its_ttl_is_reconnected_at_once(net: PeerNet) -> None:
    alice, bob = registered_pair(net)
    first = alice.send(bob, "before")
    net.run_until(lambda: alice.status(first) == "delivered", 1)
    old_link = alice.engine.session(bob.peer_id).link
    # kill -9: no unregister, no CONNECTION_CLOSE; the server still holds
    # bob's registration (its TTL runs for a minute) when he is back.
    bob.crash()
    bob = net.start_again(bob)
    net.run_until(lambda: bob.engine.my_id is not None, 2)
    assert bob.peer_id == 2
    # Registered anew from another address: the server counts a new online
    # session and says so, and alice drops the dead link at once (before,
    # she noticed it only by QUIC's idle timeout, 8-10 s later).
    net.run_until(lambda: old_link is not None and old_link.state is LinkState.CLOSED, 1.1)
    assert old_link is not None and old_link.close_reason == "peer restarted"
    second = alice.send(bob, "after")
    took = net.run_until(lambda: alice.status(second) == "delivered", 1)
    assert took < 0.2
    assert [m["text"] for m in bob.store.conversation(alice.peer_id)] == ["before", "after"]


# ------------------------------------------------------------ many-port probing


def test_a_symmetric_peer_relayed_to_a_port_restricted_one_plans_many_port_probing(net: PeerNet) -> None:
    alice, bob = registered_pair(net, "symmetric", "port-restricted")
    assert alice.engine.me()["nat"]["mapping"] == "endpoint-dependent"
    assert bob.engine.me()["nat"]["mapping"] == "endpoint-independent"
    sent = alice.send(bob, "through two NATs")
    net.run_until(lambda: alice.status(sent) == "delivered", 4)
    assert alice.connection(bob) == {"state": "relayed", "address": None}
    # Relayed: they tell each other their mappings, and when the checks have
    # found nothing the symmetric side opens its spare sockets and asks the
    # other to spray its address.
    net.run_until(
        lambda: len([c for c in alice.commands if isinstance(c, OpenSpare)]) >= SPARE_SOCKETS, CHECKS_TIMEOUT + 1
    )
    assert len([c for c in alice.commands if isinstance(c, OpenSpare)]) == SPARE_SOCKETS
    assert not any(isinstance(c, OpenSpare) for c in bob.commands)  # only the symmetric side
    # The other side sprays SPRAY_PROBES random ports of alice's public
    # address (and no other host), until one of them meets a spare's mapping.
    net.run_until(lambda: bool(bob.engine.pathfinder._sprays), 1)
    spray = bob.engine.pathfinder._sprays[alice.peer_id]
    assert len(spray.candidates) == SPRAY_PROBES
    assert {host for host, _ in spray.candidates} == {alice.nat.public_ip}
    assert len({port for _, port in spray.candidates}) == SPRAY_PROBES
    # The NAT model maps alice's 256 spares to 256 ports: a hit is ~99% likely.
    net.run(6)
    if spray.chosen is not None:
        assert (alice.connection(bob) or {}).get("state") == "direct"
    else:
        assert spray.probes_sent == SPRAY_PROBES


def test_two_symmetric_peers_never_plan_many_port_probing(net: PeerNet) -> None:
    alice, bob = registered_pair(net, "symmetric", "symmetric")
    sent = alice.send(bob, "relayed for good")
    net.run_until(lambda: alice.status(sent) == "delivered", 4)
    assert alice.connection(bob) == {"state": "relayed", "address": None}
    net.run(20)
    assert not alice.commands and not bob.commands
