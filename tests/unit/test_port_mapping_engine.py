"""Port mapping through the pure engine: a mapped address reaches the server
in a new REGISTER, the other peer probes it, and two symmetric NATs (which
otherwise end relayed) go direct.  Also the gateway's parsing."""

from __future__ import annotations

import pytest
from peer_net import MAIN_PORT, Peer, PeerNet

from rendezvous.client_protocol import PeerInfo
from rendezvous.stun import Candidate, CandidateKind
from webpeer.pathfinder import likeliest, usable_candidates
from webpeer.portmap import Mapping
from webpeer.portmapper import default_gateway

ROUTES = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0
eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0
"""


def registered_pair(net: PeerNet, a_nat: str, b_nat: str) -> tuple[Peer, Peer]:
    alice, bob = net.add("alice", a_nat), net.add("bob", b_nat)
    net.run_until(lambda: alice.engine.my_id is not None and bob.engine.my_id is not None, 2)
    net.run_until(lambda: alice.engine.session(bob.peer_id).online and bob.engine.session(alice.peer_id).online, 3)
    net.run(2)  # NAT discovery done
    return alice, bob


def test_default_gateway_is_the_default_route_with_the_lowest_metric() -> None:
    assert default_gateway(ROUTES) == "10.0.0.1"
    assert default_gateway(ROUTES.splitlines()[0] + "\n" + ROUTES.splitlines()[2]) == "192.168.1.1"


@pytest.mark.parametrize(
    "table",
    [
        "",
        ROUTES.splitlines()[0] + "\neth0\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0",  # no default
        ROUTES.splitlines()[0] + "\neth0\t00000000\t0100000A\t0001\t0\t0\t100\t00000000",  # no gateway flag
        ROUTES.splitlines()[0] + "\neth0\t00000000\tZZZZ\t0003\t0\t0\t100\t00000000",  # not hex
        ROUTES.splitlines()[0] + "\neth0\t00000000\t1FFFFFFFF\t0003\t0\t0\t100\t00000000",  # too wide
    ],
)
def test_no_usable_default_route(table: str) -> None:
    assert default_gateway(table) is None


def info(*candidates: Candidate) -> PeerInfo:
    return PeerInfo(7, b"k" * 32, "", candidates, b"p" * 16)


def test_a_declared_address_on_the_peers_public_ip_is_a_router_mapping_probed_first() -> None:
    observed = Candidate(CandidateKind.OBSERVED, ("198.51.100.2", 40001))
    mapped = Candidate(CandidateKind.LOCAL, ("198.51.100.2", 50000))
    private = Candidate(CandidateKind.LOCAL, ("10.0.2.2", 5000))
    stranger = Candidate(CandidateKind.LOCAL, ("192.0.2.99", 53))  # a host the peer merely names
    mine = ("198.51.100.1", 40000)
    assert usable_candidates(info(observed, private, mapped, stranger), (("10.0.1.2", 5000),), mine) == [
        ("198.51.100.2", 50000),
        ("198.51.100.2", 40001),
    ]
    assert likeliest(info(observed, private, mapped), mine) == ("198.51.100.2", 50000)
    assert likeliest(info(observed, private), mine) == ("198.51.100.2", 40001)


def test_two_symmetric_nats_go_direct_through_a_router_mapping(net: PeerNet) -> None:
    alice, bob = registered_pair(net, "symmetric", "symmetric")
    alice.nat.forwarded[50000] = (alice.host, MAIN_PORT)
    external = (alice.nat.public_ip, 50000)
    alice.engine.port_mapped(Mapping("pcp", external, 7200, net.now + 7200), net.now)
    alice.flush()
    assert alice.engine.me()["port_mapping"] == {
        "protocol": "pcp",
        "external": "198.51.100.1:50000",
        "expires": net.now + 7200,
    }
    # The server learns it from a new REGISTER (the signature covers it).
    net.run_until(lambda: external in net.server.directory.get(alice.peer_id).local, 2)  # type: ignore[union-attr]
    net.run_until(lambda: alice.engine.registration.state.value == "registered", 2)
    sent = bob.send(alice, "through the mapped port")
    net.run_until(lambda: bob.status(sent) == "delivered", 4)
    assert bob.connection(alice) == {"state": "direct", "address": "198.51.100.1:50000", "family": "IPv4"}


def test_without_the_mapping_the_same_pair_ends_relayed(net: PeerNet) -> None:
    alice, bob = registered_pair(net, "symmetric", "symmetric")
    alice.nat.forwarded[50000] = (alice.host, MAIN_PORT)  # the router would forward, but nobody says so
    sent = bob.send(alice, "relayed")
    net.run_until(lambda: bob.status(sent) == "delivered", 4)
    assert bob.connection(alice) == {"state": "relayed", "address": None}


def test_a_lost_mapping_is_withdrawn_from_the_server(net: PeerNet) -> None:
    alice, _ = registered_pair(net, "symmetric", "none")
    external = (alice.nat.public_ip, 50000)
    alice.engine.port_mapped(Mapping("nat-pmp", external, 7200, net.now + 7200), net.now)
    alice.flush()
    net.run_until(lambda: external in net.server.directory.get(alice.peer_id).local, 2)  # type: ignore[union-attr]
    alice.engine.port_mapped(None, net.now)
    alice.flush()
    net.run_until(lambda: external not in net.server.directory.get(alice.peer_id).local, 2)  # type: ignore[union-attr]
    assert alice.engine.me()["port_mapping"] is None


def test_the_early_connection_to_a_mapped_port_is_kept(net: PeerNet) -> None:
    """Both mapped: the other side's checks reach our mapped port from a new
    port of its symmetric NAT, but the early QUIC Initial aimed at its mapped
    port gets through: moving QUIC to that peer-reflexive address would cost
    a round trip."""
    alice, bob = registered_pair(net, "symmetric", "symmetric")
    for peer, port in ((alice, 50000), (bob, 50001)):
        peer.nat.forwarded[port] = (peer.host, MAIN_PORT)
        peer.engine.port_mapped(Mapping("pcp", (peer.nat.public_ip, port), 7200, net.now + 7200), net.now)
        peer.flush()
    net.run_until(lambda: all(p.engine.registration.state.value == "registered" for p in (alice, bob)), 2)
    sent = alice.send(bob, "at once")
    net.run_until(lambda: alice.status(sent) == "delivered", 4)
    assert alice.connection(bob) == {"state": "direct", "address": "198.51.100.2:50001", "family": "IPv4"}
    assert alice.engine.stats["early_link_replaced"] == 0
