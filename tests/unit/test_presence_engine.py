"""Presence that scales (issue 16, finding 1), through the pure engines and
the server core with literal times (tests/unit/peer_net.py): a peer watches
its contacts instead of walking the server's whole online list, so a crowd
of fake registrations neither hides its contacts nor costs it bytes; against
a server without WATCH it walks the LIST as before."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from peer_net import Peer, PeerNet

from rendezvous.registry import PeerRecord
from rendezvous.stun import MessageClass, Method, pack_type
from webpeer import engine, registration

FAKES = 5_000
FAKE_BASE = 100_000


def crowd(net: PeerNet, count: int) -> None:
    """``count`` keyed peers online for an hour, straight into the directory (as a flooder's would be)."""
    for n in range(count):
        peer_id = FAKE_BASE + n
        key = struct.pack("!I", peer_id) * 8
        address = (f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", 9999)
        record = PeerRecord(peer_id, key, f"fake{n}", address, (), net.now, net.now, net.now + 3600, net.now)
        net.server.directory.put(record)
    net.server.highest_id = max(net.server.highest_id, FAKE_BASE + count)
    net.server.directory.take_dirty()


def bytes_per_minute(net: PeerNet, peer: Peer) -> int:
    ip = peer.nat.public_ip
    return net.to_server[(ip, "bytes")] + net.from_server[(ip, "bytes")]


def test_with_5000_fake_registrations_an_honest_pair_sees_each_other_and_messages_within_5_s(net: PeerNet) -> None:
    crowd(net, FAKES)
    alice = net.add("alice")
    bob = net.add("bob")
    net.run_until(lambda: alice.engine.my_id is not None and bob.engine.my_id is not None, 2)
    start = net.now
    # Alice's page adds bob by id (bob does not know alice yet).
    alice.engine.add_contact(bob.peer_id, net.now)
    alice.flush()
    net.run_until(lambda: alice.engine.session(bob.peer_id).online, 5)
    sent = alice.send(bob, "through the crowd")
    net.run_until(lambda: alice.status(sent) == "delivered", 5 - (net.now - start))
    # Bob learned alice from her message, watches her now, and sees her online.
    net.run_until(lambda: any(p["id"] == alice.peer_id and p["online"] for p in bob.engine.peers_json()), 1)
    assert net.now - start < 5
    assert alice.peer_id in bob.engine.contacts()
    # Neither ever walked the directory (5,000 entries are over 200 pages):
    # only the directory view's first page, every other heartbeat.
    assert net.server.stats["list"] <= 2 * (net.now - start + 2)


def steady_minute(tmp_path: Path, population: int) -> int:
    """Bytes a peer with 20 contacts exchanges with the server in its third
    minute online, the server holding ``population`` other peers."""
    net = PeerNet(tmp_path / f"n{population}")
    (tmp_path / f"n{population}").mkdir()
    crowd(net, population)
    alice = net.add("alice")
    net.run_until(lambda: alice.engine.my_id is not None, 2)
    for n in range(20):
        alice.engine.add_contact(FAKE_BASE + n, net.now)
    alice.flush()
    net.run(120)
    before = bytes_per_minute(net, alice)
    net.run(60)
    return bytes_per_minute(net, alice) - before


def test_a_peers_bytes_per_minute_to_the_server_do_not_grow_with_the_population(tmp_path: Path) -> None:
    alone = steady_minute(tmp_path, 20)
    crowded = steady_minute(tmp_path, FAKES)
    print(f"bytes per minute, 20 contacts: {alone} with 100 peers online, {crowded} with {FAKES}")
    # (Within 1%: the exact count moves by a datagram's worth with timing.)
    assert abs(crowded - alone) <= alone // 100
    # The heartbeat every second here (every 2 s by default), every other one
    # the directory view's page (most of the bytes), the REFRESH every 21 s,
    # and the whole watched set once a minute.
    assert alone < 50_000, alone


def test_a_lost_presence_is_retransmitted_and_the_contact_still_seen(net: PeerNet) -> None:
    alice = net.add("alice")
    net.run_until(lambda: alice.engine.my_id is not None, 2)
    alice.engine.add_contact(2, net.now)
    alice.flush()
    net.run(0.5)
    presence = struct.pack("!H", pack_type(Method.PRESENCE, MessageClass.REQUEST))
    lost: list[bytes] = []

    def lose_two(data: bytes, source: object, destination: object) -> bool:
        if data[:2] == presence and len(lost) < 2:
            lost.append(data)
            return True
        return False

    net.lose = lose_two
    bob = net.add("bob")
    took = net.run_until(lambda: alice.engine.session(2).online, 3)
    assert bob.peer_id == 2 and len(lost) == 2
    assert 1.5 <= took <= 1.6  # the third send, at 1.5 s (RTO 0.5 s)
    assert alice.engine.session(2).name == "bob"  # the entry carries the name and key


def test_against_a_server_without_watch_the_peer_walks_the_list_as_before(net: PeerNet) -> None:
    # A server from before WATCH answers it "400 Unknown method".
    del net.server._handlers[Method.WATCH]
    alice = net.add("alice")
    bob = net.add("bob")
    net.run_until(lambda: alice.engine.my_id is not None and bob.engine.my_id is not None, 2)
    # No contacts, yet each finds the other in the listing, as peers always did.
    net.run_until(lambda: bob.peer_id in alice.engine.peer_states and alice.peer_id in bob.engine.peer_states, 3)
    assert alice.engine.registration.watch_supported is False
    assert net.server.stats["list"] > 0
    sent = alice.send(bob, "old server")
    net.run_until(lambda: alice.status(sent) == "delivered", 2)
    # The restart rule holds there too: a new online-since closes the old link.
    old_link = alice.engine.session(bob.peer_id).link
    assert old_link is not None
    net.run(2)  # online-since is in whole seconds: a restart within the same second looks the same
    net.cut(alice, bob)
    net.stop(bob)
    net.mend(alice, bob)
    bob = net.start_again(bob)
    net.run_until(lambda: old_link.close_reason == "peer restarted", 3)


def test_strangers_a_directory_page_showed_are_not_contacts_after_a_restart(net: PeerNet) -> None:
    crowd(net, 30)
    alice = net.add("alice")
    bob = net.add("bob")
    net.run_until(lambda: alice.engine.my_id is not None and bob.engine.my_id is not None, 2)
    net.run_until(lambda: len(alice.engine.directory) >= 5, 5)
    strangers = [peer_id for peer_id in alice.engine.directory if peer_id != bob.peer_id]
    # Their keys are remembered (the page can show a safety number before a first message)...
    assert strangers and all(alice.store.known_peer(p) is not None for p in strangers)
    sent = alice.send(bob, "hello")
    net.run_until(lambda: alice.status(sent) == "delivered", 5)
    alice_id = alice.peer_id
    net.stop(alice)
    alice = net.start_again(alice, last_id=alice_id)
    # ...but after a restart only bob, whom she wrote to, is a contact (watched
    # first, never pushed out by strangers that directory pages once showed).
    assert set(alice.engine.peer_states) == {bob.peer_id}
    assert alice.engine.contacts()[0] == bob.peer_id
    assert all(alice.store.known_peer(p) is not None for p in strangers)


def test_past_the_servers_cap_the_most_recently_active_contacts_are_watched_and_the_page_says_so(
    net: PeerNet, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cap (256 in life) made small, on both sides, to keep the test fast.
    cap = 20
    monkeypatch.setattr(registration, "MAX_WATCHED", cap)
    monkeypatch.setattr(engine, "MAX_WATCHED", cap)
    net.server._subscriptions.max_per_watcher = cap
    crowd(net, cap + 10)
    alice = net.add("alice")
    net.run_until(lambda: alice.engine.my_id is not None, 2)
    for n in range(cap + 10):  # all added at the same moment: the oldest come first
        alice.engine.add_contact(FAKE_BASE + n, net.now)
    alice.flush()
    net.run(3)
    watched = net.server._subscriptions.watched_by(alice.peer_id)
    late, least = FAKE_BASE + cap + 9, FAKE_BASE + cap - 1
    assert watched == {FAKE_BASE + n for n in range(cap)}
    shown = {p["id"]: p for p in alice.engine.peers_json()}
    assert shown[late]["watched"] is False and shown[FAKE_BASE]["watched"] is True
    assert shown[FAKE_BASE]["online"] and not shown[late]["online"]
    # Alice writes to the last one: the most recently active now.  Within a
    # repair period it is watched (and seen online), and the least active
    # contact made room for it (unwatched, the server's cap never passed).
    alice.send(late, "you are my most recent contact")
    net.run_until(lambda: late in net.server._subscriptions.watched_by(alice.peer_id), 61)
    net.run_until(lambda: alice.engine.session(late).online, 2)
    assert net.server._subscriptions.watched_by(alice.peer_id) == (watched - {least}) | {late}
    assert net.server.stats["watch_refused"] == 0
    shown = {p["id"]: p for p in alice.engine.peers_json()}
    assert shown[late]["watched"] is True and shown[least]["watched"] is False


def test_a_stranger_gone_from_the_directory_page_is_unwatched(net: PeerNet) -> None:
    crowd(net, 5)
    alice = net.add("alice")
    net.run_until(lambda: FAKE_BASE in alice.engine.directory, 5)
    net.run_until(lambda: FAKE_BASE in net.server._subscriptions.watched_by(alice.peer_id), 2)
    # The stranger leaves the server; the next directory page no longer shows
    # it, and alice stops watching it (else the strangers of every page would
    # pile up in her watched set until the server's cap refused her contacts).
    net.server.directory.remove(FAKE_BASE, net.now)
    net.run_until(lambda: FAKE_BASE not in alice.engine.directory, 5)
    net.run_until(lambda: FAKE_BASE not in net.server._subscriptions.watched_by(alice.peer_id), 2)
    assert FAKE_BASE + 1 in net.server._subscriptions.watched_by(alice.peer_id)


def test_directory_pages_do_not_grow_the_store_without_bound(net: PeerNet, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "MAX_STRANGERS", 5)
    monkeypatch.setattr(engine, "STRANGER_PRUNE_EVERY", 0.0)
    crowd(net, 60)
    alice = net.add("alice")
    bob = net.add("bob")
    net.run_until(lambda: alice.engine.my_id is not None and bob.engine.my_id is not None, 2)
    net.run_until(lambda: bob.peer_id in alice.engine.directory, 5)
    sent = alice.send(bob, "a contact, never forgotten")
    net.run_until(lambda: alice.status(sent) == "delivered", 5)
    # The crowd leaves a page at a time: each new directory page shows others.
    seen: set[int] = set()
    for _ in range(3):
        page = {p for p in alice.engine.directory if p >= FAKE_BASE}
        assert page and not page & seen
        seen |= page
        for peer_id in page:
            net.server.directory.remove(peer_id, net.now)
        net.run_until(lambda page=page: not page & set(alice.engine.directory), 5)
    known = {p.peer_id for p in alice.store.known_peers()}
    on_page = set(alice.engine.directory)
    # Bob (written to) and what the page shows now are kept; of the strangers
    # earlier pages showed, only the 5 seen last.
    assert bob.peer_id in known and on_page <= known
    assert len(known - on_page - {bob.peer_id}) <= 5
    assert alice.engine.stats["strangers_forgotten"] >= len(seen) - 5
