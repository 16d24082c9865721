"""The in-memory directory of online peers, pure, with literal times.

Expiry may run up to EXPIRY_GRAIN after a peer's TTL (the directory's
expiry wheel rounds up to its slot), never before it; the tests hold it to
exactly that contract.
"""

from __future__ import annotations

import pytest

from rendezvous.core import EXPIRE_BATCH, ServerConfig, ServerCore
from rendezvous.directory import Directory
from rendezvous.events import PeerOffline
from rendezvous.registry import PeerRecord, legacy_identity
from rendezvous.stun import Address
from rendezvous.tokens import Tokens

EXPIRY_GRAIN = 0.25


def record(peer_id: int, expires_at: float, *, legacy_at: Address | None = None) -> PeerRecord:
    observed = legacy_at or ("192.0.2.1", 10000 + peer_id)
    identity = legacy_identity(observed) if legacy_at else peer_id.to_bytes(4, "big") * 8
    return PeerRecord(
        peer_id=peer_id,
        identity=identity,
        nickname=f"p{peer_id}",
        observed=observed,
        local=(),
        first_seen=900.0,
        last_seen=expires_at - 60,
        expires_at=expires_at,
        online_since=900.0,
    )


def ids(records: object) -> list[int]:
    return [r.peer_id for r in records]  # type: ignore[attr-defined]


def test_get_contains_len() -> None:
    d = Directory()
    r = record(5, 1060.0)
    d.put(r)
    assert d.get(5) is r and 5 in d and len(d) == 1
    assert d.get(6) is None and 6 not in d


def test_expiry_is_in_deadline_order_never_early_at_most_a_grain_late() -> None:
    d = Directory()
    for peer_id, expires_at in [(1, 1010.0), (2, 1005.0), (3, 1020.0), (4, 1005.5), (5, 1012.0)]:
        d.put(record(peer_id, expires_at))
    assert 1005.0 <= d.next_expiry() <= 1005.0 + EXPIRY_GRAIN
    assert d.expire(1004.999) == []
    assert len(d) == 5
    assert ids(d.expire(1005.0 + EXPIRY_GRAIN)) == [2]
    # Expiring a long stretch at once returns them in deadline order.
    assert ids(d.expire(1012.0 + EXPIRY_GRAIN)) == [4, 1, 5]
    assert ids(d.page(0, 10)) == [3]
    assert 1020.0 <= d.next_expiry() <= 1020.0 + EXPIRY_GRAIN
    assert ids(d.expire(2000.0)) == [3]
    assert d.next_expiry() is None
    assert len(d) == 0


def test_a_crowd_expiring_together_leaves_a_batch_at_a_time_in_order() -> None:
    d = Directory()
    for peer_id in range(1, 2501):
        d.put(record(peer_id, 1010.0 if peer_id <= 2400 else 1011.0))
    d.put(record(9999, 1500.0))
    batches = []
    while (due := d.next_expiry()) is not None and due <= 1100.0:
        batches.append(ids(d.expire(1100.0, limit=1000)))
    assert [len(batch) for batch in batches] == [1000, 1000, 500]
    assert [peer_id for batch in batches for peer_id in batch] == list(range(1, 2501))
    assert ids(d.page(0, 10)) == [9999]
    # Without a limit, all at once (as before).
    for peer_id in range(1, 1500):
        d.put(record(peer_id, 1200.0))
    assert len(d.expire(1300.0)) == 1499


def test_expired_records_end_at_the_expiry_time_and_are_dirty() -> None:
    d = Directory()
    d.put(record(1, 1010.0))
    d.take_dirty()
    [gone] = d.expire(1011.0)
    assert gone.expires_at == 1010.0  # not moved later by expiring late
    assert d.take_dirty() == [gone]


def test_a_refresh_moves_the_deadline_and_the_old_one_is_ignored() -> None:
    d = Directory()
    early, late = record(1, 1010.0), record(2, 1015.0)
    d.put(early)
    d.put(late)
    early.expires_at = 1030.0
    early.last_seen = 970.0
    d.touch(early)
    # The stale 1010 entry may wake the timer, but removes nobody.
    assert d.expire(1010.0 + EXPIRY_GRAIN) == []
    assert 1 in d
    assert ids(d.expire(1015.0 + EXPIRY_GRAIN)) == [2]
    assert 1030.0 <= d.next_expiry() <= 1030.0 + EXPIRY_GRAIN
    assert d.expire(1029.9) == []
    assert ids(d.expire(1030.0 + EXPIRY_GRAIN)) == [1]


def test_a_shortened_ttl_takes_effect() -> None:
    d = Directory()
    r = record(1, 1100.0)
    d.put(r)
    replacement = record(1, 1010.0)  # registered again with a short TTL
    d.put(replacement)
    assert ids(d.expire(1010.0 + EXPIRY_GRAIN)) == [1]
    assert d.expire(1100.0 + EXPIRY_GRAIN) == []


