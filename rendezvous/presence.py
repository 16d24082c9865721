"""Presence subscriptions (WATCH / PRESENCE, docs/PROTOCOL.md 5.9-5.10): pure bookkeeping.

A registered peer names the ids it cares about (its contacts); when one of
them comes online, goes offline or registers anew (a new online-since), the
server tells it.  This module only remembers who watches whom and what each
watcher has yet to be told; the core builds, sends and retransmits the
PRESENCE requests.

Memory is bounded by the online population: at most ``max_per_watcher`` ids
per watcher, a watcher's set dies with its session (offline, registered
anew, moved to another instance), and what is pending for a watcher is a
subset of its watched ids, each at most once: what is sent is the id's
state when the PRESENCE is built, so several changes of one id before then
are told once, as they stand.
"""

from __future__ import annotations


class Subscriptions:
    def __init__(self, max_per_watcher: int) -> None:
        self.max_per_watcher = max_per_watcher
        self._watching: dict[int, set[int]] = {}  # watcher -> ids it watches
        self._watchers: dict[int, set[int]] = {}  # id -> its watchers
        self._pending: dict[int, dict[int, None]] = {}  # watcher -> ids to tell it of (ordered)
        self._busy: set[int] = set()  # watchers with a PRESENCE in flight: one at a time keeps them in order

    def __len__(self) -> int:
        """Watchers with a subscription."""
        return len(self._watching)

    def watched_by(self, watcher: int) -> frozenset[int]:
        return frozenset(self._watching.get(watcher, ()))

    def watch(self, watcher: int, ids: tuple[int, ...]) -> bool:
        """Add ``ids`` to ``watcher``'s set; False (and nothing added) when the
        set would grow past the cap."""
        current = self._watching.get(watcher, set())
        new = set(ids) - current
        if len(current) + len(new) > self.max_per_watcher:
            return False
        if not new:
            return True
        self._watching[watcher] = current | new
        for peer_id in new:
            self._watchers.setdefault(peer_id, set()).add(watcher)
        return True

    def unwatch(self, watcher: int, ids: tuple[int, ...]) -> None:
        """Take ``ids`` out of ``watcher``'s set (ids it does not watch are
        ignored), with whatever it was yet to be told about them."""
        current = self._watching.get(watcher)
        if not current:
            return
        pending = self._pending.get(watcher)
        for peer_id in set(ids) & current:
            current.discard(peer_id)
            watchers = self._watchers[peer_id]
            watchers.discard(watcher)
            if not watchers:
                del self._watchers[peer_id]
            if pending is not None:
                pending.pop(peer_id, None)
        if not current:
            del self._watching[watcher]
        if pending is not None and not pending:
            del self._pending[watcher]

    def drop(self, watcher: int) -> None:
        """The watcher's session ended: its subscription and what it was owed go."""
        for peer_id in self._watching.pop(watcher, ()):
            watchers = self._watchers.get(peer_id)
            if watchers is not None:
                watchers.discard(watcher)
                if not watchers:
                    del self._watchers[peer_id]
        self._pending.pop(watcher, None)
        self._busy.discard(watcher)

    def changed(self, peer_id: int) -> list[int]:
        """``peer_id``'s presence changed: queue it for its watchers; returns
        the watchers that can be sent to now (nothing in flight)."""
        ready = []
        for watcher in self._watchers.get(peer_id, ()):
            self._pending.setdefault(watcher, {})[peer_id] = None
            if watcher not in self._busy:
                ready.append(watcher)
        return ready

    def take(self, watcher: int, limit: int) -> tuple[int, ...]:
        """Up to ``limit`` pending changes for ``watcher`` (marked in flight);
        empty when there is none or one is in flight already."""
        pending = self._pending.get(watcher)
        if not pending or watcher in self._busy:
            return ()
        batch = tuple(list(pending)[:limit])
        for peer_id in batch:
            del pending[peer_id]
        if not pending:
            del self._pending[watcher]
        self._busy.add(watcher)
        return batch

    def done(self, watcher: int, *, delivered: bool) -> bool:
        """The watcher's PRESENCE was acknowledged (or given up on: then what
        else it was owed is dropped too, as it does not answer; its next
        WATCH gets it the truth).  True if more is pending for it."""
        self._busy.discard(watcher)
        if not delivered:
            self._pending.pop(watcher, None)
        return bool(self._pending.get(watcher))
