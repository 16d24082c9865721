"""The compiled fast path (rendezvous/_fastpath.c) against the Python path.

Every reply the C side gives must be byte for byte what
``ServerCore.answer_hot`` gives for the same datagram, address and session
state, and every datagram it leaves ("not mine") must be one the Python hot
path leaves too: checked on golden requests, on random and mutated datagrams
(Hypothesis), and on the session table's bookkeeping against a dict.
"""

from __future__ import annotations

import array
import os
import socket
import struct
from binascii import crc32
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastpath_harness import build_library
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rendezvous import fastpath
from rendezvous.core import ServerConfig, ServerCore
from rendezvous.registry import PeerRecord
from rendezvous.stun import FINGERPRINT_XOR, Address, Attr, Message, MessageClass, Method, encode
from rendezvous.tokens import Tokens

SECRET = b"unit-test-secret-0123456789abcdef"
T0 = 1000.0
ALICE: Address = ("192.0.2.10", 40001)
BOB: Address = ("198.51.100.20", 50002)
CAROL: Address = ("2001:db8::30", 60003)
MALLORY: Address = ("203.0.113.66", 6666)
PEERS = {1: ALICE, 2: BOB, 3: CAROL}


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> fastpath.Library:
    return build_library(tmp_path_factory.mktemp("fastpath"))


class Pair:
    """A Python core and a C context configured alike, with the same peers
    online and the same sessions checked."""

    def __init__(self, library: fastpath.Library, config: ServerConfig, *, ipv6_socket: bool = False) -> None:
        self.core = ServerCore(config, Tokens(SECRET))
        self.fast = fastpath.FastPath.for_config(library, config)
        if ipv6_socket:
            self.fast.family = socket.AF_INET6  # sources arrive as sockaddr_in6 (IPv4-mapped for IPv4)
        self.core.attach_session_cache(self.fast)
        self.tokens = Tokens(SECRET)
        self.sessions: dict[int, bytes] = {}
        for peer_id, address in PEERS.items():
            identity = Ed25519PrivateKey.from_private_bytes(bytes([peer_id]) * 32).public_key().public_bytes_raw()
            record = PeerRecord(
                peer_id=peer_id,
                identity=identity,
                nickname="",
                observed=address,
                local=(),
                first_seen=T0,
                last_seen=T0,
                expires_at=T0 + 120,
                online_since=T0,
            )
            self.core.directory.put(record)
            self.sessions[peer_id] = self.tokens.session(peer_id, identity, address)
            # The first REFRESH goes through Python, which checks the token and hands it to the C side.
            assert self.core.answer_hot(refresh(self.sessions[peer_id], None, fingerprint=True), address, T0)
        self.core.datagrams_to_send()

    def python(self, data: bytes, address: Address) -> bytes | None:
        core = self.core
        core.datagrams_to_send()
        if not core.answer_hot(data, address, T0 + 1):
            assert not core.datagrams_to_send()
            return None
        out = core.datagrams_to_send()
        assert len(out) == 1 and out[0][1] == address
        return out[0][0]

    def c(self, data: bytes, address: Address) -> bytes | None:
        answer = self.fast.answer(data, address)
        return None if answer is None else answer[0]


@pytest.fixture
def pair(library: fastpath.Library) -> Iterator[Pair]:
    p = Pair(library, ServerConfig())
    yield p
    p.fast.close()


def stun(method: int, tid: bytes, body: bytes, *, fingerprint: bool) -> bytes:
    message = Message(method, MessageClass.REQUEST, tid)
    header = encode(message, fingerprint=False)
    length = len(body) + (8 if fingerprint else 0)
    head = header[:2] + struct.pack("!H", length) + header[4:20]
    if not fingerprint:
        return head + body
    return head + body + struct.pack("!HHI", Attr.FINGERPRINT, 4, crc32(head + body) ^ FINGERPRINT_XOR)


def refresh(session: bytes, ttl: int | None, *, fingerprint: bool, tid: bytes = b"t" * 12) -> bytes:
    body = struct.pack("!HH", Attr.SESSION, 20) + session
    if ttl is not None:
        body += struct.pack("!HHI", Attr.TTL, 4, ttl)
    return stun(Method.REFRESH, tid, body, fingerprint=fingerprint)


# ------------------------------------------------------------ golden requests


@pytest.mark.parametrize("address", [ALICE, CAROL, MALLORY], ids=["ipv4", "ipv6", "stranger"])
@pytest.mark.parametrize("fingerprint", [False, True])
def test_bare_binding_is_answered_with_the_python_paths_bytes(pair: Pair, address: Address, fingerprint: bool) -> None:
    request = stun(Method.BINDING, os.urandom(12), b"", fingerprint=fingerprint)
    reply = pair.c(request, address)
    assert reply is not None
    assert reply == pair.python(request, address)