def test_remove_takes_a_peer_offline_once() -> None:
    d = Directory()
    d.put(record(1, 1060.0))
    d.put(record(2, 1060.0))
    d.take_dirty()
    removed = d.remove(1, now=1030.0)
    assert removed is not None and removed.expires_at == 1030.0
    assert d.take_dirty() == [removed]
    assert d.remove(1, now=1031.0) is None
    assert ids(d.page(0, 10)) == [2]
    # Its old deadline does not bring it back or remove it twice.
    assert ids(d.expire(1061.0)) == [2]
    # Putting it back (registered again) works as new.
    d.put(record(1, 1100.0))
    assert ids(d.page(0, 10)) == [1]


def test_page_is_in_id_order_from_a_cursor() -> None:
    d = Directory()
    for peer_id in [7, 3, 12, 1, 9, 4]:
        d.put(record(peer_id, 1060.0))
    assert ids(d.page(0, 100)) == [1, 3, 4, 7, 9, 12]
    assert ids(d.page(0, 2)) == [1, 3]
    assert ids(d.page(3, 2)) == [4, 7]  # strictly after the cursor
    assert ids(d.page(4, 100)) == [7, 9, 12]
    assert ids(d.page(12, 100)) == []
    assert ids(d.page(5, 0)) == []
    d.remove(7, 1000.0)
    assert ids(d.page(4, 2)) == [9, 12]


def test_legacy_peers_are_paged_and_indexed_apart() -> None:
    d = Directory()
    a: Address = ("192.0.2.7", 5000)
    b: Address = ("2001:db8::7", 5000)
    d.put(record(1, 1060.0))
    d.put(record(2, 1060.0, legacy_at=a))
    d.put(record(3, 1060.0))
    d.put(record(4, 1060.0, legacy_at=b))
    assert ids(d.page(0, 10)) == [1, 3]
    assert ids(d.page(0, 10, legacy=True)) == [2, 4]
    assert ids(d.page(2, 10, legacy=True)) == [4]
    assert d.legacy_peer_at(a).peer_id == 2
    assert d.legacy_peer_at(b).peer_id == 4
    # Modern peers are not found by address.
    assert d.legacy_peer_at(("192.0.2.1", 10001)) is None
    d.remove(2, 1000.0)
    assert d.legacy_peer_at(a) is None
    assert ids(d.page(0, 10, legacy=True)) == [4]
    # Expiry clears the index too.
    d.expire(2000.0)
    assert d.legacy_peer_at(b) is None and len(d) == 0


def test_a_legacy_peer_seen_at_a_new_address_is_indexed_there_only() -> None:
    d = Directory()
    old: Address = ("192.0.2.7", 5000)
    new: Address = ("192.0.2.7", 6000)
    d.put(record(2, 1060.0, legacy_at=old))
    moved = record(2, 1060.0, legacy_at=old)
    moved.observed = new
    d.put(moved)
    assert d.legacy_peer_at(new) is moved
    assert d.legacy_peer_at(old) is None
    assert ids(d.page(0, 10, legacy=True)) == [2]


def test_dirty_records_are_handed_out_once() -> None:
    d = Directory()
    r1, r2 = record(1, 1060.0), record(2, 1060.0)
    d.put(r1)
    d.put(r2)
    d.put(r1)
    assert d.dirty_count() == 2
    assert ids(d.take_dirty()) == [1, 2]
    assert d.take_dirty() == [] and d.dirty_count() == 0
    r2.expires_at = 1090.0
    d.touch(r2)
    assert d.take_dirty() == [r2]


@pytest.mark.parametrize("count", [1, 1000])
def test_many_peers_expire_exactly_once(count: int) -> None:
    d = Directory()
    for peer_id in range(1, count + 1):
        d.put(record(peer_id, 1000.0 + (peer_id * 7919) % 97 / 3))
    seen: list[int] = []
    now = 1000.0
    while (at := d.next_expiry()) is not None:
        assert at >= now
        now = at
        for gone in d.expire(now):
            assert gone.expires_at <= now <= gone.expires_at + EXPIRY_GRAIN
            seen.append(gone.peer_id)
    assert sorted(seen) == list(range(1, count + 1))


def test_the_core_expires_a_crowd_one_batch_per_timer_and_comes_straight_back() -> None:
    core = ServerCore(ServerConfig(), Tokens(b"k" * 32))
    crowd = 2 * EXPIRE_BATCH + 10
    for peer_id in range(1, crowd + 1):
        core.directory.put(record(peer_id, 1010.0))
    core.events()
    timers = 0
    offline = 0
    while (due := core.get_timer()) is not None:
        assert due <= 1010.0 + EXPIRY_GRAIN  # due now while any is left: the adapter comes straight back
        core.handle_timer(1011.0)
        gone = [e for e in core.events() if isinstance(e, PeerOffline)]
        assert 0 < len(gone) <= EXPIRE_BATCH
        offline += len(gone)
        timers += 1
    assert (offline, timers, len(core.directory)) == (crowd, 3, 0)
