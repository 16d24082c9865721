"""The peer's socket under fuzz (issue 16: "a fuzz test for the peer's
socket, like the server's"), through the pure engine on the in-memory
network (tests/unit/peer_net.py), with literal times.

The datagrams are mutations of real ones, captured on the way to a peer in
a live conversation: the server's answers and requests (REGISTER and LIST
answers, INTRODUCE, PRESENCE, the relay's DATA carrying peerlink QUIC),
the other peer's QUIC packets and connectivity checks; plus noise.  STUN
mutations get a correct FINGERPRINT again, so they reach the engine's logic
instead of dying at the framing check.  They come from the server's
address, the other peer's, and strangers' (documentation addresses: the
network is in memory, nothing leaves the process).

No exception may escape ``receive_datagram`` (the test calls it directly),
the engine's state must stay bounded, and afterwards the two peers must
still talk both ways.  20,000 datagrams here; PEERLINK_LONG_FUZZ=1 sends
100,000 (and the live socket test, tests/integration/test_fuzz_live.py,
covers the server)."""

from __future__ import annotations

import binascii
import os
import random
import struct

import pytest
from peer_net import MAIN_PORT, SERVER, Peer, PeerNet

from rendezvous.stun import FINGERPRINT_XOR, looks_like_stun
from webpeer.engine import MAX_UNAUTHENTICATED_LINKS

COUNT = 100_000 if os.environ.get("PEERLINK_LONG_FUZZ") == "1" else 20_000
STRANGERS = [("192.0.2.77", 4000 + n) for n in range(40)] + [("2001:db8::77", 4444)]
_FINGERPRINT_HEAD = bytes.fromhex("80280004")


def capture(net: PeerNet, bob: Peer) -> list[tuple[bytes, tuple[str, int]]]:
    """Every datagram the network delivers to bob's main socket from now on, with its source."""
    seen: list[tuple[bytes, tuple[str, int]]] = []
    original = net.transmit

    def transmit(data: bytes, source: tuple[str, int], destination: tuple[str, int]) -> None:
        if destination == (bob.nat.public_ip, MAIN_PORT) and len(seen) < 5000:
            seen.append((data, source))
        original(data, source, destination)

    net.transmit = transmit  # type: ignore[method-assign]
    return seen


def refingerprint(data: bytes) -> bytes:
    """A STUN message whose last attribute is a FINGERPRINT gets a correct one again."""
    if len(data) >= 28 and looks_like_stun(data) and data[-8:-4] == _FINGERPRINT_HEAD:
        crc = binascii.crc32(data[:-8]) ^ FINGERPRINT_XOR
        return data[:-4] + struct.pack("!I", crc)
    return data


def mutate(rng: random.Random, samples: list[bytes]) -> bytes:
    data = bytearray(rng.choice(samples))
    kind = rng.randrange(10)
    if kind == 0:  # noise, of any first byte
        return rng.randbytes(rng.choice((0, 1, 4, 20, 21, 40, 300, 1200, 1500)))
    if kind == 1 and len(data) > 1:  # truncated
        return bytes(data[: rng.randrange(1, len(data))])
    if kind == 2:  # extended
        return bytes(data) + rng.randbytes(rng.randrange(1, 64))
    if kind == 3:  # spliced with another capture
        other = rng.choice(samples)
        cut = rng.randrange(len(data) + 1)
        return bytes(data[:cut]) + other[rng.randrange(len(other) + 1) :]
    if kind == 4 and len(data) >= 4:  # a length field made absurd (STUN header, or an attribute's)
        at = rng.choice((2, *range(20, max(21, len(data) - 4), 4)))
        if at + 2 <= len(data):
            data[at : at + 2] = struct.pack("!H", rng.choice((0, 1, 3, 0x7FFF, 0xFFFF)))
        return refingerprint(bytes(data))
    if kind == 5 and data:  # the first byte: STUN, QUIC long or short header, other
        data[0] = rng.choice((0x00, 0x01, 0x03, 0x40, 0x7F, 0xC0, 0xFF, rng.randrange(256)))
        return bytes(data)
    # Bit flips and byte changes in place, then a valid FINGERPRINT again.
    for _ in range(rng.randrange(1, 9)):
        if not data:
            break
        at = rng.randrange(len(data))
        data[at] = data[at] ^ (1 << rng.randrange(8)) if rng.random() < 0.7 else rng.randrange(256)
    return refingerprint(bytes(data))


