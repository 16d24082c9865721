"""PeerLink: QUIC plus mutual key authentication, driven in memory with literal times."""

from __future__ import annotations

from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import StreamDataReceived
from aioquic.quic.packet import pull_quic_header
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from webpeer.identity import Identity
from webpeer.link import (
    FrameReceived,
    HelloReceived,
    LinkClosed,
    LinkReady,
    LinkState,
    PeerLink,
    Role,
    quic_configuration,
)
from webpeer.path import Direct
from webpeer.wire import encode_frame

A_ADDR = Direct(("127.0.0.1", 4001))
B_ADDR = Direct(("127.0.0.1", 4002))


def identity() -> Identity:
    return Identity(Ed25519PrivateKey.generate())


def pump(
    a: PeerLink, b: PeerLink | None, now: float, acceptor_factory=None, registry=None, rounds: int = 20, issued=()
):
    """Move datagrams both ways until quiet; returns (a, b, events_a, events_b)."""
    events_a: list = []
    events_b: list = []
    for round_ in range(rounds):
        # Let a little time pass each round (QUIC paces and delays ACKs).
        now += 0.005 * round_
        for link in (a, b):
            if link is not None and (timer := link.get_timer()) is not None and timer <= now:
                link.handle_timer(now)
        moved = False
        for data, _addr in a.datagrams_to_send(now):
            moved = True
            if b is None:
                header = pull_quic_header(Buffer(data=data), host_cid_length=8)
                b = acceptor_factory(header.destination_cid)
            b.receive_datagram(data, A_ADDR, now)
        if b is not None:
            for data, _addr in b.datagrams_to_send(now):
                moved = True
                a.receive_datagram(data, B_ADDR, now)
        for link, sink in ((a, events_a), (b, events_b)):
            while link is not None and (event := link.next_event()) is not None:
                sink.append(event)
                if isinstance(event, HelloReceived):
                    link.confirm_hello(registry(event.peer_id) if registry else None, issued)
                    moved = True
        if not moved and round_ > 5:
            break
    return b, events_a, events_b


def make_pair(alice: Identity, bob: Identity, bob_key_in_registry: bytes, alice_key_in_registry: bytes):
    now = 1000.0
    a = PeerLink.connect(alice, 1, B_ADDR, 2, bob_key_in_registry, now)
    config = quic_configuration(bob, Role.ACCEPTOR, 30.0)

    def factory(cid: bytes) -> PeerLink:
        return PeerLink.accept(bob, 2, A_ADDR, cid, config)

    registry = {1: alice_key_in_registry}.get
    b, ea, eb = pump(a, None, now, factory, registry)
    return a, b, ea, eb


def test_both_sides_authenticate_and_exchange_frames() -> None:
    alice, bob = identity(), identity()
    a, b, ea, eb = make_pair(alice, bob, bob.public_key, alice.public_key)
    assert a.state is LinkState.READY and b.state is LinkState.READY
    assert LinkReady(2, bob.public_key) in ea
    assert LinkReady(1, alice.public_key) in eb
    a.send_frame({"t": "msg", "id": "m1", "text": "hello"})
    _, _, eb2 = pump(a, b, 1000.1)
    assert FrameReceived({"t": "msg", "id": "m1", "text": "hello"}) in eb2


def test_connector_refuses_a_different_key_for_the_id() -> None:
    alice, bob, mallory = identity(), identity(), identity()
    # The registry says id 2 is bob, but mallory answers.
    a, b, ea, eb = make_pair(alice, mallory, bob.public_key, alice.public_key)
    assert a.state is LinkState.CLOSED
    assert "different key" in a.close_reason
    assert not any(isinstance(e, LinkReady) for e in ea + eb)


def test_acceptor_refuses_a_connector_whose_key_is_not_the_registrys() -> None:
    alice, bob, other = identity(), identity(), identity()
    a, b, ea, eb = make_pair(alice, bob, bob.public_key, other.public_key)
    assert b.state is LinkState.CLOSED
    assert "registry does not give" in b.close_reason
    # The connector was READY optimistically (it sends behind its hello);
    # the refusal closes it, and the acceptor never took anything.
    assert any(isinstance(e, LinkClosed) for e in ea) and a.state is LinkState.CLOSED
    assert not any(isinstance(e, (LinkReady, FrameReceived)) for e in eb)


def test_frames_before_authentication_close_the_link() -> None:
    alice, bob = identity(), identity()
    now = 1000.0
    a = PeerLink.connect(alice, 1, B_ADDR, 2, bob.public_key, now)
    config = quic_configuration(bob, Role.ACCEPTOR, 30.0)
    holder = {}

    def factory(cid):
        holder["b"] = PeerLink.accept(bob, 2, A_ADDR, cid, config)
        return holder["b"]

    # Stop the connector from sending hello: replace it with a message frame.
    original = a._on_handshake_completed

    def rogue(now: float) -> None:
        a._send({"t": "msg", "id": "x", "text": "sneaky"})
        a.state = LinkState.WAITING_CHALLENGE

    a._on_handshake_completed = rogue  # type: ignore[method-assign]
    b, ea, eb = pump(a, None, now, factory, {1: alice.public_key}.get)
    assert b.state is LinkState.CLOSED
    assert "'msg' not allowed in state waiting-hello" in b.close_reason
    assert not any(isinstance(e, FrameReceived) for e in eb)
    del original


