"""SqliteRegistry on real database files in tmp_path; the Registry contract
tests (those taking ``shared``) run on RedisRegistry too, against a real
``redis-server`` and a real three-master Redis Cluster (skipped when
redis-server is not installed)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rendezvous.redis_registry import RedisRegistry
from rendezvous.registry import PeerRecord, Registry, legacy_identity
from rendezvous.sqlite_registry import (
    SCHEMA_VERSION,
    RegistryError,
    SqliteRegistry,
    decode_address,
    decode_addresses,
    encode_address,
    encode_addresses,
)


def key(n: int) -> bytes:
    """A distinct 32-byte identity per n."""
    return n.to_bytes(4, "big") * 8


def record(peer_id: int, identity: bytes, **changes: object) -> PeerRecord:
    values: dict[str, object] = dict(
        peer_id=peer_id,
        identity=identity,
        nickname=f"peer {peer_id}",
        observed=("203.0.113.7", 40000 + peer_id),
        local=(("192.168.1.10", 5000 + peer_id),),
        first_seen=1000.0,
        last_seen=1010.0,
        expires_at=1100.0,
        online_since=1005.0,
    )
    values.update(changes)
    return PeerRecord(**values)  # type: ignore[arg-type]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "registry.sqlite3"


@pytest.fixture
async def registry(db_path: Path) -> AsyncIterator[SqliteRegistry]:
    reg = SqliteRegistry(db_path)
    await reg.open()
    yield reg
    await reg.close()


async def reopen(reg: SqliteRegistry) -> SqliteRegistry:
    await reg.close()
    again = SqliteRegistry(reg.path)
    await again.open()
    return again


AnyRegistry = SqliteRegistry | RedisRegistry
Backend = Callable[..., AnyRegistry]


@pytest.fixture(params=["sqlite", "redis", "redis-cluster"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Makes registries on one store: ``backend()`` again is a reopen; ``backend("b")`` another store."""
    if request.param == "sqlite":
        return lambda name="registry": SqliteRegistry(tmp_path / f"{name}.sqlite3")
    fixture = "redis_server" if request.param == "redis" else "redis_cluster"
    url = request.getfixturevalue(fixture).url
    # A generous socket timeout: seconds of stall on a loaded machine are not an outage here.
    return lambda name="registry": RedisRegistry(url, prefix=f"{name}:", timeout=10)


@pytest.fixture
async def shared(backend: Backend) -> AsyncIterator[AnyRegistry]:
    reg = backend()
    await reg.open()
    yield reg
    await reg.close()


async def reopen_on(backend: Backend, reg: AnyRegistry) -> AnyRegistry:
    await reg.close()
    again = backend()
    await again.open()
    return again


# -- ids ------------------------------------------------------------------


async def test_ids_start_at_one_and_follow_call_order(shared: AnyRegistry) -> None:
    registry = shared
    checked: Registry = registry  # mypy checks that the protocol is implemented
    assert await checked.count() == 0
    assert await checked.highest_id() == 0
    assert await registry.assign_id(key(1)) == 1
    assert await registry.assign_id(key(2)) == 2
    assert await registry.assign_id(key(3)) == 3
    assert await registry.count() == 3
    assert await registry.highest_id() == 3


async def test_known_identity_gets_its_id_without_a_write(registry: SqliteRegistry) -> None:
    first = await registry.assign_id(key(7))
    before = registry.transactions
    assert await registry.assign_id(key(7)) == first
    assert registry.transactions == before
    assert await registry.lookup_id(key(7)) == first
    assert await registry.lookup_id(key(8)) is None
    assert await registry.count() == 1


async def test_same_identity_same_id_after_reopen(shared: AnyRegistry, backend: Backend) -> None:
    registry = shared
    ids = [await registry.assign_id(key(n)) for n in range(5)]
    again = await reopen_on(backend, registry)
    try:
        assert [await again.assign_id(key(n)) for n in range(5)] == ids
        assert await again.assign_id(key(99)) == 6
        assert await again.assign_id(legacy_identity(("::1", 9))) == 7
        assert await again.lookup_id(legacy_identity(("::1", 9))) == 7
    finally:
        await again.close()


