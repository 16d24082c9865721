"""Presence subscriptions in the server core (docs/PROTOCOL.md 5.9, 5.10):
WATCH answers, PRESENCE requests on online / offline / restart, their
retransmission and acknowledgement, the caps, and the subscription's end
with its session.  Literal times, no sockets."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_core import ALICE, BOB, MALLORY, SECRET, T0, Harness, error_code, key

from rendezvous.client import public_key_bytes, session_request
from rendezvous.core import ServerConfig, ServerCore
from rendezvous.registry import PeerRecord
from rendezvous.stun import MAX_WATCH_IDS, Address, Attr, Message, MessageClass, Method, decode, encode
from rendezvous.tokens import Tokens

CAROL: Address = ("192.0.2.30", 30003)
BOB_AGAIN: Address = ("192.0.2.20", 20099)  # bob's next process


@pytest.fixture
def h() -> Harness:
    return Harness()


def watch(h: Harness, address: Address, ids: tuple[int, ...], now: float = T0) -> Message:
    attributes = ((Attr.WATCH_IDS, ids),) if ids else ()
    return h.request(Method.WATCH, address, now, *attributes)


def told(out: list[tuple[bytes, Address]], address: Address) -> list[Message]:
    """The PRESENCE requests among ``out`` for ``address``."""
    messages = [decode(data) for data, to in out if to == address]
    return [m for m in messages if m.method == Method.PRESENCE and m.message_class == MessageClass.REQUEST]


def state(message: Message) -> tuple[dict[int, int], tuple[int, ...]]:
    """(online id -> online since, offline ids) of a WATCH answer or a PRESENCE."""
    return {e.peer_id: e.online_since for e in message.get_all(Attr.PEER_ENTRY)}, message.get(Attr.OFFLINE_IDS, ())


def ack(h: Harness, request: Message, address: Address, now: float) -> list[tuple[bytes, Address]]:
    return h.feed(Message(Method.PRESENCE, MessageClass.SUCCESS, request.transaction_id), address, now)


def test_watch_answers_the_present_state_with_keys_and_names(h: Harness) -> None:
    h.register(key(1), ALICE, T0, nickname="alice")
    h.register(key(2), BOB, T0 + 1, nickname="bob")
    reply = watch(h, ALICE, (2, 3, 99), T0 + 2)
    assert reply.message_class == MessageClass.SUCCESS
    [entry] = reply.get_all(Attr.PEER_ENTRY)
    assert (entry.peer_id, entry.online_since, entry.public_key, entry.nickname) == (
        2,
        int(T0 + 1),
        public_key_bytes(key(2)),
        "bob",
    )
    assert reply.get(Attr.OFFLINE_IDS) == (3, 99)
    # No ids: a plain success, how a peer with no contacts learns the server knows WATCH.
    empty = watch(h, ALICE, (), T0 + 3)
    assert empty.message_class == MessageClass.SUCCESS and not empty.get_all(Attr.PEER_ENTRY)


def register_collecting(h: Harness, private: Ed25519PrivateKey, address: Address, now: float) -> list:
    """As Harness.register, but returns every datagram its steps made (to anyone)."""
    collected: list[tuple[bytes, Address]] = []
    feed = h.feed

    def spy(data: bytes | Message, to: Address, at: float) -> list[tuple[bytes, Address]]:
        out = feed(data, to, at)
        collected.extend(out)
        return out

    h.feed = spy  # type: ignore[method-assign]
    try:
        h.register(private, address, now)
    finally:
        h.feed = feed  # type: ignore[method-assign]
    return collected


def test_watchers_are_told_of_online_offline_and_restart_and_each_is_acknowledged(h: Harness) -> None:
    h.register(key(1), ALICE, T0)
    watch(h, ALICE, (2,), T0)
    # Bob comes online: alice is told, with bob's key (as LIST would show him).
    [online] = told(register_collecting(h, key(2), BOB, T0 + 1), ALICE)
    assert state(online) == ({2: int(T0 + 1)}, ())
    assert online.get(Attr.PEER_ENTRY).public_key == public_key_bytes(key(2))
    assert ack(h, online, ALICE, T0 + 1) == []
    assert h.core.stats["presence_acknowledged"] == 1
    # Bob leaves: alice is told he is offline.
    out = h.feed(session_request(Method.UNREGISTER, h.sessions[BOB]), BOB, T0 + 2)
    [offline] = told(out, ALICE)
    assert state(offline) == ({}, (2,))
    ack(h, offline, ALICE, T0 + 2)
    # Bob restarts: a new online-since, which is what closes alice's old link to him.
    [again] = told(register_collecting(h, key(2), BOB, T0 + 10), ALICE)
    assert state(again) == ({2: int(T0 + 10)}, ())
    ack(h, again, ALICE, T0 + 10)
    # Nothing is retransmitted once acknowledged.
    h.core.handle_timer(T0 + 60)
    assert told(h.core.datagrams_to_send(), ALICE) == []


def test_a_live_peer_registering_anew_from_another_address_is_a_restart_for_its_watchers(h: Harness) -> None:
    h.register(key(1), ALICE, T0)
    watch(h, ALICE, (2,), T0)
    [online] = told(register_collecting(h, key(2), BOB, T0 + 1), ALICE)
    ack(h, online, ALICE, T0 + 1)
    # The same peer registers again from the same address while its
    # registration is live (a lost session): nothing changed for alice.
    assert told(register_collecting(h, key(2), BOB, T0 + 5), ALICE) == []
    # From another address (kill -9 and back within the TTL, or its NAT
    # moved it): a new online-since, even within the same second.
    [again] = told(register_collecting(h, key(2), BOB_AGAIN, T0 + 1.5), ALICE)
    assert state(again) == ({2: int(T0 + 2)}, ())


def test_a_lost_presence_is_retransmitted_until_acknowledged_and_only_the_watcher_can_acknowledge(h: Harness) -> None:
    h.register(key(1), ALICE, T0)
    watch(h, ALICE, (2,), T0)
    [first] = told(register_collecting(h, key(2), BOB, T0), ALICE)  # lost on the way
    # RFC 8489's schedule, as INTRODUCE: RTO 0.5 s.
    h.core.handle_timer(T0 + 0.5)
    [second] = told(h.core.datagrams_to_send(), ALICE)
    assert second.transaction_id == first.transaction_id
    # An acknowledgement from elsewhere is dropped, the retransmissions go on.
    ack(h, first, MALLORY, T0 + 0.6)
    h.core.handle_timer(T0 + 1.5)
    assert len(told(h.core.datagrams_to_send(), ALICE)) == 1
    ack(h, first, ALICE, T0 + 1.6)
    h.core.handle_timer(T0 + 40)
    assert told(h.core.datagrams_to_send(), ALICE) == []
    assert h.core.stats["presence_retransmitted"] == 2


def test_changes_wait_for_the_one_presence_in_flight_and_are_told_as_they_stand(h: Harness) -> None:
    h.register(key(1), ALICE, T0)
    watch(h, ALICE, (2, 3), T0)
    [first] = told(register_collecting(h, key(2), BOB, T0), ALICE)
    # Carol comes and goes while alice has not acknowledged the first one: one
    # PRESENCE at a time keeps them in order; carol is told as she stands then.
    assert told(register_collecting(h, key(3), CAROL, T0 + 1), ALICE) == []
    h.feed(session_request(Method.UNREGISTER, h.sessions[CAROL]), CAROL, T0 + 2)
    [second] = told(ack(h, first, ALICE, T0 + 3), ALICE)
    assert state(second) == ({}, (3,))


def test_a_presence_given_up_on_is_not_resent_and_the_next_watch_tells_the_truth(h: Harness) -> None:
    h.register(key(1), ALICE, T0, ttl=600)
    watch(h, ALICE, (2,), T0)
    register_collecting(h, key(2), BOB, T0)
    for second in range(1, 40):
        h.core.handle_timer(T0 + second)
    assert h.core.stats["presence_timed_out"] == 1
    h.core.datagrams_to_send()
    reply = watch(h, ALICE, (2,), T0 + 41)  # the peer's periodic repair
    assert state(reply) == ({2: int(T0)}, ())


def test_watch_caps_ids_per_request_and_per_peer() -> None:
    h = Harness(ServerConfig(max_watched_per_peer=25))
    h.register(key(1), ALICE, T0)
    too_many = watch(h, ALICE, tuple(range(100, 100 + MAX_WATCH_IDS + 1)), T0)
    assert error_code(too_many) == 400 and too_many.get(Attr.ERROR_CODE).reason == "Too Many Ids"
    assert watch(h, ALICE, tuple(range(100, 110)), T0).message_class == MessageClass.SUCCESS
    assert watch(h, ALICE, tuple(range(110, 120)), T0).message_class == MessageClass.SUCCESS
    # Ids already watched cost nothing; new ones past the cap are refused, none added.
    assert watch(h, ALICE, tuple(range(100, 110)), T0).message_class == MessageClass.SUCCESS
    refused = watch(h, ALICE, tuple(range(118, 128)), T0)
    assert refused.get(Attr.ERROR_CODE).reason == "Too Many Watched"
    assert len(h.core._subscriptions.watched_by(1)) == 20
    # Two WATCH-IDS in one request: refused (one attribute, one bound).
    double = h.request(Method.WATCH, ALICE, T0, (Attr.WATCH_IDS, (5,)), (Attr.WATCH_IDS, (6,)))
    assert double.get(Attr.ERROR_CODE).reason == "One WATCH-IDS"


def test_watch_needs_a_session_and_is_rate_limited_as_list() -> None:
    h = Harness(ServerConfig(requests_per_second=1, requests_burst=2))
    h.register(key(1), ALICE, T0)
    assert error_code(h.ask(session_request(Method.WATCH, b"\0" * 20), ALICE, T0)) == 401
    assert error_code(watch(h, ALICE, (2,), T0)) is None
    assert error_code(watch(h, ALICE, (3,), T0)) is None
    assert error_code(watch(h, ALICE, (4,), T0)) == 429


def test_the_subscription_dies_with_the_session(h: Harness) -> None:
    h.register(key(1), ALICE, T0, ttl=60)
    watch(h, ALICE, (2,), T0)
    # Alice registers again (a new session, say after a restart): she watches nothing until she asks again.
    h.register(key(1), ALICE, T0 + 1, ttl=60)
    assert len(h.core._subscriptions) == 0
    watch(h, ALICE, (2,), T0 + 1)
    # Alice expires: her subscription goes with her; bob's arrival tells no one.
    h.core.handle_timer(T0 + 62)
    assert len(h.core._subscriptions) == 0
    register_collecting(h, key(2), BOB, T0 + 63)
    assert h.core.stats["presence_sent"] == 0


def test_a_peer_registered_with_another_instance_is_watched_through_the_mirror(h: Harness) -> None:
    h.register(key(1), ALICE, T0)
    watch(h, ALICE, (7,), T0)
    elsewhere = PeerRecord(7, public_key_bytes(key(7)), "gus", ("192.0.2.77", 7777), (), T0, T0, T0 + 60, T0, home="b")
    h.core.mirror([elsewhere], T0 + 1)
    [online] = told(h.core.datagrams_to_send(), ALICE)
    assert state(online) == ({7: int(T0)}, ())
    ack(h, online, ALICE, T0 + 1)
    gone = PeerRecord(7, public_key_bytes(key(7)), "gus", ("192.0.2.77", 7777), (), T0, T0 + 2, T0 + 2, T0, home="b")
    h.core.mirror([gone], T0 + 3)
    [offline] = told(h.core.datagrams_to_send(), ALICE)
    assert state(offline) == ({}, (7,))


def test_many_watchers_of_one_id_are_all_told_and_memory_goes_with_them() -> None:
    core = ServerCore(ServerConfig(), Tokens(SECRET))
    h = Harness()
    h.core = core
    addresses = [("192.0.2.1", 1000 + n) for n in range(50)]
    for n, address in enumerate(addresses):
        h.register(key(10 + n), address, T0)
        watch(h, address, (200,), T0)
    assert len(core._subscriptions) == 50
    h.ids[public_key_bytes(key(99))] = 200
    out = register_collecting(h, key(99), BOB, T0 + 1)
    assert {to for data, to in out if decode(data).method == Method.PRESENCE} == set(addresses)
    for address in addresses:
        h.feed(session_request(Method.UNREGISTER, h.sessions[address]), address, T0 + 2)
    assert len(core._subscriptions) == 0 and not core._subscriptions._watchers


def test_a_peer_that_registers_again_while_online_still_expires(h: Harness) -> None:
    # Found writing the test above: the in-place re-registration never filed
    # its new expiry, so the peer stayed online (and its watchers never heard) forever.
    h.register(key(1), ALICE, T0, ttl=60)
    h.register(key(1), ALICE, T0 + 1, ttl=60)
    h.core.handle_timer(T0 + 61.5)
    assert 1 not in h.core.directory


def test_unwatch_frees_room_under_the_cap_and_stops_the_presence() -> None:
    h = Harness(ServerConfig(max_watched_per_peer=20))
    h.register(key(1), ALICE, T0)
    watch(h, ALICE, tuple(range(100, 110)), T0)
    watch(h, ALICE, (2,) + tuple(range(110, 119)), T0)
    assert watch(h, ALICE, (3,), T0).get(Attr.ERROR_CODE).reason == "Too Many Watched"
    # At the cap, one request swaps: UNWATCH-IDS go out before WATCH-IDS come in,
    # and the answer tells only of the ids watched now.
    swap = h.request(Method.WATCH, ALICE, T0, (Attr.UNWATCH_IDS, (2, 100, 555)), (Attr.WATCH_IDS, (3, 4)))
    assert swap.message_class == MessageClass.SUCCESS
    assert state(swap) == ({}, (3, 4))
    assert h.core._subscriptions.watched_by(1) == frozenset({3, 4} | set(range(101, 119)))
    # Bob (2) is no longer watched: his arrival tells alice nothing; carol's (3) does.
    assert told(register_collecting(h, key(2), BOB, T0 + 1), ALICE) == []
    [carol] = told(register_collecting(h, key(3), CAROL, T0 + 2), ALICE)
    assert state(carol) == ({3: int(T0 + 2)}, ())
    # Unwatching everything leaves no subscription behind.
    h.request(Method.WATCH, ALICE, T0 + 3, (Attr.UNWATCH_IDS, tuple(h.core._subscriptions.watched_by(1))))
    assert len(h.core._subscriptions) == 0
    double = h.request(Method.WATCH, ALICE, T0 + 4, (Attr.UNWATCH_IDS, (5,)), (Attr.UNWATCH_IDS, (6,)))
    assert double.get(Attr.ERROR_CODE).reason == "One UNWATCH-IDS"


def test_unwatch_drops_what_the_watcher_was_yet_to_be_told(h: Harness) -> None:
    h.register(key(1), ALICE, T0)
    watch(h, ALICE, (2, 3), T0)
    [first] = told(register_collecting(h, key(2), BOB, T0), ALICE)
    # Carol changes while bob's PRESENCE is in flight; alice then stops watching her.
    register_collecting(h, key(3), CAROL, T0 + 1)
    h.request(Method.WATCH, ALICE, T0 + 2, (Attr.UNWATCH_IDS, (3,)))
    assert told(ack(h, first, ALICE, T0 + 3), ALICE) == []


def test_the_swap_example_of_protocol_md_is_what_the_codec_writes() -> None:
    # docs/PROTOCOL.md 5.9: peer 1 at its cap swaps ids 3 and 4 for id 5.
    documented = bytes.fromhex(
        "20090034 2112a442 b7e7a701 bc34d686 fa87dfae 40070014 00000001 00010203 04050607"
        " 08090a0b 0c0d0e0f 40120008 00000003 00000004 400c0004 00000005 80280004 f460e75c"
    )
    session = bytes.fromhex("00000001") + bytes(range(16))
    tid = bytes.fromhex("b7e7a701bc34d686fa87dfae")
    request = session_request(
        Method.WATCH, session, (Attr.UNWATCH_IDS, (3, 4)), (Attr.WATCH_IDS, (5,)), transaction_id=tid
    )
    assert encode(request) == documented
    assert decode(documented).get(Attr.UNWATCH_IDS) == (3, 4)
