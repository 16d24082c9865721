"""Hole punching between two peers: connectivity checks (sans-IO).

Both peers learn each other's candidates (observed and local addresses) from
the rendezvous server, with a fresh PUNCH-KEY that only the two of them got.
Each side then sends STUN Binding requests to every candidate in turn, paced,
with USERNAME "<their id>:<my id>" and MESSAGE-INTEGRITY under the key, and
answers the other side's requests; every answer carries this side's nonce
(CHALLENGE), which the connector may sign in its QUIC hello (link.py).  A
request that arrives from an address we did not know is a peer-reflexive
candidate (the other side's NAT mapping toward us): it is probed at once, as
ICE does.  The first candidate that answers one of our requests is a path
that works both ways: our packets reach it, its packets reach us.

    probes:   ``burst`` (1) every PACE seconds from t=0: candidates never probed
              first, in order, then the one probed longest ago, each at most
              every REPEAT seconds; the first valid request from an address
              is probed back at once (a triggered check)
    success:  a valid answer from address A -> SUCCEEDED(A)
    failure:  nothing within TIMEOUT seconds -> FAILED (the caller relays)

Time comes in as ``now``; randomness as ``random_bytes``.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from rendezvous.stun import Address, Attr, Message, MessageClass, Method, encode

PACE = 0.02
REPEAT = 0.2
TIMEOUT = 2.0  # no working pair by then: relay (and keep trying to upgrade)
MAX_CANDIDATES = 16


class PunchState(enum.Enum):
    PROBING = "probing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


def username(to_id: int, from_id: int) -> str:
    return f"{to_id}:{from_id}"


@dataclass
class PunchSession:
    my_id: int
    peer_id: int
    key: bytes
    candidates: list[Address]
    started: float
    timeout: float = TIMEOUT
    random_bytes: Callable[[int], bytes] = os.urandom
    state: PunchState = PunchState.PROBING
    chosen: Address | None = None
    _outbox: list[tuple[bytes, Address]] = field(default_factory=list)
    _sent_at: dict[Address, float] = field(default_factory=dict)
    _transactions: dict[bytes, Address] = field(default_factory=dict)
    _next_probe: float = 0.0
    probes_sent: int = 0
    # Pacing: ``burst`` probes every ``pace`` seconds, a candidate again only
    # after ``repeat``; the many-port spray uses a fast pace and no repeats.
    pace: float = PACE
    repeat: float = REPEAT
    burst: int = 1
    max_candidates: int = MAX_CANDIDATES
    _answered_from: set[Address] = field(default_factory=set)
    _fresh: int = 0  # candidates before this index have all been probed at least once
    # Ours goes into every answer; theirs comes with the answer that worked.
    # The connector signs theirs in its QUIC hello (link.py), saving a round trip.
    nonce: bytes = b""
    remote_nonce: bytes | None = None
    connect: bool = False  # the owner opens QUIC when the checks end (it asked for the peer)
    handled: bool = False
    # The owner's early QUIC Initial toward the other side: when it went, and
    # the round trip its CONNECT took (the owner's estimate of the path's);
    # ``initial_nudged``: the other side's first check from there was seen.
    initial_at: float | None = None
    connect_rtt: float | None = None
    initial_nudged: bool = False
    # The first peer-reflexive address a valid request came from: where the
    # other side's NAT maps it toward us (a symmetric NAT's port for us), and
    # open toward us, since it just sent from there.
    reflexive: Address | None = None

    def __post_init__(self) -> None:
        self.candidates = list(dict.fromkeys(self.candidates))[: self.max_candidates]
        if not self.nonce:
            self.nonce = self.random_bytes(32)
        self._next_probe = self.started
        self.handle_timer(self.started)

    # ------------------------------------------------------------ outputs

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        out, self._outbox = self._outbox, []
        return out

    def get_timer(self) -> float | None:
        if self.state is not PunchState.PROBING:
            return None
        return min(self._next_probe, self.started + self.timeout)

    # ------------------------------------------------------------ input

    def handle_timer(self, now: float) -> None:
        if self.state is not PunchState.PROBING:
            return
        if now >= self.started + self.timeout:
            self.state = PunchState.FAILED
            return
        if now < self._next_probe:
            return
        # The candidates probed longest ago (never probed first), if due.
        for _ in range(self.burst):
            target = self._next_due(now)
            if target is None:
                break
            self._probe(target, now)
        self._next_probe = now + self.pace

    def _next_due(self, now: float) -> Address | None:
        # Candidates never probed come first, in order (O(1) each: the spray
        # has a thousand); then the one probed longest ago, if due again.
        while self._fresh < len(self.candidates):
            candidate = self.candidates[self._fresh]
            self._fresh += 1
            if candidate not in self._sent_at:
                return candidate
        best, best_at = None, now - self.repeat
        for candidate in self.candidates:
            sent = self._sent_at[candidate]
            if sent <= best_at:
                best, best_at = candidate, sent
        return best

    def add_candidates(self, candidates: list[Address], now: float) -> None:
        for candidate in candidates:
            if candidate not in self.candidates and len(self.candidates) < self.max_candidates:
                self.candidates.append(candidate)

    def receive(self, message: Message, address: Address, now: float) -> bool:
        """A STUN message from ``address`` with our USERNAME pair; False if it
        is not for this session or fails the integrity check."""
        if message.message_class == MessageClass.REQUEST:
            if message.get(Attr.USERNAME) != username(self.my_id, self.peer_id):
                return False
            if not message.verify_integrity(self.key):
                return False
            answer = Message(Method.BINDING, MessageClass.SUCCESS, message.transaction_id)
            answer.add(Attr.XOR_MAPPED_ADDRESS, address)
            answer.add(Attr.CHALLENGE, self.nonce)
            self._outbox.append((encode(answer, integrity_key=self.key), address))
            if address not in self.candidates and len(self.candidates) < self.max_candidates:
                # Peer-reflexive: where its NAT maps it toward us.  Probe it now.
                self.candidates.append(address)
                if self.reflexive is None:
                    self.reflexive = address
                if self.state is PunchState.PROBING:
                    self._probe(address, now)
            elif self.state is PunchState.PROBING and address not in self._answered_from:
                # Triggered check: the other side just opened its NAT toward us;
                # probe back at once rather than at the next paced turn.
                self._probe(address, now)
            self._answered_from.add(address)
            return True
        if message.message_class == MessageClass.SUCCESS:
            target = self._transactions.get(message.transaction_id)
            if target is None or not message.verify_integrity(self.key):
                return False
            if self.state is PunchState.PROBING:
                self.state = PunchState.SUCCEEDED
                self.chosen = address
                nonce = message.get(Attr.CHALLENGE)
                self.remote_nonce = nonce if isinstance(nonce, bytes) and len(nonce) == 32 else None
            return True
        return False

    def heard_from(self, address: Address) -> bool:
        """Whether a valid request (the other side's check) came from ``address``."""
        return address in self._answered_from

    def owns(self, transaction_id: bytes) -> bool:
        return transaction_id in self._transactions

    # ------------------------------------------------------------ internals

    def _probe(self, target: Address, now: float) -> None:
        request = Message(Method.BINDING, MessageClass.REQUEST, self.random_bytes(12))
        request.add(Attr.USERNAME, username(self.peer_id, self.my_id))
        self._transactions[request.transaction_id] = target
        self._sent_at[target] = now
        self.probes_sent += 1
        self._outbox.append((encode(request, integrity_key=self.key), target))