async def test_ids_are_never_reused_even_after_a_row_disappears(registry: SqliteRegistry, db_path: Path) -> None:
    for n in (1, 2, 3):
        await registry.assign_id(key(n))
    await registry.close()
    # Nothing in the server deletes peers, but an operator might.
    with sqlite3.connect(db_path) as conn:
        conn.execute("DELETE FROM peers WHERE peer_id = 3")
    conn.close()
    again = SqliteRegistry(db_path)
    await again.open()
    try:
        assert await again.lookup_id(key(3)) is None
        assert await again.highest_id() == 3  # id 3 was given out, though its row is gone
        assert await again.assign_id(key(4)) == 4
        assert await again.assign_id(key(3)) == 5
    finally:
        await again.close()


async def test_assigned_id_is_committed_when_assign_returns(registry: SqliteRegistry, db_path: Path) -> None:
    peer_id = await registry.assign_id(key(42))
    # A second, independent connection only sees committed data.
    other = sqlite3.connect(db_path)
    try:
        rows = other.execute("SELECT peer_id, identity FROM peers").fetchall()
    finally:
        other.close()
    assert rows == [(peer_id, key(42))]


async def test_fresh_id_has_empty_state(shared: AnyRegistry) -> None:
    registry = shared
    peer_id = await registry.assign_id(key(1))
    assert await registry.get(peer_id) == PeerRecord(peer_id, key(1), "", ("", 0), (), 0.0, 0.0, 0.0, 0.0)
    assert await registry.get(peer_id + 1) is None
    assert await registry.load_online(0.0) == []


# -- group commit -----------------------------------------------------------


async def test_concurrent_assignments_share_one_transaction(registry: SqliteRegistry, db_path: Path) -> None:
    await registry.assign_id(key(0))  # some history before the burst
    before = registry.transactions
    ids = await asyncio.gather(*(registry.assign_id(key(n)) for n in range(1, 101)))
    assert registry.transactions == before + 1
    assert ids == list(range(2, 102))
    assert await registry.count() == 101
    other = sqlite3.connect(db_path)
    try:
        (committed,) = other.execute("SELECT count(*) FROM peers").fetchone()
    finally:
        other.close()
    assert committed == 101


async def test_separate_ticks_are_separate_transactions(registry: SqliteRegistry) -> None:
    before = registry.transactions
    await registry.assign_id(key(1))
    await registry.assign_id(key(2))
    assert registry.transactions == before + 2


async def test_same_new_identity_twice_in_one_batch(shared: AnyRegistry) -> None:
    registry = shared
    a, b, c = await asyncio.gather(registry.assign_id(key(5)), registry.assign_id(key(6)), registry.assign_id(key(5)))
    assert a == c == 1
    assert b == 2
    assert await registry.count() == 2


async def test_cancelled_caller_does_not_disturb_the_batch(shared: AnyRegistry) -> None:
    registry = shared
    doomed = asyncio.ensure_future(registry.assign_id(key(1)))
    twin = asyncio.ensure_future(registry.assign_id(key(1)))
    other = asyncio.ensure_future(registry.assign_id(key(2)))
    await asyncio.sleep(0)  # all three are now waiting for the flush
    doomed.cancel()
    assert await twin == 1
    assert await other == 2
    assert doomed.cancelled()
    assert await registry.lookup_id(key(1)) == 1


async def test_close_commits_pending_assignments(db_path: Path) -> None:
    reg = SqliteRegistry(db_path)
    await reg.open()
    task = asyncio.ensure_future(reg.assign_id(key(9)))
    await asyncio.sleep(0)  # task waits; its flush is scheduled, not run
    assert await reg.lookup_id(key(9)) is None
    await reg.close()
    assert await task == 1
    again = SqliteRegistry(db_path)
    await again.open()
    try:
        assert await again.lookup_id(key(9)) == 1
    finally:
        await again.close()


# -- state --------------------------------------------------------------------


