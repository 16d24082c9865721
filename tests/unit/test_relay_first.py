"""Relay from the first packet (issue 15): QUIC through the rendezvous'
relay starts beside the connectivity checks instead of after their timeout;
whichever link is ready first carries the messages, and a direct link that is
ready later takes over with nothing lost or stored twice.  Through the pure
engines on tests/unit/peer_net.py (5 ms one way: a direct round trip is
10 ms, one through the relay 20 ms)."""

from __future__ import annotations

import pytest
from peer_net import LATENCY, SERVER, SERVER_OTHER, Peer, PeerNet
from test_engine import connection_states, registered_pair

from webpeer.link import LinkState
from webpeer.pathfinder import OpenSpare
from webpeer.punch import TIMEOUT as CHECKS_TIMEOUT

RTT = 2 * LATENCY  # a direct round trip; the relay's is twice this


def relayed_bytes(net: PeerNet) -> int:
    """What the server's relay carried so far (QUIC datagrams, both ways)."""
    return net.server.stats["relayed_bytes"]


def open_links(peer: Peer) -> list[object]:
    return [link for link in peer.engine.links() if link.state is not LinkState.CLOSED]


def test_two_symmetric_peers_get_the_first_message_through_the_relay_in_a_few_round_trips(net: PeerNet) -> None:
    alice, bob = registered_pair(net, "symmetric", "symmetric")
    assert alice.engine.pathfinder.symmetric()  # known before the send: direct is unlikely
    sent = alice.send(bob, "through the relay")
    took = net.run_until(lambda: alice.status(sent) == "delivered", CHECKS_TIMEOUT)
    # The relay started with the CONNECT: the handshake through it (two relay
    # trips), the message and its receipt (one each) -- not the checks' 2 s.
    assert took <= 4 * 2 * RTT + 1e-9
    assert alice.engine.stats["relay_opened_with_connect"] == 1
    assert [m["text"] for m in bob.store.conversation(alice.peer_id)] == ["through the relay"]
    assert alice.connection(bob) == {"state": "relayed", "address": None}
    assert bob.connection(alice) == {"state": "relayed", "address": None}
    assert connection_states(alice, bob) == ["connecting", "relayed"]
    # The checks end finding nothing; the direct guess beside the relay is
    # dropped, and one link is left on each side.
    net.run(CHECKS_TIMEOUT + 0.5)
    assert alice.connection(bob) == {"state": "relayed", "address": None}
    assert [link.relayed for link in alice.engine.peer_links(bob.peer_id)] == [True]
    assert len(open_links(alice)) == 1 and len(open_links(bob)) == 1
    assert alice.engine.session(bob.peer_id).direct_failed


def test_a_pair_that_cannot_know_it_ends_relayed_still_starts_the_relay_with_the_checks(net: PeerNet) -> None:
    # Alice (port-restricted) cannot tell that bob's NAT is symmetric: the
    # relay starts at the CONNECT's answer, beside the direct guess.
    alice, bob = registered_pair(net, "port-restricted", "symmetric")
    sent_at = net.now
    sent = alice.send(bob, "first")
    took = net.run_until(lambda: alice.status(sent) == "delivered", CHECKS_TIMEOUT)
    assert took <= RTT + 4 * 2 * RTT + 1e-9  # the CONNECT, then as above
    assert alice.engine.stats["relay_opened_with_connect"] == 0
    assert alice.engine.stats["relay_opened_early"] == 1
    assert alice.connection(bob) == {"state": "relayed", "address": None}
    # Many-port probing (bob is symmetric, alice is not) waits for the checks
    # to end, as before the relay came first: they might still find a path.
    assert not any(isinstance(c, OpenSpare) for c in bob.commands)
    net.run_until(lambda: any(isinstance(c, OpenSpare) for c in bob.commands), CHECKS_TIMEOUT + 0.5)
    assert net.now >= sent_at + CHECKS_TIMEOUT


@pytest.mark.parametrize(
    "nats", [("none", "none"), ("full-cone", "port-restricted"), ("port-restricted", "port-restricted")]
)
def test_a_direct_capable_pair_goes_direct_at_once_and_the_relay_carries_none_of_its_messages(
    net: PeerNet, nats: tuple[str, str]
) -> None:
    alice, bob = registered_pair(net, *nats)
    before = relayed_bytes(net)
    sent = alice.send(bob, "hello")
    took = net.run_until(lambda: alice.status(sent) == "delivered", CHECKS_TIMEOUT)
    assert took <= 4 * RTT + 1e-9  # CONNECT, handshake, message, receipt: direct, no timer waited on
    assert connection_states(alice, bob) == ["connecting", "direct"]  # never shown relayed
    assert (bob.connection(alice) or {}).get("state") == "direct"
    # The relay attempt beside it was closed when the direct link was ready:
    # it carried at most the first flights of a handshake, and nothing after.
    net.run(0.1)
    setup = relayed_bytes(net) - before
    assert setup <= 6 * 1200
    later = [alice.send(bob, f"direct {i}") for i in range(100)]
    net.run_until(lambda: all(alice.status(m) == "delivered" for m in later), 2)
    assert relayed_bytes(net) - before == setup
    # No link is left over on either side (no half-set-up relay, and no
    # acceptor made from a late answer to the closed one).
    net.run(CHECKS_TIMEOUT + 1)
    assert len(open_links(alice)) == 1 and len(open_links(bob)) == 1


