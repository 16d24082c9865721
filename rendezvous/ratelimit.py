"""Token buckets (pure: time comes in as ``now``)."""

from __future__ import annotations

from collections.abc import Hashable


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up."""

    __slots__ = ("rate", "burst", "tokens", "updated")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = now

    def take(self, amount: float, now: float) -> bool:
        """Spend ``amount`` if the bucket holds it; False (nothing spent) if not."""
        if self.available(now) >= amount:
            self.tokens -= amount
            return True
        return False

    def available(self, now: float) -> float:
        """The tokens held at ``now`` (refilled since the last look; a clock
        that steps back refills nothing)."""
        elapsed = now - self.updated
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.updated = now
        return self.tokens

    def spend(self, amount: float, now: float) -> None:
        """Spend ``amount`` whatever the bucket holds: below zero, what comes
        next waits for the refill to pay the debt first."""
        self.tokens = self.available(now) - amount

    def ready_at(self, amount: float, now: float) -> float:
        """When the bucket will hold ``amount`` (``now`` if it does)."""
        return now + max(0.0, amount - self.available(now)) / self.rate


class KeyedLimiter:
    """One bucket per key, with a cap on how many keys are tracked.

    When the table is full the oldest buckets are forgotten: a forgotten key
    starts again with a full bucket, which errs on the side of serving.
    """

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[Hashable, TokenBucket] = {}

    def allow(self, key: Hashable, now: float, amount: float = 1.0) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                for old in list(self._buckets)[: max(1, self.max_keys // 10)]:
                    del self._buckets[old]
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        return bucket.take(amount, now)

    def forget(self, key: Hashable) -> None:
        self._buckets.pop(key, None)

    def __len__(self) -> int:
        return len(self._buckets)