async def test_save_and_load_online_filters_on_expiry(shared: AnyRegistry) -> None:
    registry = shared
    ids = [await registry.assign_id(key(n)) for n in range(1, 5)]
    records = [
        record(ids[0], key(1), expires_at=1100.0),
        record(ids[1], key(2), expires_at=1050.0),
        record(ids[2], key(3), expires_at=1000.0),  # exactly now: gone
        record(ids[3], key(4), expires_at=999.0),
    ]
    before = registry.transactions if isinstance(registry, SqliteRegistry) else registry.round_trips
    await registry.save(records)
    after = registry.transactions if isinstance(registry, SqliteRegistry) else registry.round_trips
    assert after == before + 1  # one transaction; one pipeline (no PUBLISH without an instance name)
    online = await registry.load_online(1000.0)
    assert online == records[:2]
    assert await registry.load_online(1000.0, after_id=ids[0], limit=10) == records[1:2]
    assert await registry.load_online(1000.0, limit=1) == records[:1]
    assert await registry.load_online(1060.0) == records[:1]
    assert await registry.load_online(2000.0) == []
    assert await registry.get(ids[3]) == records[3]


async def test_save_overwrites_and_survives_reopen(shared: AnyRegistry, backend: Backend) -> None:
    registry = shared
    peer_id = await registry.assign_id(key(1))
    await registry.save([record(peer_id, key(1), nickname="old")])
    await registry.save([record(peer_id, key(1), nickname="new", last_seen=1090.0)])
    again = await reopen_on(backend, registry)
    try:
        got = await again.get(peer_id)
    finally:
        await again.close()
    assert got == record(peer_id, key(1), nickname="new", last_seen=1090.0)


async def test_save_ignores_unknown_ids_and_mismatched_identities(shared: AnyRegistry) -> None:
    registry = shared
    peer_id = await registry.assign_id(key(1))
    await registry.save(
        [
            record(peer_id + 1, key(2)),  # never assigned
            record(peer_id, key(3), nickname="impostor"),  # id of someone else
        ]
    )
    assert await registry.count() == 1
    assert (await registry.get(peer_id)) == PeerRecord(peer_id, key(1), "", ("", 0), (), 0.0, 0.0, 0.0, 0.0)
    await registry.save([])


async def test_ipv6_addresses_round_trip(shared: AnyRegistry) -> None:
    registry = shared
    peer_id = await registry.assign_id(key(1))
    saved = record(
        peer_id,
        key(1),
        nickname="zoë ✓",
        observed=("2001:db8::7:1", 3478),
        local=(("fe80::1%eth0", 50000), ("::1", 1), ("10.0.0.2", 65535), ("::ffff:1.2.3.4", 9)),
    )
    await registry.save([saved])
    assert await registry.get(peer_id) == saved
    assert await registry.load_online(0.0) == [saved]


@given(st.lists(st.tuples(st.text(max_size=40), st.integers(min_value=0, max_value=65535)), max_size=5))
def test_address_encoding_round_trips(addresses: list[tuple[str, int]]) -> None:
    assert decode_addresses(encode_addresses(addresses)) == tuple(addresses)
    for address in addresses:
        assert decode_address(encode_address(address)) == address


@pytest.mark.parametrize("text", ["", "not json", "[1, 2]", '["h"]', '["h", "80"]', '["h", true]', '{"h": 1}'])
def test_bad_stored_address_raises_registry_error(text: str) -> None:
    with pytest.raises(RegistryError):
        decode_address(text)


async def test_garbage_in_a_row_raises_registry_error(registry: SqliteRegistry, db_path: Path) -> None:
    peer_id = await registry.assign_id(key(1))
    other = sqlite3.connect(db_path)
    with other:
        other.execute("UPDATE peers SET local = '[[\"h\"]]' WHERE peer_id = ?", (peer_id,))
    other.close()
    with pytest.raises(RegistryError, match="not \\[host, port\\]"):
        await registry.get(peer_id)


# -- secret -------------------------------------------------------------------


async def test_secret_is_32_bytes_and_stable_across_reopen(shared: AnyRegistry, backend: Backend) -> None:
    registry = shared
    secret = await registry.secret()
    assert isinstance(secret, bytes) and len(secret) == 32
    assert await registry.secret() == secret
    again = await reopen_on(backend, registry)
    try:
        assert await again.secret() == secret
    finally:
        await again.close()
    elsewhere = backend("other")
    await elsewhere.open()
    try:
        assert await elsewhere.secret() != secret
    finally:
        await elsewhere.close()


