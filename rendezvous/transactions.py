"""Client-side STUN transactions: RFC 8489 section 6.2.1 retransmission (pure).

A request is sent at t=0 and retransmitted after RTO, 3*RTO, 7*RTO ... (the
interval doubles) until ``max_sends`` copies have gone out; the transaction
fails ``last_wait_factor`` * RTO after the last one.  The defaults are the
RFC's (RTO 500 ms, Rc 7, Rm 16: a timeout after 39.5 s); interactive callers
pass smaller numbers.  Both the server (INTRODUCE) and the peers use this.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Context = TypeVar("Context")


@dataclass(frozen=True)
class RetransmitPolicy:
    rto: float = 0.5
    max_sends: int = 7
    last_wait_factor: float = 16.0

    def schedule(self) -> list[float]:
        """Offsets from the first send of each retransmission, then the timeout."""
        offsets = []
        at, interval = 0.0, self.rto
        for _ in range(self.max_sends - 1):
            at += interval
            offsets.append(at)
            interval *= 2
        offsets.append(at + self.rto * self.last_wait_factor)
        return offsets


@dataclass
class _Pending(Generic[Context]):
    data: bytes
    context: Context
    deadlines: list[float]
    sends: int = 1


@dataclass
class TimerResult(Generic[Context]):
    resend: list[tuple[bytes, Context]] = field(default_factory=list)
    timed_out: list[tuple[bytes, Context]] = field(default_factory=list)


class TransactionTable(Generic[Context]):
    """Outstanding requests keyed by transaction id, each with a caller context
    (for instance the destination address, or a future to resolve)."""

    def __init__(self, policy: RetransmitPolicy | None = None) -> None:
        self.policy = policy or RetransmitPolicy()
        self._schedule = self.policy.schedule()
        self._pending: dict[bytes, _Pending[Context]] = {}
        # (next deadline, transaction id): a server may have many thousands of
        # transactions outstanding, so the earliest is found in O(log n).
        # Entries whose transaction finished or moved on are skipped lazily.
        self._heap: list[tuple[float, bytes]] = []

    def start(self, transaction_id: bytes, data: bytes, context: Context, now: float) -> bytes:
        """Track a request; returns the datagram to send now."""
        deadlines = [now + offset for offset in self._schedule]
        self._pending[transaction_id] = _Pending(data, context, deadlines)
        heapq.heappush(self._heap, (deadlines[0], transaction_id))
        return data

    def complete(self, transaction_id: bytes) -> Context | None:
        """A response arrived: forget the request and hand back its context,
        or None when the transaction id is unknown (stray or late reply)."""
        pending = self._pending.pop(transaction_id, None)
        return None if pending is None else pending.context

    def context(self, transaction_id: bytes) -> Context | None:
        """The context of an outstanding request, without completing it."""
        pending = self._pending.get(transaction_id)
        return None if pending is None else pending.context

    def cancel(self, transaction_id: bytes) -> None:
        self._pending.pop(transaction_id, None)

    def _clean_top(self) -> None:
        heap = self._heap
        while heap:
            deadline, transaction_id = heap[0]
            pending = self._pending.get(transaction_id)
            if pending is not None and pending.deadlines and pending.deadlines[0] == deadline:
                return
            heapq.heappop(heap)

    def get_timer(self) -> float | None:
        self._clean_top()
        return self._heap[0][0] if self._heap else None

    def handle_timer(self, now: float) -> TimerResult[Context]:
        result: TimerResult[Context] = TimerResult()
        while True:
            self._clean_top()
            if not self._heap or self._heap[0][0] > now:
                break
            _, transaction_id = heapq.heappop(self._heap)
            pending = self._pending[transaction_id]
            # A late timer may have skipped several deadlines: send one copy, not a burst.
            while pending.deadlines and pending.deadlines[0] <= now:
                pending.deadlines.pop(0)
            if pending.deadlines:
                pending.sends += 1
                result.resend.append((pending.data, pending.context))
                heapq.heappush(self._heap, (pending.deadlines[0], transaction_id))
            else:
                del self._pending[transaction_id]
                result.timed_out.append((pending.data, pending.context))
        return result

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, transaction_id: object) -> bool:
        return transaction_id in self._pending