def test_the_challenge_rides_the_first_flight_so_the_connector_is_ready_after_one_round_trip() -> None:
    alice, bob = identity(), identity()
    now = 1000.0
    a = PeerLink.connect(alice, 1, B_ADDR, 2, bob.public_key, now)
    initial = a.datagrams_to_send(now)
    header = pull_quic_header(Buffer(data=initial[0][0]), host_cid_length=8)
    b = PeerLink.accept(bob, 2, A_ADDR, header.destination_cid, quic_configuration(bob, Role.ACCEPTOR, 30.0))
    for data, _ in initial:
        b.receive_datagram(data, A_ADDR, now + 0.02)
    for data, _ in b.datagrams_to_send(now + 0.02):
        a.receive_datagram(data, B_ADDR, now + 0.04)
    assert a.state is LinkState.READY and a.next_event() == LinkReady(2, bob.public_key)
    a.send_frame({"t": "msg", "id": "m1", "text": "behind the hello"})
    for data, _ in a.datagrams_to_send(now + 0.04):
        b.receive_datagram(data, A_ADDR, now + 0.06)
    # The acceptor holds the message until its owner confirms the key.
    assert b.next_event() == HelloReceived(1, alice.public_key)
    assert b.next_event() is None
    b.confirm_hello(alice.public_key)
    assert b.next_event() == LinkReady(1, alice.public_key)
    assert b.next_event() == FrameReceived({"t": "msg", "id": "m1", "text": "behind the hello"})


def _deaf_to_challenges(link: PeerLink) -> PeerLink:
    """A connector that never sees the acceptor's stream-3 challenge (as if
    that packet were lost), so it falls back to a check answer's nonce."""
    link._on_challenge_stream = lambda data, now: None  # type: ignore[method-assign]
    return link


def test_a_hello_may_sign_a_nonce_from_a_check_answer_but_only_one_that_was_issued() -> None:
    alice, bob = identity(), identity()
    nonce = b"n" * 32
    for issued, ready in (([nonce], True), ([b"x" * 32], False)):
        now = 1000.0
        a = _deaf_to_challenges(PeerLink.connect(alice, 1, B_ADDR, 2, bob.public_key, now))
        a.check_nonce = nonce
        config = quic_configuration(bob, Role.ACCEPTOR, 30.0)

        def factory(cid: bytes, config: QuicConfiguration = config) -> PeerLink:
            return PeerLink.accept(bob, 2, A_ADDR, cid, config)

        registry = {1: alice.public_key}.get
        b, ea, eb = pump(a, None, now, factory, registry, issued=issued)
        assert LinkReady(2, bob.public_key) in ea
        if ready:
            assert b.state is LinkState.READY
            assert LinkReady(1, alice.public_key) in eb
            a.send_frame({"t": "msg", "id": "m1", "text": "right away"})
            _, _, eb2 = pump(a, b, now + 0.1)
            assert FrameReceived({"t": "msg", "id": "m1", "text": "right away"}) in eb2
        else:
            assert b.state is LinkState.CLOSED
            assert "did not issue" in b.close_reason


def test_a_connector_without_any_nonce_waits_and_an_unsigned_hello_is_refused() -> None:
    alice, bob = identity(), identity()
    now = 1000.0
    a = _deaf_to_challenges(PeerLink.connect(alice, 1, B_ADDR, 2, bob.public_key, now))
    config = quic_configuration(bob, Role.ACCEPTOR, 30.0)
    b, ea, eb = pump(a, None, now, lambda cid: PeerLink.accept(bob, 2, A_ADDR, cid, config), {1: alice.public_key}.get)
    assert a.state is LinkState.WAITING_CHALLENGE and not any(isinstance(e, LinkReady) for e in ea)
    assert b.state is LinkState.WAITING_HELLO
    # An old-style hello (no nonce, no signature) is a protocol error.
    a._send({"t": "hello", "id": 1, "key": alice.public_key.hex()})
    pump(a, b, now + 0.1)
    assert b.state is LinkState.CLOSED and "nonce" in b.close_reason


def test_a_second_challenge_or_another_frame_on_stream_3_closes_the_link() -> None:
    alice, bob = identity(), identity()
    a = PeerLink.connect(alice, 1, B_ADDR, 2, bob.public_key, 1000.0)
    a._on_stream_data(StreamDataReceived(encode_frame({"t": "msg", "id": "x", "text": "no"}), False, 3), 1000.0)
    assert a.state is LinkState.CLOSED and "carries one challenge" in a.close_reason


def test_the_first_flight_can_go_again_until_the_other_side_answers() -> None:
    alice, bob = identity(), identity()
    now = 1000.0
    a = PeerLink.connect(alice, 1, B_ADDR, 2, bob.public_key, now)
    lost = a.datagrams_to_send(now)  # dropped by the other side's NAT, say
    assert lost and a.datagrams_to_send(now) == []
    assert a.resend_first_flight()
    again = a.datagrams_to_send(now + 0.03)
    assert again == lost  # the same bytes: a duplicate would be dropped by QUIC
    header = pull_quic_header(Buffer(data=again[0][0]), host_cid_length=8)
    config = quic_configuration(bob, Role.ACCEPTOR, 30.0)
    b = PeerLink.accept(bob, 2, A_ADDR, header.destination_cid, config)
    for data, _ in again:
        b.receive_datagram(data, A_ADDR, now + 0.05)
    for data, _ in b.datagrams_to_send(now + 0.05):
        a.receive_datagram(data, B_ADDR, now + 0.07)
    assert a.state is LinkState.READY and a.heard_back
    assert not a.resend_first_flight()  # answered: nothing to repeat
