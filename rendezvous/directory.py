"""The in-memory directory of online peers (pure: time comes in as ``now``).

It answers the hot questions without touching the disk: who is online, in id
order, from a cursor (LIST); what do we know of id N (CONNECT, SEND); which
peer expires next.  It also remembers which records changed since the last
flush, so that a REFRESH costs no disk write of its own: the server saves the
dirty records in one batch every few seconds.
"""

from __future__ import annotations

import heapq
from typing import Iterator

from sortedcontainers import SortedList

from .registry import PeerRecord, is_legacy_identity
from .stun import Address


class Directory:
    def __init__(self) -> None:
        self._by_id: dict[int, PeerRecord] = {}
        self._modern_ids: SortedList = SortedList()
        self._legacy_ids: SortedList = SortedList()
        # Legacy (plain-text) peers are known only by their address.
        self._legacy_by_address: dict[Address, int] = {}
        # (expires_at, peer_id); stale entries are skipped lazily.
        self._expiry: list[tuple[float, int]] = []
        self._dirty: dict[int, PeerRecord] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._by_id

    def get(self, peer_id: int) -> PeerRecord | None:
        return self._by_id.get(peer_id)

    def legacy_peer_at(self, address: Address) -> PeerRecord | None:
        peer_id = self._legacy_by_address.get(address)
        return None if peer_id is None else self._by_id.get(peer_id)

    def put(self, record: PeerRecord) -> None:
        """Insert or replace an online peer, and mark it for the next flush."""
        previous = self._by_id.get(record.peer_id)
        legacy = is_legacy_identity(record.identity)
        if previous is None:
            (self._legacy_ids if legacy else self._modern_ids).add(record.peer_id)
        elif legacy and previous.observed != record.observed:
            self._legacy_by_address.pop(previous.observed, None)
        if legacy:
            self._legacy_by_address[record.observed] = record.peer_id
        self._by_id[record.peer_id] = record
        if previous is None or previous.expires_at != record.expires_at:
            heapq.heappush(self._expiry, (record.expires_at, record.peer_id))
        self._dirty[record.peer_id] = record

    def touch(self, record: PeerRecord) -> None:
        """``record`` (already in the directory) was changed in place."""
        heapq.heappush(self._expiry, (record.expires_at, record.peer_id))
        self._dirty[record.peer_id] = record

    def remove(self, peer_id: int, now: float) -> PeerRecord | None:
        """Take a peer offline (UNREGISTER/EXIT); its id stays with its key."""
        record = self._by_id.pop(peer_id, None)
        if record is None:
            return None
        if is_legacy_identity(record.identity):
            self._legacy_ids.discard(peer_id)
            if self._legacy_by_address.get(record.observed) == peer_id:
                del self._legacy_by_address[record.observed]
        else:
            self._modern_ids.discard(peer_id)
        record.expires_at = min(record.expires_at, now)
        self._dirty[peer_id] = record
        return record

    def next_expiry(self) -> float | None:
        while self._expiry:
            expires_at, peer_id = self._expiry[0]
            record = self._by_id.get(peer_id)
            if record is not None and record.expires_at == expires_at:
                return expires_at
            heapq.heappop(self._expiry)
        return None

    def expire(self, now: float) -> list[PeerRecord]:
        """Remove and return every peer whose TTL ran out at or before ``now``."""
        gone = []
        while self._expiry and self._expiry[0][0] <= now:
            expires_at, peer_id = heapq.heappop(self._expiry)
            record = self._by_id.get(peer_id)
            if record is not None and record.expires_at == expires_at:
                self.remove(peer_id, now)
                gone.append(record)
        return gone

    def page(self, after_id: int, limit: int, *, legacy: bool = False) -> Iterator[PeerRecord]:
        """Online peers with id > ``after_id`` in id order, at most ``limit``."""
        ids = self._legacy_ids if legacy else self._modern_ids
        for peer_id in ids.irange(minimum=after_id, inclusive=(False, True)):
            if limit <= 0:
                return
            limit -= 1
            yield self._by_id[peer_id]

    def take_dirty(self) -> list[PeerRecord]:
        dirty = list(self._dirty.values())
        self._dirty.clear()
        return dirty

    def dirty_count(self) -> int:
        return len(self._dirty)
