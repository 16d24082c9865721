"""Many contacts added at once are watched in a few WATCHes, under the
server's per-peer request limit, through the pure engine and the server core
with literal times (tests/unit/peer_net.py).  One WATCH each was the old way:
300 at once ran into the server's 50/s limit and the refused ids waited for
the 60 s repair."""

from __future__ import annotations

import struct

from peer_net import Peer, PeerNet

from rendezvous.client_protocol import error_of
from rendezvous.registry import PeerRecord
from rendezvous.stun import MAX_WATCH_IDS, Address, Attr, MessageClass, Method, decode
from webpeer.registration import MAX_WATCHED, WATCH_BURST, WATCH_GATHER, WATCH_RATE

BASE = 100_000


def online_crowd(net: PeerNet, count: int) -> list[int]:
    """``count`` keyed peers online for an hour, straight into the server's directory."""
    for n in range(count):
        peer_id = BASE + n
        key = struct.pack("!I", peer_id) * 8
        record = PeerRecord(
            peer_id, key, f"c{n}", (f"10.9.{n >> 8}.{n & 255}", 9999), (), net.now, net.now, net.now + 3600, net.now
        )
        net.server.directory.put(record)
    net.server.highest_id = max(net.server.highest_id, BASE + count)
    net.server.directory.take_dirty()
    return [BASE + n for n in range(count)]


class Tap:
    """What alice sends the server (WATCH requests) and what it refuses her."""

    def __init__(self, net: PeerNet) -> None:
        self.watches = 0
        self.refusals: list[int] = []
        self.server = ("", 0)
        net.lose = self.look

    def look(self, data: bytes, source: Address, destination: Address) -> bool:
        try:
            message = decode(data)
        except Exception:
            return False  # QUIC and the like: not the server's
        asks = message.get(Attr.WATCH_IDS) is not None or message.get(Attr.UNWATCH_IDS) is not None
        if message.method == Method.WATCH and message.message_class == MessageClass.REQUEST and asks:
            self.watches += 1  # a WATCH with ids (an empty one is a heartbeat)
        error = error_of(message)
        if error is not None and error.code == 429:
            self.refusals.append(message.method)
        return False


def test_300_contacts_added_in_one_second_go_in_a_few_watches_none_refused(net: PeerNet) -> None:
    ids = online_crowd(net, 300)
    alice: Peer = net.add("alice", page_open=False)
    net.run_until(lambda: alice.engine.my_id is not None, 2)
    net.run(0.5)
    tap = Tap(net)
    registration = alice.engine.registration
    sent_before = registration.watch_requests
    start = net.now
    # Contacts added one by one, 300 in one simulated second, as the engine
    # hands them to the machine (straight to it: the engine's own work per
    # add, publishing the whole peer list, would make this test take seconds).
    for n in range(len(ids)):
        net.run_until(lambda n=n: net.now >= start + n / 300, 1)
        registration.watch(tuple(ids[: n + 1]), net.now)
        alice.flush()
    chosen = set(ids[:MAX_WATCHED])  # the server's cap: the machine keeps the first 256
    # Every chosen contact watched at the server within one refill of the bucket.
    refill = WATCH_BURST / WATCH_RATE
    subscriptions = net.server._subscriptions
    net.run_until(lambda: chosen <= subscriptions.watched_by(alice.peer_id), 1 + refill)
    assert registration.watched == chosen
    sent = registration.watch_requests - sent_before
    # 256 ids need 26 WATCHes of MAX_WATCH_IDS; beyond those, the first add's
    # own and at most one partly filled one per WATCH_GATHER: not one each (256, and
    # 381 with the refused ones asked again, before the gathering).
    assert sent <= MAX_WATCHED // MAX_WATCH_IDS + 1 + round(1 / WATCH_GATHER) + 4, sent
    assert tap.watches == sent  # what reached the server (none lost here)
    assert tap.refusals == []
    print(f"{sent} WATCH requests for 300 contacts added in one second")


def test_one_contact_added_alone_is_watched_at_once(net: PeerNet) -> None:
    [carol] = online_crowd(net, 1)
    alice: Peer = net.add("alice", page_open=False)
    net.run_until(lambda: alice.engine.my_id is not None, 2)
    net.run(WATCH_GATHER * 2)  # no WATCH lately
    alice.engine.add_contact(carol, net.now)
    alice.flush()
    took = net.run_until(lambda: carol in net.server._subscriptions.watched_by(alice.peer_id), 1)
    assert took < WATCH_GATHER  # one trip to the server, not held for others
