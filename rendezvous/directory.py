"""The in-memory directory of online peers (pure: time comes in as ``now``).

It answers the hot questions without touching the disk: who is online, in id
order, from a cursor (LIST); what do we know of id N (CONNECT, SEND); which
peer expires next.  It also remembers which records changed since the last
flush, so that a REFRESH costs no disk write of its own: the server saves the
dirty records in one batch every few seconds.

When several instances share a registry, it also holds mirrors of the peers
registered elsewhere (``PeerRecord.home`` set): listed and found like the
others, expired by the same wheel, but never dirty (their home writes them).
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterator

from sortedcontainers import SortedList

from .registry import PeerRecord, is_legacy_identity
from .stun import Address

SLOTS_PER_SECOND = 4


def _slot(when: float) -> int:
    return int(when * SLOTS_PER_SECOND)


class Directory:
    def __init__(self) -> None:
        self._by_id: dict[int, PeerRecord] = {}
        self._modern_ids: SortedList[int] = SortedList()
        self._legacy_ids: SortedList[int] = SortedList()
        # Legacy (plain-text) peers are known only by their address.
        self._legacy_by_address: dict[Address, int] = {}
        # Legacy peers online per source IP, for the per-IP cap on their ids.
        self._legacy_per_host: Counter[str] = Counter()
        # Keyed peers registered here (not mirrors), per source IP, for the
        # per-IP cap on online ids; the host each was counted under (records
        # are changed in place, so the old host cannot be read back from them).
        self._keyed_per_host: Counter[str] = Counter()
        self._counted_host: dict[int, str] = {}
        # Expiry wheel: slot (a quarter of a second) -> ids that may expire in
        # it, plus a heap of the slots in use.  Cheaper in memory than a heap of
        # (time, id) tuples (8 bytes a peer instead of ~90 at a million
        # peers); entries made stale by a refresh are skipped lazily.
        self._buckets: dict[int, list[int]] = {}
        self._slots: list[int] = []
        self._dirty: dict[int, PeerRecord] = {}
        # (id, online since or 0 for offline) of the keyed peers whose presence
        # changed, for the core's presence subscriptions; None (not kept) unless
        # a core takes them with take_presence_changes().
        self._presence_changes: list[tuple[int, int]] | None = None
        # Told the id of every record replaced or removed: the core's session
        # cache (the compiled fast path) must stop answering for it then.
        self.on_forget: Callable[[int], None] | None = None

    def __len__(self) -> int:
        return len(self._by_id)

    def local_count(self) -> int:
        """Peers registered here (not mirrors of other instances'), without a
        walk (metrics scrape it): every keyed peer of ours is counted under its
        host, and legacy peers are never mirrors (known by address, they are
        their instance's alone)."""
        return len(self._counted_host) + len(self._legacy_ids)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._by_id

    def get(self, peer_id: int) -> PeerRecord | None:
        return self._by_id.get(peer_id)

    def legacy_peer_at(self, address: Address) -> PeerRecord | None:
        peer_id = self._legacy_by_address.get(address)
        return None if peer_id is None else self._by_id.get(peer_id)

    def legacy_count_at(self, host: str) -> int:
        """Legacy peers online from ``host`` (any port)."""
        return self._legacy_per_host[host]

    def keyed_count_at(self, host: str) -> int:
        """Keyed peers registered here and online from ``host`` (any port)."""
        return self._keyed_per_host[host]

    def _count_host(self, peer_id: int, host: str | None) -> None:
        """Count ``peer_id`` under ``host`` (None: under none)."""
        before = self._counted_host.get(peer_id)
        if before == host:
            return
        if before is not None:
            del self._counted_host[peer_id]
            self._keyed_per_host[before] -= 1
            if self._keyed_per_host[before] <= 0:
                del self._keyed_per_host[before]
        if host is not None:
            self._counted_host[peer_id] = host
            self._keyed_per_host[host] += 1

    def _forget_legacy_address(self, address: Address) -> None:
        del self._legacy_by_address[address]
        self._legacy_per_host[address[0]] -= 1
        if self._legacy_per_host[address[0]] <= 0:
            del self._legacy_per_host[address[0]]

    def put(self, record: PeerRecord) -> None:
        """Insert or replace an online peer, and mark it for the next flush."""
        previous = self._by_id.get(record.peer_id)
        legacy = is_legacy_identity(record.identity)
        if previous is not None:
            self._forget_session(previous)
        if previous is None:
            (self._legacy_ids if legacy else self._modern_ids).add(record.peer_id)
        elif legacy and previous.observed != record.observed and previous.observed in self._legacy_by_address:
            self._forget_legacy_address(previous.observed)
        if legacy and record.observed not in self._legacy_by_address:
            self._legacy_per_host[record.observed[0]] += 1
        if legacy:
            self._legacy_by_address[record.observed] = record.peer_id
        else:
            self._count_host(record.peer_id, None if record.home else record.observed[0])
        self._by_id[record.peer_id] = record
        if (
            self._presence_changes is not None
            and not legacy
            and (previous is None or int(previous.online_since) != int(record.online_since))
        ):
            self._presence_changes.append((record.peer_id, int(record.online_since)))
        if previous is None or previous.expires_at != record.expires_at:
            self._schedule(record)
        if record.home:
            # A mirror of another instance's peer: that instance writes it.
            self._dirty.pop(record.peer_id, None)
        else:
            self._dirty[record.peer_id] = record

    def _forget_session(self, record: PeerRecord) -> None:
        """A record replaced (its address, key or home may have changed) or
        removed: the session checked for it must be checked again."""
        record.verified_session = None
        if self.on_forget is not None:
            self.on_forget(record.peer_id)

    def _schedule(self, record: PeerRecord) -> None:
        slot = _slot(record.expires_at)
        bucket = self._buckets.get(slot)
        if bucket is None:
            bucket = self._buckets[slot] = []
            heapq.heappush(self._slots, slot)
        bucket.append(record.peer_id)

    def touch(self, record: PeerRecord, previous_expires_at: float | None = None) -> None:
        """``record`` (already in the directory) was changed in place; if its
        expiry moved within the same wheel slot it need not be filed again."""
        if previous_expires_at is None or _slot(previous_expires_at) != _slot(record.expires_at):
            self._schedule(record)
        self._dirty[record.peer_id] = record

    def online_again(self, record: PeerRecord) -> None:
        """``record`` (already here) got a new ``online_since`` in place: a
        new session of the same peer, which its watchers must hear of."""
        if self._presence_changes is not None and not is_legacy_identity(record.identity):
            self._presence_changes.append((record.peer_id, int(record.online_since)))

    def remove(self, peer_id: int, now: float) -> PeerRecord | None:
        """Take a peer offline (UNREGISTER/EXIT); its id stays with its key."""
        record = self._by_id.pop(peer_id, None)
        if record is None:
            return None
        self._forget_session(record)
        if is_legacy_identity(record.identity):
            self._legacy_ids.discard(peer_id)
            if self._legacy_by_address.get(record.observed) == peer_id:
                self._forget_legacy_address(record.observed)
        else:
            self._modern_ids.discard(peer_id)
            self._count_host(peer_id, None)
            if self._presence_changes is not None:
                self._presence_changes.append((peer_id, 0))
        record.expires_at = min(record.expires_at, now)
        if not record.home:
            self._dirty[peer_id] = record
        return record

    def next_expiry(self) -> float | None:
        """When the earliest slot is due: its end (the wheel's grain, so a peer
        leaves at most a quarter second after its TTL).  The slot may turn out
        to hold only refreshed ids; :meth:`expire` sorts that out."""
        if not self._slots:
            return None
        return (self._slots[0] + 1) / SLOTS_PER_SECOND

    def expire(self, now: float, limit: int | None = None) -> list[PeerRecord]:
        """Remove and return the peers whose TTL ran out, bucket by bucket:
        a slot is handled once all of it has passed.  With ``limit``, at most
        that many wheel entries are looked at (the rest wait for the next
        call, :meth:`next_expiry` still due): thousands of peers that
        registered together expire together, and one call must not hold the
        server's loop for all of them."""
        gone = []
        budget = limit
        while self._slots and (self._slots[0] + 1) / SLOTS_PER_SECOND <= now:
            slot = self._slots[0]
            bucket = self._buckets[slot]
            taken = len(bucket) if budget is None else min(budget, len(bucket))
            for peer_id in bucket[:taken]:
                record = self._by_id.get(peer_id)
                # Skip stale entries: refreshed into a later second, or gone.
                if record is not None and _slot(record.expires_at) == slot:
                    self.remove(peer_id, now)
                    gone.append(record)
            if taken < len(bucket):
                self._buckets[slot] = bucket[taken:]
                return gone
            heapq.heappop(self._slots)
            del self._buckets[slot]
            if budget is not None:
                budget -= taken
                if budget <= 0:
                    break
        return gone

    def page(self, after_id: int, limit: int, *, legacy: bool = False) -> Iterator[PeerRecord]:
        """Online peers with id > ``after_id`` in id order, at most ``limit``."""
        ids = self._legacy_ids if legacy else self._modern_ids
        for peer_id in ids.irange(minimum=after_id, inclusive=(False, True)):
            if limit <= 0:
                return
            limit -= 1
            yield self._by_id[peer_id]

    def take_presence_changes(self) -> list[tuple[int, int]]:
        """The presence changes since the last call (and keep them from now on)."""
        changes = self._presence_changes or []
        self._presence_changes = []
        return changes

    def has_presence_changes(self) -> bool:
        return bool(self._presence_changes)

    def take_dirty(self) -> list[PeerRecord]:
        dirty = list(self._dirty.values())
        self._dirty.clear()
        return dirty

    def dirty_count(self) -> int:
        return len(self._dirty)