# -- lifecycle and errors -----------------------------------------------------


async def test_open_creates_parent_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "registry.sqlite3"
    reg = SqliteRegistry(path)
    await reg.open()
    try:
        assert await reg.assign_id(key(1)) == 1
    finally:
        await reg.close()
    assert path.is_file()


async def test_wal_mode_is_persistent(registry: SqliteRegistry, db_path: Path) -> None:
    await registry.assign_id(key(1))
    other = sqlite3.connect(db_path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        other.close()


@pytest.mark.parametrize("content", [b"this is not a database at all, just some text" * 50, bytes(range(256)) * 16])
async def test_not_a_database_raises_at_open(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.sqlite3"
    path.write_bytes(content)
    reg = SqliteRegistry(path)
    with pytest.raises(RegistryError, match="not a database"):
        await reg.open()
    with pytest.raises(RegistryError, match="not open"):
        await reg.count()
    await reg.close()  # nothing to close, must not raise
    assert path.read_bytes() == content


async def test_directory_in_place_of_file_raises_at_open(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    path.mkdir()
    with pytest.raises(RegistryError):
        await SqliteRegistry(path).open()


async def test_newer_schema_version_is_refused(registry: SqliteRegistry, db_path: Path) -> None:
    await registry.close()
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,))
    conn.close()
    with pytest.raises(RegistryError, match="schema version"):
        await SqliteRegistry(db_path).open()


async def test_close_twice_and_use_after_close(backend: Backend) -> None:
    reg = backend()
    await reg.open()
    await reg.open()  # already open: no-op
    assert await reg.assign_id(key(1)) == 1
    await reg.close()
    await reg.close()
    with pytest.raises(RegistryError, match="not open"):
        await reg.assign_id(key(2))
    with pytest.raises(RegistryError, match="not open"):
        await reg.secret()
    with pytest.raises(RegistryError, match="not open"):
        await reg.save([record(1, key(1))])
    async with backend() as again:
        assert await again.assign_id(key(1)) == 1


async def test_locked_database_fails_the_flush_with_registry_error(registry: SqliteRegistry, db_path: Path) -> None:
    blocker = sqlite3.connect(db_path, isolation_level=None, timeout=0)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        results = await asyncio.gather(registry.assign_id(key(1)), registry.assign_id(key(2)), return_exceptions=True)
        assert all(isinstance(r, RegistryError) for r in results), results
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    # Nothing half-done is left behind: the next attempt starts from 1.
    assert await registry.assign_id(key(2)) == 1
    assert await registry.count() == 1


# -- bulk seed ----------------------------------------------------------------


async def test_seed_inserts_records_and_assign_continues_after_them(
    registry: SqliteRegistry,
) -> None:
    records = [record(n, key(n), expires_at=1000.0 + n) for n in range(1, 1001)]
    assert await registry.seed(records) == 1000
    assert await registry.count() == 1000
    assert await registry.get(500) == records[499]
    assert await registry.lookup_id(key(777)) == 777
    assert len(await registry.load_online(1900.0)) == 100
    assert await registry.assign_id(key(5000)) == 1001


async def test_seed_is_all_or_nothing(registry: SqliteRegistry) -> None:
    await registry.assign_id(key(1))
    with pytest.raises(RegistryError):
        await registry.seed([record(10, key(10)), record(11, key(1))])  # key(1) is bound
    assert await registry.count() == 1
    assert await registry.lookup_id(key(10)) is None


# -- caps and released ids (issue 16, finding 7) ---------------------------


async def test_keys_unseen_since_the_retention_give_their_ids_back_lowest_first(shared: AnyRegistry) -> None:
    registry = shared
    ids = [await registry.assign_id(key(n)) for n in range(1, 6)]
    await registry.save(
        [
            record(ids[0], key(1), last_seen=1000.0, expires_at=1060.0),  # unseen long: released
            record(ids[1], key(2), last_seen=5000.0, expires_at=5060.0),  # seen lately
            record(ids[2], key(3), last_seen=1500.0, expires_at=1560.0),  # unseen long: released
            record(ids[3], key(4), last_seen=1000.0, expires_at=9000.0),  # still online at the cut
        ]
    )
    # ids[4] was handed out and never saved (its registration is on the way): kept.
    assert await registry.release_unseen(2000.0) == [ids[0], ids[2]]
    assert await registry.release_unseen(2000.0) == []  # nothing twice
    assert await registry.lookup_id(key(1)) is None
    assert await registry.get(ids[0]) is None
    assert await registry.count() == 3
    assert await registry.highest_id() == ids[4]  # still the highest ever given out
    # New keys take the released ids, lowest first, then new ones.
    assert await registry.assign_id(key(6)) == ids[0]
    assert await registry.assign_id(key(1)) == ids[2]  # the old key back: a new binding
    assert await registry.assign_id(key(7)) == ids[4] + 1
    fresh = await registry.get(ids[0])
    assert fresh is not None and fresh.identity == key(6) and fresh.last_seen == 0  # no trace of key 1
    assert {r.peer_id for r in await registry.load_online(1000.0)} == {ids[1], ids[3]}


async def test_release_takes_at_most_the_limit(shared: AnyRegistry) -> None:
    registry = shared
    ids = [await registry.assign_id(key(n)) for n in range(1, 6)]
    await registry.save([record(i, key(n), last_seen=1000.0, expires_at=1060.0) for n, i in enumerate(ids, 1)])
    first = await registry.release_unseen(2000.0, limit=2)
    second = await registry.release_unseen(2000.0, limit=10)
    assert len(first) == 2 and sorted(first + second) == ids


async def test_a_key_back_after_long_keeps_its_id_through_a_release(shared: AnyRegistry) -> None:
    registry = shared
    peer_id = await registry.assign_id(key(1))
    await registry.save([record(peer_id, key(1), last_seen=1000.0, expires_at=1060.0)])
    # It registers again: its id is handed out before its new state is written.
    assert await registry.assign_id(key(1)) == peer_id
    assert await registry.release_unseen(2000.0) == []
    assert await registry.lookup_id(key(1)) == peer_id
    await registry.save([record(peer_id, key(1), last_seen=3000.0, expires_at=3060.0)])
    assert await registry.release_unseen(2000.0) == []


@pytest.mark.parametrize("name", ["sqlite", "redis", "redis-cluster"])
async def test_past_max_ids_a_new_key_is_refused_and_known_keys_are_not(
    name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from rendezvous.registry import RegistryFull

    registry: AnyRegistry
    if name == "sqlite":
        registry = SqliteRegistry(tmp_path / "full.sqlite3", max_ids=2)
    else:
        fixture = "redis_server" if name == "redis" else "redis_cluster"
        registry = RedisRegistry(request.getfixturevalue(fixture).url, prefix="full:", max_ids=2, timeout=10)
    await registry.open()
    try:
        first, second = await registry.assign_id(key(1)), await registry.assign_id(key(2))
        with pytest.raises(RegistryFull):
            await registry.assign_id(key(3))
        # In one batch too: the known one gets its id, the new one is refused.
        known, new = await asyncio.gather(
            registry.assign_id(key(1)), registry.assign_id(key(4)), return_exceptions=True
        )
        assert known == first and isinstance(new, RegistryFull)
        assert await registry.count() == 2
        # Released, an id makes room again.
        await registry.save([record(second, key(2), last_seen=1000.0, expires_at=1060.0)])
        assert await registry.release_unseen(2000.0) == [second]
        assert await registry.assign_id(key(3)) == second
    finally:
        await registry.close()


async def test_a_release_survives_a_reopen(backend: Backend) -> None:
    registry = backend()
    await registry.open()
    ids = [await registry.assign_id(key(n)) for n in (1, 2)]
    await registry.save([record(ids[0], key(1), last_seen=1000.0, expires_at=1060.0)])
    assert await registry.release_unseen(2000.0) == [ids[0]]
    registry = await reopen_on(backend, registry)
    try:
        assert await registry.assign_id(key(3)) == ids[0]
        assert await registry.lookup_id(key(1)) is None
    finally:
        await registry.close()
