"""A peer that attacks through the protocol (issue 16), through the pure
engines on the in-memory network (tests/unit/peer_net.py): no datagram of
ours may be aimed at a host the attacker merely names."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from peer_net import MAIN_PORT, Peer, PeerNet

from rendezvous.log_lines import keep_to_one_line
from webpeer.identity import Identity
from webpeer.link import LinkState, PeerLink
from webpeer.path import Direct

STRANGER = ("203.0.113.77", 9)  # a third party: nothing of ours may go there


def watch_stranger(net: PeerNet) -> list[tuple[str, int]]:
    seen: list[tuple[str, int]] = []
    original = net.transmit

    def transmit(data: bytes, source: tuple[str, int], destination: tuple[str, int]) -> None:
        if destination[0] == STRANGER[0]:
            seen.append(destination)
        original(data, source, destination)

    net.transmit = transmit  # type: ignore[method-assign]
    return seen


def pair(net: PeerNet, **liar: object) -> tuple[Peer, Peer]:
    alice = net.add("alice")
    mallory = net.add("mallory", **liar)  # type: ignore[arg-type]
    net.run_until(lambda: alice.engine.my_id is not None and mallory.engine.my_id is not None, 2)
    net.run_until(lambda: alice.engine.session(mallory.peer_id).online, 3)
    net.run(2)
    return alice, mallory


def test_a_declared_local_address_in_another_network_is_never_probed(net: PeerNet) -> None:
    seen = watch_stranger(net)
    alice, mallory = pair(net, declared=(STRANGER,))
    net.cut(alice, mallory)  # the checks then run their whole 2 s, through every candidate
    sent = alice.send(mallory, "hello")
    net.run_until(lambda: alice.status(sent) == "delivered", 4)
    net.run(5)
    assert seen == []  # neither the checks nor the early QUIC went to the named host
    # The candidate was there to tempt it.
    assert STRANGER in alice.engine.session(mallory.peer_id).candidates


@pytest.mark.parametrize("relayed", [True, False])
def test_a_birthday_frame_naming_a_third_party_sends_it_nothing(net: PeerNet, relayed: bool) -> None:
    seen = watch_stranger(net)
    alice, mallory = pair(net)
    if relayed:
        net.cut(alice, mallory)
    sent = mallory.send(alice, "hi")
    net.run_until(lambda: mallory.status(sent) == "delivered", 4)
    link = mallory.engine.session(alice.peer_id).link
    assert link is not None and link.state is LinkState.READY and link.relayed is relayed
    # "I am symmetric; spray my address": an address that is not mallory's.
    link.send_frame({"t": "birthday", "key": "00" * 16, "host": STRANGER[0]}, net.now)
    mallory.flush()
    net.run(6)
    assert seen == []
    assert alice.engine.stats["sprays_refused"] == 1
    assert not alice.engine.pathfinder._sprays


def test_a_birthday_frame_over_a_direct_link_is_refused_even_for_the_peers_own_address(net: PeerNet) -> None:
    alice, mallory = pair(net)
    sent = mallory.send(alice, "hi")
    net.run_until(lambda: mallory.status(sent) == "delivered", 2)
    link = mallory.engine.session(alice.peer_id).link
    assert link is not None and not link.relayed
    link.send_frame({"t": "birthday", "key": "00" * 16, "host": mallory.nat.public_ip}, net.now)
    mallory.flush()
    net.run(2)
    assert alice.engine.stats["sprays_refused"] == 1 and not alice.engine.pathfinder._sprays


def test_sprays_for_one_peer_are_rationed(net: PeerNet) -> None:
    alice, mallory = pair(net)
    net.cut(alice, mallory)
    sent = mallory.send(alice, "hi")
    net.run_until(lambda: mallory.status(sent) == "delivered", 4)
    link = mallory.engine.session(alice.peer_id).link
    assert link is not None and link.relayed
    for _ in range(6):
        link.send_frame({"t": "birthday", "key": "00" * 16, "host": mallory.nat.public_ip}, net.now)
        mallory.flush()
        net.run(6)  # each spray ends (no hit) before the next asks
    assert alice.engine.stats["sprays_refused"] == 3  # three sprays, then no more for a while


def silent_handshakes(net: PeerNet, target: Peer, sources: list[tuple[str, int]]) -> None:
    """QUIC Initials from ``sources`` that never go further (their answers
    land nowhere): each would hold an inbound slot until it proved a key."""
    squatter = Identity(Ed25519PrivateKey.generate())
    key = target.identity.public_key
    for source in sources:
        link = PeerLink.connect(squatter, 999, Direct((target.nat.public_ip, MAIN_PORT)), target.peer_id, key, net.now)
        for data, _ in link.datagrams_to_send(net.now):
            net.transmit(data, source, (target.nat.public_ip, MAIN_PORT))


@pytest.mark.parametrize("hosts", [1, 16])
def test_silent_handshakes_do_not_lock_out_an_honest_peer(net: PeerNet, hosts: int) -> None:
    alice, bob = pair(net)
    sources = [(f"203.0.113.{100 + n % hosts}", 1000 + n) for n in range(64)]
    silent_handshakes(net, alice, sources)
    net.run(0.05)
    waiting = alice.engine._accepting
    assert 0 < len(waiting) <= 32
    per_host = {source: sum(1 for _, src in waiting.values() if src == source) for _, source in waiting.values()}
    assert max(per_host.values()) <= 4  # one host never holds more than four
    sent = bob.send(alice, "still there?")
    took = net.run_until(lambda: bob.status(sent) == "delivered", 2)
    assert took < 0.5
    net.run(3.5)
    assert not alice.engine._accepting  # nobody proved a key: all gone after the hello deadline
    assert alice.engine.stats["hello_timeouts"] > 0


def test_hellos_claiming_ids_nobody_holds_add_no_peers_and_hold_no_slot(net: PeerNet) -> None:
    alice, bob = pair(net)
    carol = net.add("carol")
    net.run_until(lambda: carol.engine.my_id is not None, 2)
    carol_id = carol.peer_id
    net.stop(carol)  # id 3 exists, offline: the server answers 404, not 410
    net.run(1.5)
    listed_before = [p["id"] for p in alice.engine.peers_json()]
    alice.engine.peer_states.pop(carol_id, None)  # as if alice had never heard of carol
    listed_before = [p for p in listed_before if p != carol_id]
    connects_before = net.server.stats["connect"]
    mallory_host = ("203.0.113.50", 7000)
    liars: list[PeerLink] = []

    def answer(data: bytes, source: tuple[str, int]) -> None:
        for link in liars:
            link.receive_datagram(data, Direct(source), net.now)
            for out, _ in link.datagrams_to_send(net.now):
                net.transmit(out, mallory_host, source)

    net.raw_endpoints[mallory_host] = answer
    for claimed in (500, 501, carol_id):  # never assigned (410), and assigned but offline (404)
        # A hello needs the claimed id's key to be accepted; mallory has none:
        # it claims the ids with its own key and hopes alice asks the server.
        liar = PeerLink.connect(
            Identity(Ed25519PrivateKey.generate()),
            claimed,
            Direct((alice.nat.public_ip, MAIN_PORT)),
            alice.peer_id,
            alice.identity.public_key,
            net.now,
        )
        liars[:] = [liar]
        for data, _ in liar.datagrams_to_send(net.now):
            net.transmit(data, mallory_host, (alice.nat.public_ip, MAIN_PORT))
        net.run(1)
    assert [p["id"] for p in alice.engine.peers_json()] == listed_before  # no "(no name) #500"
    assert not alice.engine._accepting and not alice.engine._awaiting_key
    assert net.server.stats["connect"] - connects_before == 3  # alice did ask about each claim


def test_untrusted_text_cannot_forge_a_log_line(net: PeerNet, caplog: pytest.LogCaptureFixture) -> None:
    # A nickname, a close reason and a named host are the peer's words: with
    # a newline they could print a line that looks like ours.
    forged = "x\nINFO webpeer.engine: registered as peer 1"
    caplog.set_level("DEBUG")
    keep_to_one_line([caplog.handler])  # as both programs' main() does for their handlers
    alice = net.add("alice")
    mallory = net.add(forged)  # its nickname
    net.run_until(lambda: alice.engine.my_id is not None and mallory.engine.my_id is not None, 2)
    sent = mallory.send(alice, "hello")
    net.run_until(lambda: mallory.status(sent) == "delivered", 4)
    link = mallory.engine.session(alice.peer_id).link
    assert link is not None
    link.close(forged)
    mallory.flush()
    net.run(3)
    lines = [r.getMessage() for r in caplog.records]
    assert [line for line in lines if "\n" in line or "\r" in line] == []
    # aioquic's own log of the reason is among them, escaped.
    assert any("reason x\\nINFO" in line for line in lines)