def test_a_pair_that_starts_relayed_moves_to_the_direct_path_mid_stream_with_nothing_lost_or_doubled(
    net: PeerNet,
) -> None:
    alice, bob = registered_pair(net)
    start = net.now
    heal_at = start + 0.25  # the direct path opens a quarter second in (its first probes are lost)

    def direct_lost(data: bytes, source: tuple[str, int], destination: tuple[str, int]) -> bool:
        through_server = {source, destination} & {SERVER, SERVER_OTHER}
        return not through_server and net.now < heal_at

    net.lose = direct_lost
    ids: list[str] = []
    moved_after = None  # how many messages had been delivered when the direct link took over
    for _ in range(50):  # 10 messages every 10 ms: half a second, across the move
        drafts = [alice.engine.draft(bob.peer_id, f"m {len(ids) + i}", net.now) for i in range(10)]
        ids += [str(d.message["id"]) for d in drafts]
        alice.flush(drafts)
        net.run(0.01)
        if moved_after is None and (alice.connection(bob) or {}).get("state") == "direct":
            moved_after = sum(alice.status(m) == "delivered" for m in ids)
    net.run_until(lambda: all(alice.status(m) == "delivered" for m in ids), 10)
    assert connection_states(alice, bob) == ["connecting", "relayed", "direct"]
    assert moved_after is not None and 0 < moved_after < len(ids)  # the move came mid-stream
    texts = [m["text"] for m in bob.store.conversation(alice.peer_id, limit=10_000)]
    assert texts == [f"m {i}" for i in range(len(ids))]  # each once, in order
    # Once direct, the conversation no longer goes through the relay.
    net.run(0.1)
    carried = relayed_bytes(net)
    more = [alice.send(bob, f"after {i}") for i in range(50)]
    net.run_until(lambda: all(alice.status(m) == "delivered" for m in more), 2)
    assert relayed_bytes(net) == carried
    assert len(open_links(alice)) == 1 and len(open_links(bob)) == 1


@pytest.mark.parametrize("nats", [("symmetric", "none"), ("symmetric", "full-cone")])
def test_a_symmetric_peer_starts_the_relay_with_its_connect_and_still_ends_direct_where_it_can(
    net: PeerNet, nats: tuple[str, str]
) -> None:
    # Symmetric against no NAT or a full cone: direct works, though the
    # symmetric side could not know it and started the relay with its CONNECT.
    alice, bob = registered_pair(net, *nats)
    before = relayed_bytes(net)
    sent = alice.send(bob, "hello")
    took = net.run_until(lambda: alice.status(sent) == "delivered", CHECKS_TIMEOUT)
    assert took <= 4 * 2 * RTT + 1e-9
    assert alice.engine.stats["relay_opened_with_connect"] == 1
    net.run(0.1)
    observed = alice.engine.session(bob.peer_id).observed  # bob's address as the server saw it
    assert observed is not None
    assert alice.connection(bob) == {"state": "direct", "address": "{}:{}".format(*observed), "family": "IPv4"}
    assert (bob.connection(alice) or {}).get("state") == "direct"
    setup = relayed_bytes(net) - before
    assert setup <= 6 * 1200  # a handshake's first flights at most
    later = [alice.send(bob, f"direct {i}") for i in range(100)]
    net.run_until(lambda: all(alice.status(m) == "delivered" for m in later), 2)
    assert relayed_bytes(net) - before == setup
    assert [m["text"] for m in bob.store.conversation(alice.peer_id)] == ["hello"] + [f"direct {i}" for i in range(100)]
    net.run(CHECKS_TIMEOUT + 1)
    assert len(open_links(alice)) == 1 and len(open_links(bob)) == 1


def test_a_symmetric_peer_whose_relay_won_the_race_does_not_probe_many_ports_when_its_checks_succeeded(
    net: PeerNet,
) -> None:
    # Full cone against symmetric: the checks find a direct path, but the
    # direct QUIC packets are held up a while, so the relay is ready first
    # and the peers tell each other their NAT mappings over it.  Bob
    # (symmetric, facing an endpoint-independent mapping) must not open 256
    # spare sockets: his checks succeeded, and the direct link follows.
    alice, bob = registered_pair(net, "full-cone", "symmetric")
    held_until = net.now + 0.3

    def direct_quic_lost(data: bytes, source: tuple[str, int], destination: tuple[str, int]) -> bool:
        through_server = {source, destination} & {SERVER, SERVER_OTHER}
        return not through_server and data[0] >= 0x40 and net.now < held_until

    net.lose = direct_quic_lost
    sent = alice.send(bob, "hello")
    net.run_until(lambda: alice.status(sent) == "delivered", CHECKS_TIMEOUT)
    assert connection_states(alice, bob)[:2] == ["connecting", "relayed"]  # the relay won
    net.run_until(lambda: (alice.connection(bob) or {}).get("state") == "direct", 5)
    net.run(CHECKS_TIMEOUT + 1)
    assert (bob.connection(alice) or {}).get("state") == "direct"
    assert not bob.commands and not alice.commands  # no spare sockets on either side