@pytest.mark.parametrize("ttl", [None, 0, 30, 100, 3600, 0xFFFFFFFF])
@pytest.mark.parametrize("fingerprint", [False, True])
@pytest.mark.parametrize("peer_id", [1, 3], ids=["ipv4", "ipv6"])
def test_refresh_of_a_checked_session_is_answered_with_the_python_paths_bytes(
    pair: Pair, ttl: int | None, fingerprint: bool, peer_id: int
) -> None:
    request = refresh(pair.sessions[peer_id], ttl, fingerprint=fingerprint, tid=os.urandom(12))
    answer = pair.fast.answer(request, PEERS[peer_id])
    assert answer is not None
    reply, refreshed_id, granted = answer
    assert reply == pair.python(request, PEERS[peer_id])
    config = pair.core.config
    expected = config.default_ttl if ttl is None else max(config.min_ttl, min(config.max_ttl, ttl))
    assert (refreshed_id, granted) == (peer_id, expected)


def test_an_ipv6_socket_answers_ipv4_mapped_sources_as_ipv4(library: fastpath.Library) -> None:
    p = Pair(library, ServerConfig(), ipv6_socket=True)
    for address in (ALICE, CAROL):
        request = stun(Method.BINDING, os.urandom(12), b"", fingerprint=True)
        assert p.c(request, address) == p.python(request, address)
    request = refresh(p.sessions[1], 60, fingerprint=True)
    assert p.c(request, ALICE) == p.python(request, ALICE)


def test_refresh_from_another_address_or_with_another_token_is_not_mine(pair: Pair) -> None:
    good = pair.sessions[1]
    assert pair.c(refresh(good, None, fingerprint=True), BOB) is None
    assert pair.c(refresh(good, None, fingerprint=True), (ALICE[0], ALICE[1] + 1)) is None
    forged = good[:-1] + bytes([good[-1] ^ 1])
    assert pair.c(refresh(forged, None, fingerprint=True), ALICE) is None
    # Bob's token, Alice's id: not a session the C side holds.
    assert pair.c(refresh(good[:4] + pair.sessions[2][4:], None, fingerprint=True), ALICE) is None


def test_what_the_python_hot_path_leaves_the_c_side_leaves(pair: Pair) -> None:
    tid = b"x" * 12
    session = pair.sessions[1]
    leftovers = [
        stun(Method.BINDING, tid, struct.pack("!HHI", Attr.CHANGE_REQUEST, 4, 0), fingerprint=True),
        stun(Method.BINDING, tid, b"", fingerprint=True)[:-1] + b"\x00",  # bad FINGERPRINT
        stun(Method.LIST, tid, struct.pack("!HH", Attr.SESSION, 20) + session, fingerprint=True),
        refresh(session, 60, fingerprint=True)[:-4] + b"\x00" * 4,
        refresh(session, None, fingerprint=False) + b"\x00" * 4,  # length field no longer matches
        b"\x00\x01\x00\x00" + b"\x00" * 16,  # no magic cookie: RFC 3489
    ]
    for data in leftovers:
        assert pair.c(data, ALICE) is None
        assert pair.python(data, ALICE) is None


def test_with_an_other_address_binding_is_left_to_the_generic_path(library: fastpath.Library) -> None:
    # RFC 5780: every Binding answer must then carry OTHER-ADDRESS, which only the generic path adds.
    p = Pair(library, ServerConfig(other_address=("192.0.2.1", 3479), primary_address=("192.0.2.1", 3478)))
    request = stun(Method.BINDING, os.urandom(12), b"", fingerprint=True)
    assert p.c(request, ALICE) is None
    assert p.python(request, ALICE) is None
    p.core.receive_datagram(request, ALICE, T0)
    (reply, _), *_ = p.core.datagrams_to_send()
    assert struct.pack("!H", Attr.OTHER_ADDRESS) in reply
    assert p.c(refresh(p.sessions[1], None, fingerprint=True), ALICE) == p.python(
        refresh(p.sessions[1], None, fingerprint=True), ALICE
    )


# ------------------------------------------------------------ the session table follows the directory


def test_a_changed_or_gone_record_takes_its_refreshes_back_to_python(pair: Pair) -> None:
    core, request = pair.core, refresh(pair.sessions[1], None, fingerprint=True)
    assert pair.c(request, ALICE) is not None
    record = core.directory.get(1)
    assert record is not None
    core.directory.put(record)  # re-registered (in place, as complete_registration does)
    assert pair.c(request, ALICE) is None
    assert pair.python(request, ALICE) is not None  # checked again by Python, handed back to C
    assert pair.c(request, ALICE) is not None
    core.directory.remove(1, T0)
    assert pair.c(request, ALICE) is None
    assert pair.python(request, ALICE) is None
    assert len(pair.fast) == 2


