"""Dual stack (issue 15): a peer learns its IPv6 address from the server's
IPv6 address, registers it as a local candidate, and a pair with IPv6 on
both sides goes direct over IPv6 even behind two symmetric IPv4 NATs.  The
pure parts with literal times, and the engines on tests/unit/peer_net.py."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from peer_net import SERVER, SERVER6, PeerNet
from test_engine import registered_pair

from rendezvous.client_protocol import PeerInfo
from rendezvous.core import ServerConfig, ServerCore
from rendezvous.stun import Attr, Candidate, CandidateKind, Message, MessageClass, Method, decode, encode
from rendezvous.tokens import Tokens
from webpeer.dual_stack import OtherFamilyProbe, other_family_server, probeable
from webpeer.identity import Identity
from webpeer.pathfinder import likeliest, usable_candidates
from webpeer.punch import TIMEOUT as CHECKS_TIMEOUT
from webpeer.punch import PunchSession, PunchState
from webpeer.registration import RegistrationMachine, RegState

OBSERVED, LOCAL = CandidateKind.OBSERVED, CandidateKind.LOCAL
MINE_V4 = ("198.51.100.1", 40000)
MINE_V6 = ("2001:db8:1::2", 5000)


def info(*candidates: tuple[CandidateKind, tuple[str, int]]) -> PeerInfo:
    return PeerInfo(7, b"k" * 32, "", tuple(Candidate(kind, address) for kind, address in candidates), b"p" * 16)


# ------------------------------------------------------------ which addresses are probed


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("198.51.100.7", True),
        ("10.0.0.5", True),  # a private network: the local-candidate rules decide
        ("2001:db8:5::2", True),
        ("fd00::5", True),  # unique local: only reached when it is on a network of ours
        ("0.0.0.0", False),
        ("255.255.255.255", False),
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("169.254.1.1", False),
        ("::", False),
        ("ff02::1", False),
        ("fe80::1", False),
        ("fec0::1", False),
        ("::ffff:10.0.0.1", False),  # an IPv4 address dressed as IPv6
        ("::10.0.0.1", False),
        ("2002:c000:204::1", False),  # 6to4: an IPv4 address inside
        ("127.0.0.1", False),  # loopback: only for a peer the server sees on loopback
        ("::1", False),
        ("not an address", False),
    ],
)
def test_only_plain_unicast_addresses_are_probed(host: str, allowed: bool) -> None:
    assert probeable((host, 5000), MINE_V4) is allowed


def test_loopback_is_probed_only_by_a_peer_on_loopback_and_port_zero_never() -> None:
    assert probeable(("127.0.0.1", 5000), ("127.0.0.1", 40000))
    assert probeable(("::1", 5000), ("::1", 40000))
    assert not probeable(("198.51.100.7", 0), MINE_V4)


def test_the_other_family_server_is_the_first_of_the_family_not_in_use() -> None:
    servers = (("203.0.113.1", 3478), ("2001:db8:ffff::1", 3478), ("2001:db8:ffff::2", 3478))
    assert other_family_server(servers, servers[0]) == servers[1]
    assert other_family_server(servers, servers[2]) == servers[0]
    assert other_family_server(servers[:1], servers[0]) is None


def test_a_peer_with_ipv6_probes_the_other_peers_ipv6_address_first() -> None:
    peer = info((OBSERVED, ("198.51.100.2", 40001)), (LOCAL, ("10.0.2.2", 5000)), (LOCAL, ("2001:db8:2::2", 5000)))
    # Our own IPv6 address is among our local ones (the engine adds it).
    assert usable_candidates(peer, (("10.0.1.2", 5000), MINE_V6), MINE_V4) == [
        ("2001:db8:2::2", 5000),
        ("198.51.100.2", 40001),
    ]
    assert likeliest(peer, MINE_V4, (("10.0.1.2", 5000), MINE_V6)) == ("2001:db8:2::2", 5000)


def test_checks_probe_ipv6_first_and_ipv4_one_pace_later_and_the_first_answer_wins() -> None:
    # RFC 8305's preference without its fixed wait: the IPv4 candidate's probe
    # goes 20 ms (punch.PACE) after the IPv6 one, and whichever answers first
    # is the path; here IPv4 answers first and wins.
    peer = info((OBSERVED, ("198.51.100.2", 40001)), (LOCAL, ("2001:db8:2::2", 5000)))
    session = PunchSession(1, 7, b"k" * 16, usable_candidates(peer, (MINE_V6,), MINE_V4), 100.0)
    first = session.datagrams_to_send()
    session.handle_timer(100.02)
    second = session.datagrams_to_send()
    assert [to for _, to in first] == [("2001:db8:2::2", 5000)]
    assert [to for _, to in second] == [("198.51.100.2", 40001)]
    request = decode(second[0][0])
    answer = Message(Method.BINDING, MessageClass.SUCCESS, request.transaction_id)
    answer.add(Attr.XOR_MAPPED_ADDRESS, MINE_V4)
    session.receive(decode(encode(answer, integrity_key=b"k" * 16)), ("198.51.100.2", 40001), 100.05)
    assert session.state is PunchState.SUCCEEDED and session.chosen == ("198.51.100.2", 40001)


def test_a_peer_without_ipv6_keeps_to_ipv4() -> None:
    peer = info((OBSERVED, ("198.51.100.2", 40001)), (LOCAL, ("2001:db8:2::2", 5000)))
    assert usable_candidates(peer, (("10.0.1.2", 5000),), MINE_V4) == [("198.51.100.2", 40001)]
    assert likeliest(peer, MINE_V4, (("10.0.1.2", 5000),)) == ("198.51.100.2", 40001)


def test_a_peer_names_one_other_family_address_at_most_and_no_odd_ones() -> None:
    peer = info(
        (OBSERVED, ("198.51.100.2", 40001)),
        (LOCAL, ("ff02::1", 5000)),
        (LOCAL, ("fe80::2", 5000)),
        (LOCAL, ("::ffff:198.51.100.9", 5000)),
        (LOCAL, ("2001:db8:2::2", 5000)),
        (LOCAL, ("2001:db8:66::1", 5000)),  # a second host it names: not ours to probe
        (LOCAL, ("224.0.0.251", 5353)),
    )
    assert usable_candidates(peer, (MINE_V6,), MINE_V4) == [("2001:db8:2::2", 5000), ("198.51.100.2", 40001)]


def test_a_peer_registered_over_ipv6_offers_its_ipv4_address_the_same_way() -> None:
    peer = info((OBSERVED, ("2001:db8:2::2", 5000)), (LOCAL, ("198.51.100.2", 40001)))
    assert usable_candidates(peer, (("10.0.1.2", 5000),), MINE_V6) == [
        ("2001:db8:2::2", 5000),
        ("198.51.100.2", 40001),
    ]


def test_a_multicast_observed_candidate_is_never_probed() -> None:
    assert usable_candidates(info((OBSERVED, ("224.0.0.1", 5000))), (), MINE_V4) == []


# ------------------------------------------------------------ learning our other address


def answer(probe: bytes, mapped: tuple[str, int]) -> Message:
    request = decode(probe)
    message = Message(Method.BINDING, MessageClass.SUCCESS, request.transaction_id)
    message.add(Attr.XOR_MAPPED_ADDRESS, mapped)
    return decode(encode(message))


def test_the_binding_goes_three_times_and_gives_up_after_three_and_a_half_seconds() -> None:
    probe = OtherFamilyProbe(lambda n: b"t" * n)
    probe.start(SERVER6, 100.0)
    sends = [(100.0, len(probe.datagrams_to_send()))]
    while (timer := probe.get_timer()) is not None:
        probe.handle_timer(timer)
        sends.append((timer, len(probe.datagrams_to_send())))
    assert sends == [(100.0, 1), (100.5, 1), (101.5, 1), (103.5, 0)]
    assert probe.gave_up


def test_the_answer_counts_only_from_that_server_with_that_transaction_and_family() -> None:
    probe = OtherFamilyProbe()
    probe.start(SERVER6, 0.0)
    (data, to), *_ = probe.datagrams_to_send()
    assert to == SERVER6
    assert probe.receive(answer(data, ("2001:db8:1::2", 5000)), SERVER) is None  # from the wrong address
    assert probe.receive(answer(b"\0\1\0\0\x21\x12\xa4\x42" + b"x" * 12, ("2001:db8:1::2", 5000)), SERVER6) is None
    assert probe.receive(answer(data, ("2001:db8:1::2", 5000)), SERVER6) == ("2001:db8:1::2", 5000)
    assert probe.get_timer() is None  # answered: nothing more goes


@pytest.mark.parametrize("mapped", [("198.51.100.1", 5000), ("fe80::1", 5000), ("ff02::1", 5000), ("::1", 5000)])
def test_an_answer_naming_another_family_or_no_usable_address_is_ignored(mapped: tuple[str, int]) -> None:
    probe = OtherFamilyProbe()
    probe.start(SERVER6, 0.0)
    (data, _), *_ = probe.datagrams_to_send()
    assert probe.receive(answer(data, mapped), SERVER6) is None


# ------------------------------------------------------------ the engines


def test_peers_register_their_ipv6_address_once_learned(net: PeerNet) -> None:
    alice = net.add("alice", "symmetric", v6=True)
    net.run_until(lambda: alice.engine.my_id is not None, 2)
    since = net.server.directory.get(alice.peer_id).online_since  # type: ignore[union-attr]
    net.run_until(lambda: len(alice.engine.me()["public_addresses"]) == 2, 2)
    assert alice.engine.me()["public_addresses"] == ["198.51.100.1:40000", "[2001:db8:1::2]:5000"]
    record = net.server.directory.get(alice.peer_id)
    assert record is not None and record.observed[0] == "198.51.100.1"  # registered over IPv4
    assert ("2001:db8:1::2", 5000) in record.local
    assert record.online_since == since  # the IPv6 address is no new session


def test_two_symmetric_nats_with_ipv6_on_both_sides_go_direct_over_ipv6(net: PeerNet) -> None:
    alice, bob = registered_pair(net, "symmetric", "symmetric", v6=True)
    sent = alice.send(bob, "over IPv6")
    net.run_until(lambda: alice.status(sent) == "delivered", CHECKS_TIMEOUT)
    net.run_until(lambda: (alice.connection(bob) or {}).get("state") == "direct", CHECKS_TIMEOUT)
    assert alice.connection(bob) == {"state": "direct", "address": "[2001:db8:2::2]:5000", "family": "IPv6"}
    net.run_until(lambda: (bob.connection(alice) or {}).get("family") == "IPv6", 1)
    assert [m["text"] for m in bob.store.conversation(alice.peer_id)] == ["over IPv6"]
    # The IPv4 checks could not meet (two symmetric NATs): IPv6 is what worked.
    assert not alice.engine.session(bob.peer_id).direct_failed
    # The early Initial went to the path that works: never moved, and bob's
    # checks left in time for it (no loss here): not sent again on them.
    assert alice.engine.stats["early_link_replaced"] == 0
    assert alice.engine.stats["initial_resent_on_check"] == 0


def test_the_same_pair_without_ipv6_stays_relayed(net: PeerNet) -> None:
    alice, bob = registered_pair(net, "symmetric", "symmetric")
    sent = alice.send(bob, "relayed")
    net.run_until(lambda: alice.status(sent) == "delivered", CHECKS_TIMEOUT)
    net.run(CHECKS_TIMEOUT + 0.5)
    assert alice.connection(bob) == {"state": "relayed", "address": None}


def test_ipv6_on_one_side_only_still_goes_over_ipv4(net: PeerNet) -> None:
    alice = net.add("alice", "port-restricted", v6=True)
    bob = net.add("bob", "port-restricted", server6=True)  # knows the server's IPv6 address, has no IPv6
    net.run_until(lambda: alice.engine.my_id is not None and bob.engine.my_id is not None, 2)
    net.run_until(lambda: alice.engine.session(bob.peer_id).online and bob.engine.session(alice.peer_id).online, 3)
    net.run(2)
    assert bob.engine.registration.other_family == ()  # its Bindings to IPv6 went nowhere
    sent = alice.send(bob, "over IPv4")
    net.run_until(lambda: alice.status(sent) == "delivered", CHECKS_TIMEOUT)
    net.run_until(lambda: (alice.connection(bob) or {}).get("state") == "direct", CHECKS_TIMEOUT)
    assert alice.connection(bob) == {"state": "direct", "address": "198.51.100.2:40000", "family": "IPv4"}
    assert [m["text"] for m in bob.store.conversation(alice.peer_id)] == ["over IPv4"]


def test_an_answer_before_the_challenge_rides_in_the_signed_register_with_no_extra_round_trip() -> None:
    core = ServerCore(ServerConfig(), Tokens(b"k" * 32))
    machine = RegistrationMachine(Identity(Ed25519PrivateKey.generate()), servers=(SERVER, SERVER6))
    v4, v6 = ("198.51.100.1", 40000), ("2001:db8:1::2", 5000)
    machine.start(100.0)
    (first,) = machine.datagrams_to_send()
    ((binding, to),) = machine.probes_to_send()
    assert to == SERVER6
    core.receive_datagram(binding, v6, 100.0)  # the Binding's answer comes first
    ((answer, _),) = core.datagrams_to_send()
    machine.receive_from_other_server(decode(answer), SERVER6, 100.01)
    core.receive_datagram(first, v4, 100.0)
    ((challenge, _),) = core.datagrams_to_send()
    machine.receive(decode(challenge), 100.01)
    (signed,) = machine.datagrams_to_send()
    assert [c.address for c in decode(signed).get_all(Attr.CANDIDATE)] == [v6]
    core.receive_datagram(signed, v4, 100.01)
    for pending in core.pending_registrations():
        core.complete_registration(pending, 1, None, 100.01)
    (success, _), *_ = core.datagrams_to_send()
    machine.receive(decode(success), 100.02)
    assert machine.state is RegState.REGISTERED and machine.registered_local == (v6,)
    registers = [d for d in machine.datagrams_to_send() if decode(d).method == Method.REGISTER]
    assert registers == []  # nothing to register again
    record = core.directory.get(1)
    assert record is not None and record.local == (v6,) and record.observed == v4


def test_the_early_initial_goes_again_as_soon_as_the_other_sides_check_arrives(net: PeerNet) -> None:
    # Bob's introduction is lost once (the server sends it again 0.5 s
    # later), so his firewall drops alice's early Initial and her first
    # checks: the race a loaded host loses.  When his first check reaches
    # her, the Initial goes again at once, before her own checks of his
    # address are answered.
    alice, bob = registered_pair(net, "symmetric", "symmetric", v6=True)
    lost: list[bool] = []

    def lose_first_introduction(data: bytes, source: tuple[str, int], destination: tuple[str, int]) -> bool:
        if not lost and source == SERVER and destination[0] == bob.nat.public_ip and data[:2] == b"\x20\x06":
            lost.append(True)
            return True
        return False

    net.lose = lose_first_introduction
    alice.send(bob, "hello")
    bob_v6 = f"[{bob.v6}]:5000"
    net.run_until(lambda: alice.engine.stats["initial_resent_on_check"] == 1, 2)
    assert lost == [True]
    assert not alice.engine.pathfinder._checks_succeeded(bob.peer_id)  # the nudge came first
    net.run_until(lambda: (alice.connection(bob) or {}).get("address") == bob_v6, 1)
    net.run_until(lambda: (alice.connection(bob) or {}).get("state") == "direct", 1)
    assert alice.engine.stats["early_link_replaced"] == 0  # the first guess was the path
