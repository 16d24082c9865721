"""What kind of NAT this peer is behind, asked of the rendezvous server (sans-IO).

RFC 5780 behaviour discovery, in the one-socket form that matters to hole
punching.  The server announces a second address of its own (OTHER-ADDRESS,
another IP and port) when it has one; from the peer's one socket:

    1. Binding to the server, CHANGE-REQUEST 0      -> mapped address M1, OTHER-ADDRESS O
    2. Binding to O                                  -> mapped address M2
       M1 == M2: mapping is endpoint-independent (a cone); else endpoint-dependent (symmetric)
    3. Binding to the server with CHANGE-REQUEST "change IP and port": the answer comes from O,
       where we never sent: it arrives only if filtering is endpoint-independent (full cone)

A mapped address equal to one of our own addresses means there is no NAT.
Step 3 runs before step 2: once we have sent to O, any NAT lets O's answers
in, and the filtering test would prove nothing.  No answer to 3 within its
retransmissions means the NAT filters.  Time comes in as ``now``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal, TypedDict

from rendezvous.stun import Address, Attr, Message, MessageClass, Method, encode
from rendezvous.transactions import RetransmitPolicy, TransactionTable

POLICY = RetransmitPolicy(rto=0.3, max_sends=3, last_wait_factor=2)  # gives up after ~1.5 s
CHANGE_IP_AND_PORT = 0x6

UNKNOWN: Final = "unknown"
INDEPENDENT: Final = "endpoint-independent"
DEPENDENT: Final = "endpoint-dependent"

# What the probe learns of the NAT's mapping or its filtering (RFC 4787 terms).
Behaviour = Literal["unknown", "endpoint-independent", "endpoint-dependent"]
# The three Binding requests, in the order they go out (see above).
Step = Literal["first", "filtering", "other"]
# What the page calls the NAT.
NatKind = Literal["no NAT", "full cone", "restricted cone", "cone", "symmetric", "unknown"]


class NatResult(TypedDict):
    """The probe's finding as the page and /api/me show it."""

    type: NatKind
    mapping: Behaviour
    filtering: Behaviour
    note: str  # why the probe stopped early, or ""


@dataclass
class NatProbe:
    server: Address
    local: tuple[Address, ...]
    random_bytes: Callable[[int], bytes] = os.urandom
    mapping: Behaviour = UNKNOWN
    filtering: Behaviour = UNKNOWN
    done: bool = False
    reason: str = ""
    _table: TransactionTable[Step] = field(default_factory=lambda: TransactionTable(POLICY))
    _outbox: list[tuple[bytes, Address]] = field(default_factory=list)
    _first: Address | None = None
    _other: Address | None = None

    def start(self, now: float) -> None:
        self._binding("first", self.server, now, change=0)

    # ------------------------------------------------------------ outputs

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        out, self._outbox = self._outbox, []
        return out

    def get_timer(self) -> float | None:
        return None if self.done else self._table.get_timer()

    def owns(self, transaction_id: bytes) -> bool:
        return transaction_id in self._table

    def result(self) -> NatResult:
        """For the page and /api/me."""
        kind: NatKind
        if self.mapping == INDEPENDENT and self.local and self._first in self.local:
            kind = "no NAT"
        elif self.mapping == DEPENDENT:
            kind = "symmetric"
        elif self.mapping == INDEPENDENT:
            kind = "full cone" if self.filtering == INDEPENDENT else "restricted cone" if self.done else "cone"
        else:
            kind = UNKNOWN
        return {"type": kind, "mapping": self.mapping, "filtering": self.filtering, "note": self.reason}

    # ------------------------------------------------------------ input

    def receive(self, message: Message, address: Address, now: float) -> bool:
        step = self._table.complete(message.transaction_id)
        if step is None:
            return False
        if message.message_class != MessageClass.SUCCESS:
            self._finish(f"the server refused step {step}")
            return True
        mapped = message.get(Attr.XOR_MAPPED_ADDRESS)
        if step == "first":
            self._first = mapped
            self._other = message.get(Attr.OTHER_ADDRESS)
            if self._other is None:
                self._finish("the rendezvous server has no second address (RFC 5780)")
                return True
            self._binding("filtering", self.server, now, change=CHANGE_IP_AND_PORT)
        elif step == "other":
            self.mapping = INDEPENDENT if mapped == self._first else DEPENDENT
        elif step == "filtering":
            self.filtering = INDEPENDENT
            self._binding("other", self._other or self.server, now, change=None)
        self._maybe_done()
        return True

    def handle_timer(self, now: float) -> None:
        result = self._table.handle_timer(now)
        self._outbox.extend((data, self._target(data)) for data, _ in result.resend)
        for _, step in result.timed_out:
            if step == "filtering":
                # Never reached us from an address we had not sent to: it filters.
                self.filtering = DEPENDENT
                self._binding("other", self._other or self.server, now, change=None)
            else:
                self._finish(f"no answer to step {step}")
        self._maybe_done()

    # ------------------------------------------------------------ internals

    def _binding(self, step: Step, target: Address, now: float, change: int | None) -> None:
        request = Message(Method.BINDING, MessageClass.REQUEST, self.random_bytes(12))
        if change is not None:
            request.add(Attr.CHANGE_REQUEST, change)
        data = encode(request)
        self._targets[data] = target
        self._outbox.append((self._table.start(request.transaction_id, data, step, now), target))

    def _target(self, data: bytes) -> Address:
        return self._targets.get(data, self.server)

    def _maybe_done(self) -> None:
        if self.mapping != UNKNOWN and self.filtering != UNKNOWN:
            self._finish("")

    def _finish(self, reason: str) -> None:
        self.done = True
        if reason:
            self.reason = reason
        self._targets.clear()

    def __post_init__(self) -> None:
        self._targets: dict[bytes, Address] = {}