def test_expiry_and_mirrors_forget_the_session(pair: Pair) -> None:
    core = pair.core
    core.handle_timer(T0 + 200)  # every peer's TTL ran out
    assert len(core.directory) == 0
    assert len(pair.fast) == 0


def test_fast_answers_extend_the_ttl_as_python_refreshes_do(pair: Pair) -> None:
    core = pair.core
    before = core.stats.copy()
    core.fast_answered(2, memoryview(array.array("I", [1, 300, 3, 60])), T0 + 10)
    alice, carol = core.directory.get(1), core.directory.get(3)
    assert alice is not None and carol is not None
    assert (alice.expires_at, alice.last_seen) == (T0 + 310, T0 + 10)
    assert (carol.expires_at, carol.last_seen) == (T0 + 70, T0 + 10)
    counted = core.stats - before
    assert (counted["binding"], counted["refresh"], counted["datagrams_received"]) == (2, 2, 4)
    assert {r.peer_id for r in core.directory.take_dirty()} >= {1, 3}
    core.handle_timer(T0 + 200)
    assert core.directory.get(1) is not None and core.directory.get(3) is None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 5000)), max_size=1500))
def test_the_table_holds_exactly_what_was_added_and_not_removed(library: fastpath.Library, ops: list) -> None:
    fast = fastpath.FastPath.for_config(library, ServerConfig())
    tokens = Tokens(SECRET)
    model: dict[int, bytes] = {}
    for add, peer_id in ops:
        address = (f"10.0.0.{peer_id % 250}", 1000 + peer_id)
        if add:
            model[peer_id] = tokens.session(peer_id, b"k", address)
            fast.add(peer_id, address, model[peer_id])
        else:
            model.pop(peer_id, None)
            fast.discard(peer_id)
    assert len(fast) == len(model)
    for peer_id in {p for _, p in ops}:
        address = (f"10.0.0.{peer_id % 250}", 1000 + peer_id)
        token = model.get(peer_id, tokens.session(peer_id, b"k", address))
        assert (fast.answer(refresh(token, None, fingerprint=False), address) is not None) == (peer_id in model)
    fast.close()


# ------------------------------------------------------------ random and mutated datagrams


def _valid_requests() -> list[tuple[bytes, Address]]:
    tokens = Tokens(SECRET)
    out: list[tuple[bytes, Address]] = []
    for peer_id, address in PEERS.items():
        identity = Ed25519PrivateKey.from_private_bytes(bytes([peer_id]) * 32).public_key().public_bytes_raw()
        session = tokens.session(peer_id, identity, address)
        for ttl in (None, 45):
            for fingerprint in (False, True):
                out.append((refresh(session, ttl, fingerprint=fingerprint), address))
        for fingerprint in (False, True):
            out.append((stun(Method.BINDING, b"b" * 12, b"", fingerprint=fingerprint), address))
    return out


VALID = _valid_requests()


@st.composite
def mutated(draw: st.DrawFn) -> tuple[bytes, Address]:
    data, address = draw(st.sampled_from(VALID))
    raw = bytearray(data)
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["flip", "cut", "grow", "byte"]))
        if kind == "flip" and raw:
            i = draw(st.integers(0, len(raw) - 1))
            raw[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut" and raw:
            del raw[draw(st.integers(0, len(raw) - 1)) :]
        elif kind == "grow":
            raw += draw(st.binary(min_size=1, max_size=16))
        elif raw:
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        address = draw(st.sampled_from([ALICE, BOB, CAROL, MALLORY]))
    return bytes(raw), address


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(
        mutated(),
        st.tuples(st.binary(max_size=80), st.sampled_from([ALICE, CAROL, MALLORY])),
    )
)
def test_random_and_mutated_datagrams_get_the_same_answer_or_the_same_not_mine(
    pair: Pair, case: tuple[bytes, Address]
) -> None:
    data, address = case
    assert pair.c(data, address) == pair.python(data, address)


def test_the_library_refuses_a_configuration_it_cannot_serve(library: fastpath.Library) -> None:
    with pytest.raises(ValueError):
        fastpath.FastPath.for_config(library, ServerConfig(software="x" * 2000))
    with pytest.raises(ValueError):
        fastpath.FastPath.for_config(library, ServerConfig(min_ttl=100, max_ttl=10))


def test_load_is_none_where_the_library_is_missing_or_foreign(tmp_path: Path) -> None:
    assert fastpath.load(tmp_path / "libfastpath.so") is None
    (tmp_path / "libfastpath.so").write_bytes(b"not a library")
    assert fastpath.load(tmp_path / "libfastpath.so") is None
