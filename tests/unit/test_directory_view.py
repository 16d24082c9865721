"""The directory view (who else is online) costs bytes only while someone
looks: through the pure engines and the server core with literal times
(tests/unit/peer_net.py).  Its page was ~80% of an idle peer's bytes from
the server (bench/PRESENCE.md) and was fetched with no page open."""

from __future__ import annotations

from pathlib import Path

from peer_net import Peer, PeerNet

# The peers here heartbeat every second (peer_net's list_interval).
HEARTBEAT = 1.0


def lists_in(net: PeerNet, seconds: float) -> int:
    """LIST requests the server answered in the next ``seconds`` (only
    alice talks to it in these tests, bob being registered and idle too)."""
    before = net.server.stats["list"]
    net.run(seconds)
    return net.server.stats["list"] - before


def registered_idle_pair(net: PeerNet) -> tuple[Peer, Peer]:
    alice = net.add("alice", page_open=False)
    bob = net.add("bob", page_open=False)
    net.run_until(lambda: alice.engine.my_id is not None and bob.engine.my_id is not None, 2)
    net.run(1)
    return alice, bob


def test_with_no_page_open_the_heartbeat_never_fetches_the_directory(net: PeerNet) -> None:
    alice, bob = registered_idle_pair(net)
    assert lists_in(net, 60) == 0
    # The heartbeats still go (empty WATCHes: the server's silence is still noticed).
    before = net.to_server[(alice.nat.public_ip, "datagrams")]
    net.run(10)
    assert net.to_server[(alice.nat.public_ip, "datagrams")] - before >= 10 / HEARTBEAT - 1
    assert bob.peer_id not in alice.engine.directory


def test_a_page_that_connects_gets_the_directory_at_once_and_every_other_heartbeat_while_open(net: PeerNet) -> None:
    alice, bob = registered_idle_pair(net)
    net.run(0.5)  # between two heartbeats
    alice.engine.registration.show_directory(True, net.now)
    alice.flush()
    took = net.run_until(lambda: bob.peer_id in alice.engine.directory, HEARTBEAT)
    assert took < 0.1  # one round trip, not the next heartbeat's
    assert alice.engine.registration.directory_shown
    # While open: a page every DIRECTORY_EVERY heartbeats (both peers are quiet otherwise).
    assert 4 <= lists_in(net, 10) <= 6
    # Closed: no more.
    alice.engine.registration.show_directory(False, net.now)
    alice.flush()
    net.run(HEARTBEAT)
    assert lists_in(net, 30) == 0


def test_asking_on_demand_fetches_once_unless_the_last_page_is_fresh(net: PeerNet) -> None:
    alice, bob = registered_idle_pair(net)
    registration = alice.engine.registration
    assert registration.directory_at is None
    assert registration.directory_on_demand(net.now)  # never fetched: goes
    alice.flush()
    net.run_until(lambda: bob.peer_id in alice.engine.directory, 0.5)
    fetched_at = registration.directory_at
    assert fetched_at is not None
    # Asked again within a heartbeat interval: the page just fetched serves.
    assert not registration.directory_on_demand(fetched_at + HEARTBEAT / 2)
    # Older than that: asked again, once, and nothing more after it.
    net.run(HEARTBEAT)
    assert registration.directory_on_demand(net.now)
    alice.flush()
    assert lists_in(net, 20) == 1
    assert registration.directory_at is not None and registration.directory_at > fetched_at


def test_the_directory_page_is_what_made_an_idle_peers_bytes(tmp_path: Path) -> None:
    """An idle peer's bytes from the server in 30 s, no page open, are a
    fraction of what they are with one (the page was most of them)."""
    taken: dict[bool, int] = {}
    for page_open in (False, True):
        net = PeerNet(tmp_path / str(page_open))
        (tmp_path / str(page_open)).mkdir()
        crowd = [net.add(f"p{n}", page_open=False) for n in range(10)]
        alice = net.add("alice", page_open=page_open)
        everyone = [*crowd, alice]
        net.run_until(lambda everyone=everyone: all(p.engine.my_id is not None for p in everyone), 3)
        net.run(5)
        before = net.from_server[(alice.nat.public_ip, "bytes")]
        net.run(30)
        taken[page_open] = net.from_server[(alice.nat.public_ip, "bytes")] - before
    print(f"bytes from the server in 30 s, idle: {taken[False]} with no page open, {taken[True]} with one")
    assert taken[False] * 3 < taken[True], taken
