"""What one sender may make us store (pure): messages per minute and stored
bytes, per peer id (issue 16, finding 5; docs/PROTOCOL.md 11.2, ``refused``).

An authenticated peer could otherwise fill our disk with 64 KiB messages as
fast as QUIC carries them.  :class:`InboundQuota` answers, for each incoming
message, whether it may be stored; a message that may not is refused back to
its sender with a reason code (:data:`RATE` or :data:`STORAGE`), so the
sender's page shows why it failed and nothing is lost silently.

The rate is a token bucket per sender (``messages_per_minute`` tokens,
refilled evenly over a minute): a burst of a minute's worth passes, then one
message every ``60 / messages_per_minute`` seconds.  Stored bytes are the
UTF-8 length of the texts we hold from the sender, read once from the
history (:meth:`StoredBytes.stored_bytes_from`) and then kept up to date
here; :meth:`forget` drops that figure (it is read again when next needed)
after anything may have deleted messages or rolled back a write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

RATE = "rate"  # too many messages per minute: try again later
STORAGE = "storage"  # we hold as many bytes from the sender as we keep
REASONS = (RATE, STORAGE)

DEFAULT_MESSAGES_PER_MINUTE = 3000  # 50 a second: scripts send bursts; the stored bytes are the real bound
DEFAULT_STORED_BYTES = 256 * 1024 * 1024
MAX_MESSAGES_PER_MINUTE = 10**9  # in effect no limit (the throughput bench sets it)
# Buckets of this many senders at most are remembered; a full bucket (one
# idle for a minute) is the same as none, so those are the ones let go.
MAX_TRACKED_SENDERS = 4096


def reason_text(code: object) -> str:
    """What the sender's page says about a message its peer refused.  The
    peer sends only a code: text from a peer is never shown as is."""
    if code == RATE:
        return "refused by the peer: too many messages per minute from you (retry later)"
    if code == STORAGE:
        return "refused by the peer: it stores no more messages from you (its quota for you is full)"
    return "refused by the peer"


class StoredBytes(Protocol):
    def stored_bytes_from(self, sender: int) -> int:
        """UTF-8 bytes of the texts stored from ``sender``."""


@dataclass(frozen=True, slots=True)
class QuotaConfig:
    messages_per_minute: int = DEFAULT_MESSAGES_PER_MINUTE
    stored_bytes: int = DEFAULT_STORED_BYTES

    def __post_init__(self) -> None:
        if not 1 <= self.messages_per_minute <= MAX_MESSAGES_PER_MINUTE:
            raise ValueError(
                f"messages per minute must be 1 to {MAX_MESSAGES_PER_MINUTE}, not {self.messages_per_minute}"
            )
        if not 1 <= self.stored_bytes <= 2**50:
            raise ValueError(f"stored bytes must be 1 to 2**50, not {self.stored_bytes}")


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class InboundQuota:
    def __init__(self, config: QuotaConfig, history: StoredBytes) -> None:
        self.config = config
        self.history = history
        self._buckets: dict[int, _Bucket] = {}
        self._stored: dict[int, int] = {}  # sender -> bytes held (including this flush's, not yet committed)

    def admit(self, sender: int, size: int, now: float) -> str | None:
        """May a message of ``size`` bytes from ``sender`` be stored?  None:
        yes, and it is counted (its bytes as stored, until :meth:`refund`);
        else the reason code it is refused for (nothing is counted)."""
        per_minute = self.config.messages_per_minute
        bucket = self._buckets.get(sender)
        if bucket is None:
            self._make_room(now)
            bucket = self._buckets[sender] = _Bucket(float(per_minute), now)
        elapsed = max(0.0, now - bucket.at)  # a clock that steps back refills nothing
        bucket.tokens = min(float(per_minute), bucket.tokens + elapsed * per_minute / 60.0)
        bucket.at = max(bucket.at, now)
        if bucket.tokens < 1.0:
            return RATE
        stored = self._stored.get(sender)
        if stored is None:
            stored = self.history.stored_bytes_from(sender)
            if len(self._stored) >= MAX_TRACKED_SENDERS:
                self._stored.pop(next(iter(self._stored)))  # the oldest read: read again if needed
        if stored + size > self.config.stored_bytes:
            self._stored[sender] = stored
            return STORAGE
        bucket.tokens -= 1.0
        self._stored[sender] = stored + size
        return None

    def refund(self, sender: int, size: int) -> None:
        """A counted message was not stored after all (a repeat of one we
        hold): its bytes no longer count."""
        if (stored := self._stored.get(sender)) is not None:
            self._stored[sender] = max(0, stored - size)

    def forget(self, sender: int | None = None) -> None:
        """The stored bytes of ``sender`` (None: of everyone) are read from
        the history again when next needed."""
        if sender is None:
            self._stored.clear()
        else:
            self._stored.pop(sender, None)

    def _make_room(self, now: float) -> None:
        if len(self._buckets) < MAX_TRACKED_SENDERS:
            return
        # Full buckets say nothing a new one would not; drop those first,
        # else the one used longest ago (its sender starts afresh: at most a
        # minute's worth more, from one of 4,096 senders).
        refill = 60.0 / self.config.messages_per_minute
        full = [
            s for s, b in self._buckets.items() if now - b.at >= refill * (self.config.messages_per_minute - b.tokens)
        ]
        for sender in full:
            del self._buckets[sender]
        if len(self._buckets) >= MAX_TRACKED_SENDERS:
            del self._buckets[min(self._buckets, key=lambda s: self._buckets[s].at)]
