"""ServerCore, pure: bytes, a source address and a literal ``now`` in; datagrams and events out.

No sockets and no clock.  The addresses are documentation addresses (RFC
5737 / RFC 3849) standing for peers behind NATs; nothing is ever sent to
them.  The little in-memory id table in :class:`Harness` plays the adapter's
part (the registry), which is not what these tests are about.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from binascii import crc32

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastpath_harness import build_library, feed_through
from hypothesis import given, settings
from hypothesis import strategies as st

from rendezvous import fastpath
from rendezvous.client import cursor_after, public_key_bytes, register_request, session_request
from rendezvous.core import (
    Dropped,
    PeerOffline,
    PeerOnline,
    RequestReceived,
    ServerConfig,
    ServerCore,
)
from rendezvous.registry import PeerRecord, legacy_identity
from rendezvous.stun import (
    FINGERPRINT_XOR,
    MAX_RELAY_PAYLOAD,
    Address,
    Attr,
    CandidateKind,
    Message,
    MessageClass,
    Method,
    decode,
    encode,
)
from rendezvous.tokens import Tokens, registration_details, registration_payload

SECRET = b"unit-test-secret-0123456789abcdef"
T0 = 1000.0
ALICE: Address = ("192.0.2.10", 40001)
BOB: Address = ("198.51.100.20", 50002)
CAROL: Address = ("2001:db8::30", 60003)
MALLORY: Address = ("203.0.113.66", 6666)
# The directory may keep a peer up to this long after its TTL (its expiry
# wheel's grain); never less than the TTL.
EXPIRY_GRAIN = 0.25


def key(n: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32)


class Harness:
    """A core plus the adapter's bookkeeping: ids handed out in order, per
    identity.  With ``library`` every datagram goes first to the compiled fast
    path (rendezvous/_fastpath.c), as the server's socket reader does, and
    only what it leaves reaches the core."""

    def __init__(self, config: ServerConfig | None = None, library: fastpath.Library | None = None) -> None:
        self.core = ServerCore(config or ServerConfig(), Tokens(SECRET))
        self.ids: dict[bytes, int] = {}
        self.sessions: dict[Address, bytes] = {}
        self.fast = None
        if library is not None:
            self.fast = fastpath.FastPath.for_config(library, self.core.config)
            self.core.attach_session_cache(self.fast)

    def feed(self, data: bytes | Message, address: Address, now: float) -> list[tuple[bytes, Address]]:
        raw = encode(data) if isinstance(data, Message) else data
        answered = None
        if self.fast is not None:
            answered = feed_through(self.fast, self.core, raw, address, now)
        else:
            self.core.receive_datagram(raw, address, now)
        for pending in self.core.pending_registrations():
            peer_id = self.ids.setdefault(pending.identity, len(self.ids) + 1)
            self.core.complete_registration(pending, peer_id, None, now)
        return (answered or []) + self.core.datagrams_to_send()

    def ask(self, request: Message, address: Address, now: float) -> Message:
        """The one reply to ``request``, decoded (it must carry a FINGERPRINT)."""
        out = [d for d, a in self.feed(request, address, now) if a == address]
        assert len(out) == 1, out
        reply = decode(out[0], require_fingerprint=True)
        assert reply.transaction_id == request.transaction_id
        assert reply.method == request.method
        return reply

    def register(self, private_key: Ed25519PrivateKey, address: Address, now: float, **kwargs: object) -> Message:
        public_key = public_key_bytes(private_key)
        first = self.ask(register_request(public_key, **kwargs), address, now)  # type: ignore[arg-type]
        assert error_code(first) == 401
        challenge = first.get(Attr.CHALLENGE)
        details = registration_details(kwargs.get("nickname", ""), kwargs.get("local", ()), kwargs.get("ttl"))  # type: ignore[arg-type]
        signature = private_key.sign(registration_payload(challenge, public_key, details))
        signed = register_request(public_key, challenge=challenge, signature=signature, **kwargs)  # type: ignore[arg-type]
        reply = self.ask(signed, address, now)
        assert reply.message_class == MessageClass.SUCCESS, reply.get(Attr.ERROR_CODE)
        self.sessions[address] = reply.get(Attr.SESSION)
        return reply

    def request(self, method: Method, address: Address, now: float, *attributes: tuple[int, object]) -> Message:
        return self.ask(session_request(method, self.sessions[address], *attributes), address, now)


def error_code(message: Message) -> int | None:
    value = message.get(Attr.ERROR_CODE)
    return None if value is None else value.code


def binding(tid: bytes | None = None) -> Message:
    return Message(Method.BINDING, MessageClass.REQUEST, tid or os.urandom(12))


def _flip_last_bit(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> fastpath.Library:
    return build_library(tmp_path_factory.mktemp("fastpath"))


@pytest.fixture(params=["python", "compiled"])
def h(request: pytest.FixtureRequest) -> Harness:
    """Every test of the core with ``h`` runs twice: Python answers all, then
    the compiled fast path answers what it can first."""
    if request.param == "python":
        return Harness()
    return Harness(library=request.getfixturevalue("library"))


# ------------------------------------------------------------ Binding


@pytest.mark.parametrize("address", [ALICE, CAROL], ids=["ipv4", "ipv6"])
def test_binding_answers_the_observed_address_within_3x(h: Harness, address: Address) -> None:
    for fingerprint in (False, True):
        request = binding()
        data = encode(request, fingerprint=fingerprint)
        [(reply_bytes, to)] = h.feed(data, address, T0)
        assert to == address
        reply = decode(reply_bytes, require_fingerprint=True)
        assert reply.message_class == MessageClass.SUCCESS
        assert reply.transaction_id == request.transaction_id
        assert reply.get(Attr.XOR_MAPPED_ADDRESS) == address
        # Anyone can send a Binding with a forged source: never reflect more than 3x.
        assert len(reply_bytes) <= 3 * len(data)
    assert h.core.stats["binding"] == 2


def test_classic_rfc3489_binding_gets_mapped_address(h: Harness) -> None:
    request = Message(Method.BINDING, MessageClass.REQUEST, os.urandom(16), classic=True)
    [(data, to)] = h.feed(encode(request, fingerprint=False), ALICE, T0)
    reply = decode(data, allow_classic=True)
    assert reply.classic and reply.transaction_id == request.transaction_id
    assert reply.get(Attr.MAPPED_ADDRESS) == ALICE
    assert reply.get(Attr.XOR_MAPPED_ADDRESS) is None
    # Only Binding exists in RFC 3489 framing.
    classic_list = Message(Method.LIST, MessageClass.REQUEST, os.urandom(16), classic=True)
    assert h.feed(encode(classic_list), ALICE, T0) == []
    assert h.core.stats["dropped: classic non-Binding request"] == 1


def test_unknown_method_and_unknown_required_attributes(h: Harness) -> None:
    reply = h.ask(Message(0x0FF, MessageClass.REQUEST, os.urandom(12)), ALICE, T0)
    assert reply.get(Attr.ERROR_CODE) == (400, "Unknown method 0x0ff")
    reply = h.ask(binding().add(0x7777, b"??"), ALICE, T0)
    assert error_code(reply) == 420
    assert reply.get(Attr.UNKNOWN_ATTRIBUTES) == (0x7777,)
    # Comprehension-optional ones are ignored.
    reply = h.ask(binding().add(0xC0FF, b"whatever"), ALICE, T0)
    assert reply.message_class == MessageClass.SUCCESS


def test_hundreds_of_unknown_attributes_get_one_bounded_420(h: Harness) -> None:
    # Found by tests/integration/test_fuzz_live.py: UNKNOWN-ATTRIBUTES holds
    # 64 bytes, a request can name hundreds of codes (it used to raise).
    many = binding()
    for code in range(0x7000, 0x7000 + 300):
        many.add(code, b"")
    reply = h.ask(many, ALICE, T0)
    assert error_code(reply) == 420
    assert reply.get(Attr.UNKNOWN_ATTRIBUTES) == tuple(range(0x7000, 0x7000 + 32))
    repeated = binding()
    for _ in range(100):
        repeated.add(0x7ABC, b"")
    assert h.ask(repeated, ALICE, T0).get(Attr.UNKNOWN_ATTRIBUTES) == (0x7ABC,)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "not STUN"),
        (b"hello", "not STUN"),
        (b"REGISTER", "not STUN"),  # legacy text is off by default
        (bytes(19), "not STUN"),
        (bytes(20) + b"\x00", "malformed: MalformedMessage"),
        (_flip_last_bit(encode(binding())), "malformed: IntegrityError"),
        (encode(Message(Method.LIST, MessageClass.SUCCESS, bytes(12))), "unexpected response"),
        (encode(Message(Method.INTRODUCE, MessageClass.SUCCESS, bytes(12))), "unexpected response"),
        (encode(Message(Method.DATA, MessageClass.INDICATION, bytes(12))), "unexpected indication"),
        (encode(Message(Method.SEND, MessageClass.INDICATION, bytes(12))), "SEND incomplete"),
    ],
    # Named, not shown: a random transaction id in an id would differ between
    # two collections (pytest-xdist's workers must collect the same tests).
    ids=[
        "empty",
        "hello",
        "REGISTER",
        "19 zero bytes",
        "header and one byte",
        "flipped integrity",
        "LIST success",
        "INTRODUCE success",
        "DATA indication",
        "SEND indication",
    ],
)
def test_junk_is_a_counted_drop(h: Harness, data: bytes, reason: str) -> None:
    assert h.feed(data, MALLORY, T0) == []
    assert h.core.stats["dropped"] == 1
    assert h.core.stats["dropped: " + reason] == 1
    assert h.core.events() == [Dropped(reason, MALLORY)]


# ------------------------------------------------------------ REGISTER


def test_register_is_challenge_then_signature_then_id(h: Harness) -> None:
    alice = key(1)
    public_key = public_key_bytes(alice)
    request = register_request(public_key, nickname="alice", local=(("10.0.0.5", 4000),))
    out = h.feed(request, ALICE, T0)
    [(data, to)] = out
    first = decode(data)
    assert to == ALICE
    assert first.get(Attr.ERROR_CODE).code == 401
    challenge = first.get(Attr.CHALLENGE)
    assert len(challenge) == 20
    assert len(data) <= 3 * len(encode(request))  # unproven address: small answer
    assert h.core.pending_registrations() == []

    details = registration_details("alice", (("10.0.0.5", 4000),), None)
    signature = alice.sign(registration_payload(challenge, public_key, details))
    signed = register_request(
        public_key, nickname="alice", local=(("10.0.0.5", 4000),), challenge=challenge, signature=signature
    )
    h.core.receive_datagram(encode(signed), ALICE, T0 + 1)
    # No answer until the registry has made the id durable.
    assert h.core.datagrams_to_send() == []
    [pending] = h.core.pending_registrations()
    assert (pending.identity, pending.address, pending.nickname, pending.ttl) == (public_key, ALICE, "alice", 60)
    assert pending.local == (("10.0.0.5", 4000),)
    # A retransmission meanwhile is absorbed, not a second registration.
    h.core.receive_datagram(encode(signed), ALICE, T0 + 1.5)
    assert h.core.datagrams_to_send() == [] and h.core.pending_registrations() == []

    h.core.complete_registration(pending, 7, None, T0 + 2)
    [(data, to)] = h.core.datagrams_to_send()
    reply = decode(data, require_fingerprint=True)
    assert reply.transaction_id == signed.transaction_id
    assert reply.get(Attr.PEER_ID) == 7
    assert reply.get(Attr.TTL) == 60
    assert reply.get(Attr.XOR_MAPPED_ADDRESS) == ALICE
    assert len(reply.get(Attr.SESSION)) == 20
    record = h.core.directory.get(7)
    assert record is not None
    assert (record.identity, record.observed, record.first_seen, record.expires_at) == (
        public_key,
        ALICE,
        T0 + 2,
        T0 + 62,
    )
    # A later retransmission gets the very same bytes.
    h.core.receive_datagram(encode(signed), ALICE, T0 + 3)
    assert h.core.datagrams_to_send() == [(data, ALICE)]


def test_register_events(h: Harness) -> None:
    h.register(key(1), ALICE, T0)
    events = h.core.events()
    assert events.count(RequestReceived("REGISTER", ALICE)) == 1
    assert PeerOnline(1, ALICE) in events
    # Registering again (new address, same key) is no new PeerOnline.
    h.register(key(1), BOB, T0 + 1)
    assert [e for e in h.core.events() if isinstance(e, PeerOnline)] == []
    assert h.core.directory.get(1).observed == BOB


def test_a_challenge_is_bound_to_address_key_and_time(h: Harness) -> None:
    alice = key(1)
    public_key = public_key_bytes(alice)
    challenge = h.ask(register_request(public_key), ALICE, T0).get(Attr.CHALLENGE)
    signature = alice.sign(registration_payload(challenge, public_key))

    def signed(k: bytes = public_key, sig: bytes = signature) -> Message:
        return register_request(k, challenge=challenge, signature=sig)

    # From another address, or too late: a fresh challenge instead of an id.
    assert h.ask(signed(), MALLORY, T0).get(Attr.CHALLENGE) not in (None, challenge)
    assert h.ask(signed(), ALICE, T0 + 61).get(Attr.CHALLENGE) is not None
    # For another key (even with that key's valid signature): same.
    other = key(2)
    other_key = public_key_bytes(other)
    forged = signed(other_key, other.sign(registration_payload(challenge, other_key)))
    assert error_code(h.ask(forged, ALICE, T0)) == 401
    # Right challenge, wrong signature.
    reply = h.ask(signed(sig=bytes(64)), ALICE, T0)
    assert reply.get(Attr.ERROR_CODE) == (401, "Bad Signature")
    assert h.core.stats["bad_signatures"] == 1
    assert h.core.pending_registrations() == []
    # Within its lifetime it works.
    assert h.ask(signed(), ALICE, T0 + 59).message_class == MessageClass.SUCCESS


def test_register_without_key_is_400(h: Harness) -> None:
    reply = h.ask(Message(Method.REGISTER, MessageClass.REQUEST, os.urandom(12)), ALICE, T0)
    assert reply.get(Attr.ERROR_CODE) == (400, "PUBLIC-KEY missing")


@pytest.mark.parametrize(("asked", "granted"), [(None, 60), (1, 10), (45, 45), (10**6, 3600)])
def test_ttl_is_clamped(h: Harness, asked: int | None, granted: int) -> None:
    assert h.register(key(1), ALICE, T0, ttl=asked).get(Attr.TTL) == granted
    assert h.core.directory.get(1).expires_at == T0 + granted


def test_failed_registration_is_503_and_can_be_retried(h: Harness) -> None:
    alice = key(1)
    public_key = public_key_bytes(alice)
    challenge = h.ask(register_request(public_key), ALICE, T0).get(Attr.CHALLENGE)
    signed = register_request(
        public_key, challenge=challenge, signature=alice.sign(registration_payload(challenge, public_key))
    )
    h.core.receive_datagram(encode(signed), ALICE, T0)
    [pending] = h.core.pending_registrations()
    h.core.fail_registration(pending, T0)
    [(data, _)] = h.core.datagrams_to_send()
    assert error_code(decode(data)) == 503
    # The same transaction again is a new attempt, not a cached failure.
    h.core.receive_datagram(encode(signed), ALICE, T0 + 1)
    assert len(h.core.pending_registrations()) == 1


def test_registrations_are_rate_limited_per_source_ip() -> None:
    h = Harness(ServerConfig(register_per_second=1, register_burst=3))
    for n in range(3):
        h.register(key(n + 1), ("192.0.2.10", 1000 + n), T0)
    public_key = public_key_bytes(key(9))
    address = ("192.0.2.10", 2000)
    challenge = h.ask(register_request(public_key), address, T0).get(Attr.CHALLENGE)
    signed = register_request(
        public_key, challenge=challenge, signature=key(9).sign(registration_payload(challenge, public_key))
    )
    assert error_code(h.ask(signed, address, T0)) == 429
    # Another IP is not affected; the same one is again a second later.
    h.register(key(10), BOB, T0)
    assert h.ask(signed, address, T0 + 1.0).get(Attr.PEER_ID) == 5


# ------------------------------------------------------------ sessions, REFRESH, expiry


def test_requests_need_the_session_from_its_own_address(h: Harness) -> None:
    h.register(key(1), ALICE, T0)
    session = h.sessions[ALICE]
    assert h.ask(session_request(Method.LIST, session), ALICE, T0).message_class == MessageClass.SUCCESS
    stolen = h.ask(session_request(Method.LIST, session), MALLORY, T0)
    assert stolen.get(Attr.ERROR_CODE) == (401, "Register Again")
    forged = h.ask(session_request(Method.REFRESH, session[:-1] + bytes([session[-1] ^ 1])), ALICE, T0)
    assert forged.get(Attr.ERROR_CODE) == (401, "Register Again")
    unknown_id = h.ask(session_request(Method.LIST, struct.pack("!I", 99) + session[4:]), ALICE, T0)
    assert error_code(unknown_id) == 401
    bare = h.ask(Message(Method.CONNECT, MessageClass.REQUEST, os.urandom(12)), ALICE, T0)
    assert bare.get(Attr.ERROR_CODE) == (401, "SESSION missing")
    # A peer that registered again from elsewhere left its old session behind.
    h.register(key(1), BOB, T0 + 1)
    assert h.ask(session_request(Method.LIST, session), ALICE, T0 + 1).get(Attr.ERROR_CODE) == (401, "Register Again")
    h.register(key(1), ALICE, T0 + 2)
    assert h.sessions[ALICE] == session  # bound to (id, key, address): the same token again
    # Sessions outlive a restart of the core (same secret).
    again = Harness()
    again.core.directory.put(h.core.directory.get(1))
    assert again.ask(session_request(Method.LIST, session), ALICE, T0).message_class == MessageClass.SUCCESS


def test_peers_expire_at_their_ttl_and_refresh_extends_it(h: Harness) -> None:
    h.register(key(1), ALICE, T0)  # expires at 1060
    h.register(key(2), BOB, T0 + 5, ttl=20)  # expires at 1025
    h.core.events()
    # The timer may round up to the directory's grain: at most EXPIRY_GRAIN late.
    assert 1025.0 <= h.core.get_timer() <= 1025.0 + EXPIRY_GRAIN
    h.core.handle_timer(1024.999)
    assert 2 in h.core.directory
    h.core.handle_timer(h.core.get_timer())
    assert 2 not in h.core.directory
    assert h.core.events() == [PeerOffline(2, "expired")]

    refreshed = h.request(Method.REFRESH, ALICE, 1030.0, (Attr.TTL, 100))
    assert refreshed.get(Attr.TTL) == 100
    assert refreshed.get(Attr.XOR_MAPPED_ADDRESS) == ALICE
    record = h.core.directory.get(1)
    assert (record.last_seen, record.expires_at) == (1030.0, 1130.0)
    # The old deadline passes without effect (the timer may still fire for it).
    h.core.handle_timer(1060.0 + EXPIRY_GRAIN)
    assert 1 in h.core.directory
    assert h.core.events() == []
    assert 1130.0 <= h.core.get_timer() <= 1130.0 + EXPIRY_GRAIN
    h.core.handle_timer(1129.999)
    assert 1 in h.core.directory
    h.core.handle_timer(1130.0 + EXPIRY_GRAIN)
    assert 1 not in h.core.directory
    assert h.core.events() == [PeerOffline(1, "expired")]
    assert h.core.get_timer() is None
    # Once expired, the session is worthless: register again.
    assert h.request(Method.REFRESH, ALICE, 1131.0).get(Attr.ERROR_CODE) == (401, "Register Again")
    assert h.core.stats["peers_expired"] == 2


def test_unregister_goes_offline_and_the_id_stays(h: Harness) -> None:
    h.register(key(1), ALICE, T0)
    h.register(key(2), BOB, T0)
    h.core.events()
    assert h.request(Method.UNREGISTER, BOB, T0 + 1).message_class == MessageClass.SUCCESS
    assert PeerOffline(2, "unregistered") in h.core.events()
    assert h.request(Method.LIST, ALICE, T0 + 2).get_all(Attr.PEER_ENTRY) == []
    assert h.register(key(2), BOB, T0 + 3).get(Attr.PEER_ID) == 2


def test_list_and_connect_are_rate_limited_refresh_is_not() -> None:
    h = Harness(ServerConfig(requests_per_second=10, requests_burst=5))
    h.register(key(1), ALICE, T0)
    codes = [error_code(h.request(Method.LIST, ALICE, T0)) for _ in range(7)]
    assert codes == [None] * 5 + [429, 429]
    assert h.request(Method.REFRESH, ALICE, T0).message_class == MessageClass.SUCCESS
    assert error_code(h.request(Method.LIST, ALICE, T0 + 0.1)) is None  # one token back after 0.1 s


# ------------------------------------------------------------ transactions cache


def test_retransmitted_request_gets_the_cached_reply_for_40_seconds(h: Harness) -> None:
    h.register(key(1), ALICE, T0)
    h.register(key(2), BOB, T0)
    request = session_request(Method.LIST, h.sessions[ALICE])
    first = h.feed(request, ALICE, T0)
    h.register(key(3), CAROL, T0 + 1)
    # Same transaction: same bytes, although the directory changed since.
    assert h.feed(request, ALICE, T0 + 39) == first
    assert h.core.stats["retransmissions_answered"] == 1
    assert h.core.stats["list"] == 1
    # Another address with the same transaction id is another transaction.
    assert error_code(h.ask(request, MALLORY, T0 + 39)) == 401
    h.core.handle_timer(T0 + 40)
    fresh = h.ask(request, ALICE, T0 + 41)
    assert [e.peer_id for e in fresh.get_all(Attr.PEER_ENTRY)] == [2, 3]
    assert h.core.stats["list"] == 3  # alice, mallory, alice again


# ------------------------------------------------------------ LIST


def test_list_pages_by_id_and_leaves_out_the_requester(h: Harness) -> None:
    for n in range(1, 8):
        h.register(key(n), ("192.0.2.1", 1000 + n), T0 + n, nickname=f"peer{n}")
    me = ("192.0.2.1", 1003)
    seen, cursor, pages = [], None, 0
    while True:
        extra = [(Attr.LIMIT, 2)] + ([(Attr.CURSOR, cursor)] if cursor else [])
        reply = h.request(Method.LIST, me, T0 + 10, *extra)
        entries = reply.get_all(Attr.PEER_ENTRY)
        assert len(entries) <= 2
        seen += entries
        pages += 1
        cursor = reply.get(Attr.CURSOR)
        if cursor is None:
            break
    assert [e.peer_id for e in seen] == [1, 2, 4, 5, 6, 7]
    assert pages == 3
    assert seen[0].public_key == public_key_bytes(key(1))
    assert seen[0].nickname == "peer1"
    assert seen[0].online_since == int(T0 + 1)
    after_five = h.request(Method.LIST, me, T0 + 10, (Attr.CURSOR, cursor_after(5)))
    assert [e.peer_id for e in after_five.get_all(Attr.PEER_ENTRY)] == [6, 7]
    assert after_five.get(Attr.CURSOR) is None


@pytest.mark.parametrize("cursor", [b"\x02\x00\x00\x00\x01", b"\x01\x00", b"\x01" + bytes(8)])
def test_list_rejects_a_bad_cursor(h: Harness, cursor: bytes) -> None:
    h.register(key(1), ALICE, T0)
    assert h.request(Method.LIST, ALICE, T0, (Attr.CURSOR, cursor)).get(Attr.ERROR_CODE) == (400, "Bad CURSOR")


def test_list_reply_fits_1200_bytes_whatever_the_limit(h: Harness) -> None:
    for n in range(1, 41):
        h.register(key(n), ("192.0.2.1", 1000 + n), T0, nickname="n" * 64)
    out = h.feed(
        session_request(Method.LIST, h.sessions[("192.0.2.1", 1001)], (Attr.LIMIT, 100)), ("192.0.2.1", 1001), T0
    )
    [(data, _)] = out
    assert len(data) <= 1200
    reply = decode(data)
    assert reply.get(Attr.CURSOR) is not None
    assert len(reply.get_all(Attr.PEER_ENTRY)) >= 10


# ------------------------------------------------------------ CONNECT and INTRODUCE


def test_connect_answers_and_introduces_with_rfc_retransmissions(h: Harness) -> None:
    h.register(key(1), ALICE, T0, nickname="alice", local=(("10.0.0.1", 5000),))
    h.register(key(2), BOB, T0, nickname="bob", local=(("10.0.0.2", 5000),))
    request = session_request(Method.CONNECT, h.sessions[ALICE], (Attr.PEER_ID, 2))
    out = h.feed(request, ALICE, T0)
    replies = [decode(d) for d, a in out if a == ALICE]
    intros = [d for d, a in out if a == BOB]
    assert len(replies) == 1 and len(intros) == 1
    reply = replies[0]
    assert reply.get(Attr.PEER_ID) == 2
    assert reply.get(Attr.PUBLIC_KEY) == public_key_bytes(key(2))
    assert reply.get(Attr.NICKNAME) == "bob"
    assert [(c.kind, c.address) for c in reply.get_all(Attr.CANDIDATE)] == [
        (CandidateKind.OBSERVED, BOB),
        (CandidateKind.LOCAL, ("10.0.0.2", 5000)),
    ]
    intro = decode(intros[0], require_fingerprint=True)
    assert (intro.method, intro.message_class) == (Method.INTRODUCE, MessageClass.REQUEST)
    assert intro.get(Attr.PEER_ID) == 1
    assert intro.get(Attr.PUBLIC_KEY) == public_key_bytes(key(1))
    assert intro.get_all(Attr.CANDIDATE)[0].address == ALICE
    assert RequestReceived("CONNECT", ALICE, " to peer 2") in h.core.events()

    # Unanswered, the introduction is resent on the RFC 8489 schedule (RTO
    # 0.5 s, 7 sends) and given up 4 RTO after the last.
    sends = []
    timed_out_at = None
    while (at := h.core.get_timer()) is not None and at < T0 + 100:
        h.core.handle_timer(at)
        for data, address in h.core.datagrams_to_send():
            assert (data, address) == (intros[0], BOB)
            sends.append(at - T0)
        if h.core.stats["introductions_timed_out"]:
            timed_out_at = at - T0
            break
    assert sends == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert timed_out_at == 33.5
    assert h.core.stats["introductions_retransmitted"] == 6


def test_an_acknowledged_introduction_is_not_resent(h: Harness) -> None:
    h.register(key(1), ALICE, T0)
    h.register(key(2), BOB, T0)
    request = session_request(Method.CONNECT, h.sessions[ALICE], (Attr.PEER_ID, 2))
    out = h.feed(request, ALICE, T0)
    [intro] = [decode(d) for d, a in out if a == BOB]
    # A retransmitted CONNECT is answered from the cache: no second introduction.
    again = h.feed(request, ALICE, T0 + 0.2)
    assert [a for _, a in again] == [ALICE]
    ack = Message(Method.INTRODUCE, MessageClass.SUCCESS, intro.transaction_id)
    # Only the target, at the address it was introduced at, can acknowledge.
    assert h.feed(ack, MALLORY, T0 + 0.25) == []
    assert h.core.stats["introductions_acknowledged"] == 0
    assert h.feed(ack, BOB, T0 + 0.3) == []
    assert h.core.stats["introductions_acknowledged"] == 1
    h.core.handle_timer(T0 + 50)
    assert h.core.datagrams_to_send() == []
    # A second acknowledgement is a stray.
    h.feed(ack, BOB, T0 + 51)
    assert h.core.stats["dropped: unexpected response"] == 2


def test_connect_errors(h: Harness) -> None:
    legacy = Harness(ServerConfig(legacy_text=True))
    for core in (h, legacy):
        core.register(key(1), ALICE, T0)
    legacy.feed(b"REGISTER", BOB, T0)  # legacy peer 2
    assert legacy.core.directory.get(2).identity == legacy_identity(BOB)
    cases = [
        (h, [(Attr.PEER_ID, 1)], (400, "Cannot connect to yourself")),
        (h, [(Attr.PEER_ID, 99)], (410, "No Such Peer")),
        (h, [(Attr.PEER_ID, 0)], (410, "No Such Peer")),
        (h, [], (400, "PEER-ID missing")),
        (legacy, [(Attr.PEER_ID, 2)], (404, "Unknown Peer")),
    ]
    for harness, attributes, expected in cases:
        assert harness.request(Method.CONNECT, ALICE, T0, *attributes).get(Attr.ERROR_CODE) == expected


def test_the_410_answer_has_the_bytes_docs_protocol_shows(h: Harness) -> None:
    h.register(key(1), ALICE, T0)
    request = session_request(Method.CONNECT, h.sessions[ALICE], (Attr.PEER_ID, 99))
    request.transaction_id = bytes(range(12))
    [(data, _)] = h.feed(request, ALICE, T0)
    assert data.hex() == (
        "21150028" "2112a442" "000102030405060708090a0b"
        "00090010" "0000040a4e6f205375636820" "50656572"
        "80220008" "706565726c696e6b"
        "80280004" "66123860"
    )  # fmt: skip


def test_connect_tells_an_offline_peer_from_an_id_never_assigned(h: Harness) -> None:
    h.register(key(1), ALICE, T0)
    h.register(key(2), BOB, T0)
    assert h.request(Method.UNREGISTER, BOB, T0 + 1).message_class == MessageClass.SUCCESS
    # Bob's id stays his: offline is 404; 3 was never given to anyone: 410.
    assert h.request(Method.CONNECT, ALICE, T0 + 2, (Attr.PEER_ID, 2)).get(Attr.ERROR_CODE) == (404, "Unknown Peer")
    assert h.request(Method.CONNECT, ALICE, T0 + 2, (Attr.PEER_ID, 3)).get(Attr.ERROR_CODE) == (410, "No Such Peer")
    # A registration raises the mark; so does what the adapter loaded at start.
    h.register(key(3), CAROL, T0 + 3)
    h.request(Method.UNREGISTER, CAROL, T0 + 3)
    assert error_code(h.request(Method.CONNECT, ALICE, T0 + 4, (Attr.PEER_ID, 3))) == 404
    restarted = ServerCore(ServerConfig(), Tokens(SECRET), highest_id=500)
    assert restarted.highest_id == 500
    h.core.highest_id = 500
    assert error_code(h.request(Method.CONNECT, ALICE, T0 + 5, (Attr.PEER_ID, 500))) == 404
    assert error_code(h.request(Method.CONNECT, ALICE, T0 + 5, (Attr.PEER_ID, 501))) == 410


# ------------------------------------------------------------ SEND (relay)


def send(session: bytes, dest: int, payload: bytes) -> Message:
    message = Message(Method.SEND, MessageClass.INDICATION, os.urandom(12))
    return message.add(Attr.SESSION, session).add(Attr.PEER_ID, dest).add(Attr.DATA, payload)


def test_send_relays_to_the_destination_and_names_the_sender(h: Harness) -> None:
    h.register(key(1), ALICE, T0)
    h.register(key(2), BOB, T0)
    [(data, to)] = h.feed(send(h.sessions[ALICE], 2, b"\x40quic"), ALICE, T0)
    assert to == BOB
    relayed = decode(data)
    assert (relayed.method, relayed.message_class) == (Method.DATA, MessageClass.INDICATION)
    assert (relayed.get(Attr.PEER_ID), relayed.get(Attr.DATA)) == (1, b"\x40quic")
    # From the wrong address, or to nobody: dropped, counted, nothing sent.
    assert h.feed(send(h.sessions[ALICE], 2, b"x"), MALLORY, T0) == []
    assert h.feed(send(h.sessions[ALICE], 9, b"x"), ALICE, T0) == []
    assert h.core.stats["dropped: SEND unauthorised"] == 1
    assert h.core.stats["dropped: SEND to unknown peer"] == 1
    assert h.core.stats["relayed_packets"] == 1


def test_relay_is_rate_limited_per_sender() -> None:
    h = Harness(ServerConfig(relay_packets_per_second=10, relay_burst_seconds=1))
    h.register(key(1), ALICE, T0)
    h.register(key(2), BOB, T0)
    delivered = sum(len(h.feed(send(h.sessions[ALICE], 2, b"p"), ALICE, T0)) for _ in range(15))
    assert delivered == 10
    assert h.core.stats["dropped: relay rate limited"] == 5
    # Bob's budget is his own; Alice's refills at 10 per second.
    assert len(h.feed(send(h.sessions[BOB], 1, b"p"), BOB, T0)) == 1
    assert sum(len(h.feed(send(h.sessions[ALICE], 2, b"p"), ALICE, T0 + 0.5)) for _ in range(10)) == 5


# ------------------------------------------------------------ several instances


def two_instances() -> tuple[Harness, Harness]:
    """Two cores sharing one registry: ids from one table, one secret."""
    a, b = Harness(), Harness()
    b.ids = a.ids
    return a, b


def homed(record: PeerRecord, home: str) -> PeerRecord:
    return dataclasses.replace(record, home=home, verified_session=None)


def test_a_mirrored_peer_is_listed_and_its_introduction_is_forwarded_home() -> None:
    a, b = two_instances()
    a.register(key(1), ALICE, T0, nickname="alice")
    b.register(key(2), BOB, T0, nickname="bob")
    alice = a.core.directory.get(1)
    assert alice is not None
    b.core.mirror([homed(alice, "A")], T0)
    assert a.core.directory.take_dirty() and b.core.directory.take_dirty() == [b.core.directory.get(2)]
    assert [entry.peer_id for entry in b.request(Method.LIST, BOB, T0).get_all(Attr.PEER_ENTRY)] == [1]
    out = b.feed(session_request(Method.CONNECT, b.sessions[BOB], (Attr.PEER_ID, 1)), BOB, T0)
    # B answers its peer but sends nothing to Alice: her NAT knows A's address, not B's.
    assert [address for _, address in out] == [BOB]
    assert decode(out[0][0]).get(Attr.PUBLIC_KEY) == public_key_bytes(key(1))
    [(home, target, intro)] = b.core.introductions_to_forward()
    assert (home, target) == ("A", 1)
    # A sends it, retransmits it, and takes Alice's acknowledgement.
    a.core.deliver_introduction(target, intro, T0)
    assert a.core.datagrams_to_send() == [(intro, ALICE)]
    a.core.deliver_introduction(target, intro, T0 + 0.1)  # a duplicate: ignored
    assert a.core.datagrams_to_send() == []
    a.core.handle_timer(T0 + 0.5)
    assert a.core.datagrams_to_send() == [(intro, ALICE)]
    a.feed(Message(Method.INTRODUCE, MessageClass.SUCCESS, decode(intro).transaction_id), ALICE, T0 + 0.6)
    assert a.core.stats["introductions_acknowledged"] == 1
    # Only INTRODUCE requests for peers registered here are delivered.
    a.core.deliver_introduction(2, intro, T0)
    a.core.deliver_introduction(1, b"junk" * 10, T0)
    assert a.core.stats["introductions_undeliverable"] == 2


def test_a_mirrored_peer_has_no_session_here() -> None:
    a, b = two_instances()
    a.register(key(1), ALICE, T0)
    b.register(key(2), BOB, T0)
    alice = a.core.directory.get(1)
    assert alice is not None
    b.core.mirror([homed(alice, "A")], T0)
    # Alice's token is good (one secret) but her requests belong at A.
    reply = b.ask(session_request(Method.LIST, a.sessions[ALICE]), ALICE, T0)
    assert reply.get(Attr.ERROR_CODE) == (401, "Register Again")
    assert b.feed(send(a.sessions[ALICE], 2, b"x"), ALICE, T0) == []
    assert b.core.stats["dropped: SEND unauthorised"] == 1


def test_relay_to_a_mirrored_peer_is_forwarded_to_its_home_which_sends_it_on() -> None:
    a, b = two_instances()
    a.register(key(1), ALICE, T0)
    b.register(key(2), BOB, T0)
    alice = a.core.directory.get(1)
    assert alice is not None
    b.core.mirror([homed(alice, "A")], T0)
    # B checks Bob's session and rate, but sends nothing to Alice itself.
    assert b.feed(send(b.sessions[BOB], 1, b"\x40quic"), BOB, T0) == []
    [(home, target, data)] = b.core.introductions_to_forward()
    assert (home, target) == ("A", 1)
    assert b.core.stats["relay_forwarded"] == 1
    a.core.deliver_forwarded(target, data, T0)
    [(sent, to)] = a.core.datagrams_to_send()
    assert to == ALICE
    relayed = decode(sent)
    assert (relayed.method, relayed.message_class) == (Method.DATA, MessageClass.INDICATION)
    assert (relayed.get(Attr.PEER_ID), relayed.get(Attr.DATA)) == (2, b"\x40quic")
    # Sent once, never retransmitted like an INTRODUCE.
    a.core.handle_timer(T0 + 5)
    assert a.core.datagrams_to_send() == []
    # Only to peers registered at the home, and only well-sized DATA indications.
    a.core.deliver_forwarded(2, data, T0)
    a.core.deliver_forwarded(1, data[:2] + b"\x00" * 2000, T0)
    assert a.core.datagrams_to_send() == []
    assert a.core.stats["relay_undeliverable"] == 2
    assert a.core.stats["relayed_from_instances"] == 1


def test_the_largest_relayed_datagram_passes_the_homes_size_check() -> None:
    a, b = two_instances()
    a.register(key(1), ALICE, T0)
    b.register(key(2), BOB, T0)
    alice = a.core.directory.get(1)
    assert alice is not None
    b.core.mirror([homed(alice, "A")], T0)
    b.feed(send(b.sessions[BOB], 1, b"q" * MAX_RELAY_PAYLOAD), BOB, T0)
    [(_, target, data)] = b.core.introductions_to_forward()
    a.core.deliver_forwarded(target, data, T0)
    assert [to for _, to in a.core.datagrams_to_send()] == [ALICE]


def test_relay_to_a_sibling_workers_peer_leaves_from_the_shared_socket() -> None:
    a, b = two_instances()
    a.register(key(1), ALICE, T0)
    b.register(key(2), BOB, T0)
    alice = a.core.directory.get(1)
    assert alice is not None
    b.core.sibling_prefix = "host:3478/"
    b.core.mirror([homed(alice, "host:3478/w0")], T0)
    [(sent, to)] = b.feed(send(b.sessions[BOB], 1, b"p"), BOB, T0)
    assert to == ALICE and decode(sent).get(Attr.PEER_ID) == 2
    assert b.core.introductions_to_forward() == []
    # A worker of another port or host is another instance: forwarded.
    b.core.mirror([homed(dataclasses.replace(alice, last_seen=T0 + 1), "host:3479/w0")], T0 + 1)
    assert b.feed(send(b.sessions[BOB], 1, b"p"), BOB, T0 + 1) == []
    assert [home for home, _, _ in b.core.introductions_to_forward()] == ["host:3479/w0"]


def test_mirrors_follow_their_home_and_a_newer_registration_moves_a_peer() -> None:
    a, b = two_instances()
    a.register(key(1), ALICE, T0)
    alice = a.core.directory.get(1)
    assert alice is not None
    b.core.mirror([homed(alice, "A")], T0)
    # Mirrors expire by themselves (their home died) without an offline event...
    b.core.handle_timer(alice.expires_at + 1)
    assert 1 not in b.core.directory
    assert not [e for e in b.core.events() if isinstance(e, PeerOffline)]
    # ...or leave when their home says so (UNREGISTER: expires_at = now).
    b.core.mirror([homed(alice, "A")], T0)
    b.core.mirror([homed(dataclasses.replace(alice, expires_at=T0 + 1), "A")], T0 + 2)
    assert 1 not in b.core.directory
    # Alice registers at B later: A's copy becomes a mirror of B's, and A never writes it.
    b.register(key(1), ALICE, T0 + 5)
    moved = b.core.directory.get(1)
    assert moved is not None and moved.home == ""
    a.core.directory.take_dirty()
    a.core.mirror([homed(moved, "B")], T0 + 5)
    assert a.core.directory.get(1).home == "B"  # type: ignore[union-attr]
    assert a.core.directory.take_dirty() == []
    assert a.core.stats["peers_moved_away"] == 1
    # An older record from elsewhere does not take a local peer away.
    a.register(key(1), ALICE, T0 + 9)
    a.core.mirror([homed(moved, "B")], T0 + 9)
    assert a.core.directory.get(1).home == ""  # type: ignore[union-attr]


# ------------------------------------------------------------ legacy text


def test_legacy_text_through_the_core() -> None:
    h = Harness(ServerConfig(legacy_text=True))
    h.core.receive_datagram(b"REGISTER", ALICE, T0)
    assert h.core.datagrams_to_send() == []
    [pending] = h.core.pending_registrations()
    assert pending.request is None and pending.identity == legacy_identity(ALICE)
    h.ids[pending.identity] = 1
    h.core.complete_registration(pending, 1, None, T0)
    assert h.core.datagrams_to_send() == [(b"REGISTER_ACK:1", ALICE)]
    assert h.feed(b"REGISTER", BOB, T0) == [(b"REGISTER_ACK:2", BOB)]
    assert h.feed(b"LIST", ALICE, T0 + 1) == [(b"LIST_ACK:2,('198.51.100.20', 50002)", ALICE)]
    assert h.feed(b"CONNECT:2", ALICE, T0 + 1) == [(b"CONNECT_ACK:198.51.100.20:50002", ALICE)]
    # Any request counts as a refresh.
    assert h.core.directory.get(1).expires_at == T0 + 61
    assert h.core.directory.get(2).expires_at == T0 + 60
    assert h.feed(b"EXIT", BOB, T0 + 2) == [(b"EXIT_ACK", BOB)]
    assert h.feed(b"LIST", ALICE, T0 + 3) == [(b"LIST_ACK:", ALICE)]
    # An unregistered sender gets only what is no bigger than 3x its datagram.
    assert h.feed(b"LIST", MALLORY, T0) == []
    assert h.feed(b"CONNECT:1", MALLORY, T0) == [(b"ERROR:register first", MALLORY)]
    assert h.core.stats["dropped: legacy reply would amplify"] == 1
    # An IPv6 peer's address is bracketed for CONNECT_ACK.
    h.feed(b"REGISTER", CAROL, T0)
    assert h.feed(b"CONNECT:3", ALICE, T0 + 4) == [(b"CONNECT_ACK:[2001:db8::30]:60003", ALICE)]


def test_legacy_registration_failure_is_an_error_line() -> None:
    h = Harness(ServerConfig(legacy_text=True))
    h.core.receive_datagram(b"REGISTER", ALICE, T0)
    [pending] = h.core.pending_registrations()
    h.core.fail_registration(pending, T0)
    assert h.core.datagrams_to_send() == [(b"ERROR:try again later", ALICE)]


# ------------------------------------------------------------ never raises


def _tlv(code: int, value: bytes) -> bytes:
    return struct.pack("!HH", code, len(value)) + value + bytes(-len(value) % 4)


ATTRIBUTE_CODES = st.one_of(st.sampled_from([int(a) for a in Attr]), st.integers(0, 0xFFFF))
METHODS = st.one_of(st.sampled_from([int(m) for m in Method]), st.integers(0, 0xFFF))


@st.composite
def framed_messages(draw: st.DrawFn) -> bytes:
    """Well-framed STUN (right lengths, right FINGERPRINT) with arbitrary methods and attributes."""
    method = draw(METHODS)
    message_class = draw(st.sampled_from(list(MessageClass)))
    message = Message(method, message_class, draw(st.binary(min_size=12, max_size=12)))
    body = b"".join(draw(st.lists(st.builds(_tlv, ATTRIBUTE_CODES, st.binary(max_size=70)), max_size=8)))
    if draw(st.booleans()):
        body = _tlv(Attr.SESSION, SESSIONS[0]) + body
    header = encode(message, fingerprint=False)
    head = header[:2] + struct.pack("!H", len(body) + 8) + header[4:20]
    crc = crc32(head + body) ^ FINGERPRINT_XOR
    return head + body + struct.pack("!HHI", Attr.FINGERPRINT, 4, crc)


def _registered_harness() -> Harness:
    h = Harness(ServerConfig(legacy_text=True))
    h.register(key(1), ALICE, T0)
    h.register(key(2), BOB, T0)
    return h


SESSIONS = [_registered_harness().sessions[ALICE]]


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(
    st.one_of(framed_messages(), st.binary(max_size=100), st.text(max_size=30).map(str.encode)),
    st.sampled_from([ALICE, MALLORY]),
)
def test_no_datagram_makes_the_core_raise_or_amplify(data: bytes, source: Address) -> None:
    h = _registered_harness()
    h.core.receive_datagram(data, source, T0 + 1)
    for pending in h.core.pending_registrations():
        h.core.complete_registration(pending, 3, None, T0 + 1)
    h.core.handle_timer(T0 + 2)
    for out, to in h.core.datagrams_to_send():
        assert len(out) <= 1500
        if to == MALLORY and source == MALLORY:
            # Never registered: never more than 3x what it sent.
            assert len(out) <= 3 * len(data)


def test_the_signature_covers_nickname_addresses_and_ttl(h: Harness) -> None:
    alice = key(1)
    public_key = public_key_bytes(alice)
    first = h.ask(register_request(public_key, nickname="alice"), ALICE, T0)
    challenge = first.get(Attr.CHALLENGE)
    details = registration_details("alice", (), None)
    signature = alice.sign(registration_payload(challenge, public_key, details))
    # Someone on the path renames her, or adds an address for her introductions: refused.
    for tampered in (
        register_request(public_key, nickname="mallory", challenge=challenge, signature=signature),
        register_request(
            public_key, nickname="alice", local=(("203.0.113.66", 9),), challenge=challenge, signature=signature
        ),
        register_request(public_key, nickname="alice", ttl=3600, challenge=challenge, signature=signature),
    ):
        assert h.ask(tampered, ALICE, T0).get(Attr.ERROR_CODE) == (401, "Bad Signature")
    good = register_request(public_key, nickname="alice", challenge=challenge, signature=signature)
    assert h.ask(good, ALICE, T0).message_class == MessageClass.SUCCESS
