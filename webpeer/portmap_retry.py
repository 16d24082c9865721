"""When to search for a port mapping again.  Sans-IO: times in, times out.

A router that restarts forgets our mapping, and one that was off (or busy)
when the peer started never gave one: without another search the peer
would stay unmapped until it restarts.  So after each attempt that ends
without a mapping (PCP, NAT-PMP and UPnP all unavailable, or a mapping
lost after its renewals failed until expiry) the node waits
:data:`RETRY_FIRST` seconds, doubling each time up to :data:`RETRY_LONGEST`,
each wait jittered by +-:data:`RETRY_JITTER` so that the peers behind one
router that restarted do not all ask it at the same moment.  A network
change the node can see (the server reports a new public address) ends the
wait at once and starts the doubling again: a new router, or the old one
back, is worth asking now.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Final

RETRY_FIRST: Final = 60.0  # seconds after the first attempt that ended without a mapping
RETRY_LONGEST: Final = 1800.0  # the doubling stops here: a quiet router is asked twice an hour
RETRY_JITTER: Final = 0.1  # each wait is multiplied by 1 + a uniform value in [-0.1, 0.1]


class MappingRetry:
    """The schedule of searches after failed ones (see the module docstring).

    :attr:`next_at` is the time of the next search, or None while a search
    runs or a mapping is held (nothing to wait for)."""

    def __init__(
        self,
        *,
        first: float = RETRY_FIRST,
        longest: float = RETRY_LONGEST,
        jitter: Callable[[], float] | None = None,
    ) -> None:
        if not 0 < first <= longest:
            raise ValueError(f"retry waits must satisfy 0 < first <= longest, not {first}, {longest}")
        self.first = first
        self.longest = longest
        self.failures = 0  # attempts in a row that ended without a mapping
        self.next_at: float | None = None
        rng = random.Random()
        self._jitter = jitter if jitter is not None else (lambda: rng.uniform(-RETRY_JITTER, RETRY_JITTER))

    def failed(self, now: float) -> float:
        """An attempt ended without a mapping: the time to search again."""
        # The exponent is capped so that the power stays a small float however long this runs.
        wait = min(self.longest, self.first * 2 ** min(self.failures, 32))
        self.failures += 1
        self.next_at = now + wait * (1 + self._jitter())
        return self.next_at

    def due(self, now: float) -> bool:
        return self.next_at is not None and now >= self.next_at

    def started(self) -> None:
        """A search began: nothing to wait for until it ends."""
        self.next_at = None

    def succeeded(self) -> None:
        """A mapping was made: the next failure waits :attr:`first` again."""
        self.failures = 0
        self.next_at = None

    def network_changed(self, now: float) -> bool:
        """The network changed under us: True when a wait was cut short (the
        search is due now); False while a search runs or a mapping is held."""
        if self.next_at is None:
            return False
        self.failures = 0
        self.next_at = now
        return True