@pytest.mark.slow
def test_mutated_datagrams_never_raise_keep_state_bounded_and_the_peers_still_talk(net: PeerNet) -> None:
    alice = net.add("alice")
    bob = net.add("bob")
    seen = capture(net, bob)
    net.run_until(lambda: alice.engine.my_id is not None and bob.engine.my_id is not None, 2)
    net.run_until(lambda: alice.engine.session(bob.peer_id).online, 3)
    first = alice.send(bob, "hello bob")
    net.run_until(lambda: alice.status(first) == "delivered", 3)
    reply = bob.send(alice, "hello alice")
    net.run_until(lambda: bob.status(reply) == "delivered", 3)
    # The relay too, so DATA indications carrying QUIC are among the samples.
    net.cut(alice, bob)
    relayed = alice.send(bob, "through the relay")
    net.run_until(lambda: alice.status(relayed) == "delivered", 15)
    net.mend(alice, bob)
    net.run(3)
    kinds = {("stun" if looks_like_stun(d) else "quic") for d, _ in seen}
    assert kinds == {"stun", "quic"} and len(seen) >= 20
    samples = [d for d, _ in seen]
    alice_address = next(source for data, source in seen if not looks_like_stun(data))

    rng = random.Random(16)
    sources = [SERVER, alice_address, *STRANGERS]
    engine = bob.engine
    for n in range(COUNT):
        source = sources[0] if rng.random() < 0.3 else rng.choice(sources)
        # Straight into the engine: an exception here fails the test.
        engine.receive_datagram(mutate(rng, samples), source, net.now)
        if n % 250 == 249:
            bob.flush()  # what it answers goes out (to strangers: nowhere, the network drops it)
        if n % 1000 == 999:
            net.run(0.2)  # timers run; alice and the server go on as usual
            assert len(engine._accepting) <= MAX_UNAUTHENTICATED_LINKS
            assert len(engine.links()) <= MAX_UNAUTHENTICATED_LINKS + 8
            assert len(engine._cids) <= 16 * (MAX_UNAUTHENTICATED_LINKS + 8)
            assert len(engine.peer_states) <= 64
    # Enough of them got past the framing to reach the logic behind it.
    assert engine.stats["bad_stun"] < COUNT // 2

    # The conversation goes on, both ways.
    net.run(10)
    after = alice.send(bob, "still there?")
    net.run_until(lambda: alice.status(after) == "delivered", 20)
    back = bob.send(alice, "yes")
    net.run_until(lambda: bob.status(back) == "delivered", 20)
    assert [m["text"] for m in bob.store.conversation(alice.peer_id)][-2:] == ["still there?", "yes"]


def test_an_initial_quic_drops_unread_takes_no_slot_and_breaks_no_flush(net: PeerNet) -> None:
    alice = net.add("alice")
    net.run_until(lambda: alice.engine.my_id is not None, 2)
    # A long-header Initial of 1,200 bytes (8-byte connection ids, no token)
    # of a QUIC version nobody speaks: our header check passes it, aioquic
    # drops it before it sets up a path (so nothing could be sent for it).
    rng = random.Random(7)
    for n in range(3 * MAX_UNAUTHENTICATED_LINKS):
        version = struct.pack("!I", 0x1A2A3A4A)
        header = bytes([0xC3]) + version + b"\x08" + rng.randbytes(8) + b"\x08" + rng.randbytes(8)
        body = b"\x00" + struct.pack("!H", 0x4000 | 1150) + rng.randbytes(1150)
        data = (header + body).ljust(1200, b"\x00")
        alice.engine.receive_datagram(data, ("192.0.2.9", 1000 + n), net.now)
        alice.flush()  # aioquic's datagrams_to_send raised IndexError for such a link
    assert alice.engine._accepting == {}
    assert alice.engine.stats["quic_initial_unusable"] == 3 * MAX_UNAUTHENTICATED_LINKS
    # An honest peer still connects.
    bob = net.add("bob")
    net.run_until(lambda: bob.engine.my_id is not None and bob.engine.session(alice.peer_id).online, 3)
    sent = bob.send(alice, "hi")
    net.run_until(lambda: bob.status(sent) == "delivered", 5)
