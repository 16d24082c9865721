"""The Redis registry against real ``redis-server`` processes: what only a
networked, shared registry has (racing instances, outages), and several
rendezvous instances on one Redis: listed, connected and introduced across
instances; ids kept when every instance restarts; Redis killed while peers
refresh; two instances on a three-master Redis Cluster.  (The Registry
contract itself runs on every backend in tests/unit/test_sqlite_registry.py.)"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis
from processes import WAIT
from redis_process import RedisClusterProcesses, RedisProcess, free_tcp_port
from test_process import clean_env, free_udp_port, start_server

from rendezvous.client import RendezvousClient
from rendezvous.core import ServerConfig
from rendezvous.redis_registry import RedisRegistry, encode_records
from rendezvous.registry import PeerRecord, RegistryError, RegistryUnavailable
from rendezvous.server import RendezvousServer


def key(n: int) -> bytes:
    return n.to_bytes(4, "big") * 8


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


# ------------------------------------------------------------ the registry


async def test_a_burst_of_new_keys_is_one_pipeline(redis_server: RedisProcess) -> None:
    async with RedisRegistry(redis_server.url) as registry:
        await registry.assign_id(key(0))
        before = registry.round_trips
        ids = await asyncio.gather(*(registry.assign_id(key(n)) for n in range(1, 101)))
        assert registry.round_trips == before + 1
        assert ids == list(range(2, 102))
        # Known keys are asked too (the script marks them seen, so a release
        # cannot take their ids meanwhile), a burst of them in one round trip.
        before = registry.round_trips
        known = await asyncio.gather(*(registry.assign_id(key(n)) for n in range(1, 101)))
        assert known == ids
        assert registry.round_trips == before + 1


async def test_racing_instances_never_share_or_waste_an_id(redis_server: RedisProcess) -> None:
    a, b = RedisRegistry(redis_server.url), RedisRegistry(redis_server.url)
    await a.open()
    await b.open()
    try:
        # Both see the same 50 new keys at once, in opposite orders.
        got_a, got_b = await asyncio.gather(
            asyncio.gather(*(a.assign_id(key(n)) for n in range(50))),
            asyncio.gather(*(b.assign_id(key(n)) for n in reversed(range(50)))),
        )
        assert got_a == list(reversed(got_b))
        assert sorted(got_a) == list(range(1, 51))
        assert await a.count() == await b.count() == 50
        assert await a.secret() == await b.secret()
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize(
    "url, message",
    [
        ("http://127.0.0.1:6379/0", "expected redis://HOST:PORT/DB"),
        ("redis:///0", "no host"),
        ("redis://127.0.0.1:99999/0", "Port out of range"),
    ],
)
def test_bad_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        RedisRegistry(url)


async def test_unreachable_redis_is_one_clear_error(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(RegistryError, match="cannot reach Redis at redis://127.0.0.1"):
        await RedisRegistry(f"redis://127.0.0.1:{free_tcp_port()}/0").open()
    assert time.monotonic() - started < 5


async def test_damaged_record_is_a_registry_error(redis_server: RedisProcess) -> None:
    async with RedisRegistry(redis_server.url) as registry:
        peer_id = await registry.assign_id(key(1))
        import redis.asyncio as aioredis

        raw = aioredis.Redis.from_url(redis_server.url)
        await raw.hset(f"peerlink:peer:{peer_id}", "state", "[1, 2")
        await raw.aclose()
        with pytest.raises(RegistryError, match="damaged"):
            await registry.get(peer_id)


async def test_the_listener_reloads_when_redis_py_reconnects_it_quietly(redis_server: RedisProcess) -> None:
    """redis-py's pub/sub reconnects a dropped connection and subscribes again
    by itself, raising nothing: presence published in between is lost unless
    the listener notices (the subscriptions confirmed again) and reloads."""
    seen: asyncio.Queue[PeerRecord] = asyncio.Queue()
    now = time.time()
    before = PeerRecord(6, key(6), "before", ("192.0.2.6", 6000), (), now, now, now + 60, now, home="B")
    record = PeerRecord(7, key(7), "gap", ("192.0.2.7", 7000), (), now, now, now + 60, now, home="B")
    # Another instance, played with blocking calls: while one runs, A's listener cannot.
    sync = redis.Redis.from_url(redis_server.url)
    try:
        async with RedisRegistry(redis_server.url) as a:
            await a.start("A", lambda records: [seen.put_nowait(r) for r in records], lambda i, d: None)
            presence = f"{a.prefix}presence"

            async def heard_before() -> bool:
                # Published until A's listener hears it: then it is subscribed and reading.
                sync.publish(presence, encode_records([before]))
                try:
                    return (await asyncio.wait_for(seen.get(), 0.5)).peer_id == 6
                except TimeoutError:
                    return False

            await eventually(heard_before, timeout=20)
            while not seen.empty():
                assert seen.get_nowait().peer_id == 6
            # All at once, without letting the loop run: A's connection is cut,
            # then the other instance writes a peer and announces it to no one.
            assert sync.client_kill_filter(_type="pubsub") == 1
            fields = {
                "identity": record.identity,
                "state": json.loads(encode_records([record]))[0][2],
                "expires_at": repr(record.expires_at),
                "last_seen": repr(record.last_seen),
                "home": "B",
            }
            sync.hset(f"{a.prefix}peer:7", mapping=fields)
            sync.zadd(f"{a.prefix}online", {"7": 7})
            assert sync.publish(presence, encode_records([record])) == 0
            got = await asyncio.wait_for(seen.get(), 20)
            assert (got.peer_id, got.nickname, got.home) == (7, "gap", "B")
    finally:
        sync.close()


async def test_known_ids_survive_an_outage_and_new_ones_fail_fast(
    redis_server: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    async with RedisRegistry(redis_server.url, timeout=0.3) as registry:
        known = await registry.assign_id(key(1))
        redis_server.kill()
        caplog.set_level(logging.INFO, "rendezvous")
        assert await registry.assign_id(key(1)) == known
        for _ in range(3):
            with pytest.raises(RegistryUnavailable):
                await registry.assign_id(key(2))
        with pytest.raises(RegistryUnavailable):
            await registry.save([PeerRecord(known, key(1), "", ("h", 1), (), 1.0, 1.0, 1.0, 1.0)])
        down = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(down) == 1, down
        redis_server.start()  # same port; no persistence, so an empty Redis
        assert await registry.assign_id(key(2)) == 1
        assert [r.getMessage() for r in caplog.records if "reachable again" in r.getMessage()]


# ------------------------------------------------------------ several instances


@pytest.fixture
async def instances(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Awaitable[RendezvousServer]]]:
    """Start rendezvous instances sharing ``redis_server`` (or the URL given)."""
    started: list[RendezvousServer] = []

    async def start(url: str | None = None, *, timeout: float = 0.3, **config: object) -> RendezvousServer:
        registry = RedisRegistry(url or request.getfixturevalue("redis_server").url, timeout=timeout)
        server = RendezvousServer(
            ServerConfig(**config),  # type: ignore[arg-type]
            registry,
            "127.0.0.1",
            0,
            flush_interval=0.2,
            presence=registry,
        )
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        if server.core is not None and server._endpoint is not None:
            await server.stop()


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., Awaitable[RendezvousClient]]]:
    opened: list[RendezvousClient] = []

    async def open_client(server: RendezvousServer, **kwargs: object) -> RendezvousClient:
        client = RendezvousClient(server.address, **kwargs)  # type: ignore[arg-type]
        await client.open()
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        client.close()


async def listed(client: RendezvousClient) -> list[int]:
    return [entry.peer_id for entry in await client.list_all()]


async def test_register_on_a_list_and_connect_from_b(instances, clients) -> None:
    a = await instances()
    b = await instances()
    assert a.instance != b.instance
    alice = await clients(a, nickname="alice", local=(("10.1.2.3", 4444),))
    bob = await clients(b, nickname="bob")
    assert (await alice.register()).peer_id == 1
    assert (await bob.register()).peer_id == 2

    async def bob_sees_alice() -> bool:
        return await listed(bob) == [1]

    async def alice_sees_bob() -> bool:
        return await listed(alice) == [2]

    await eventually(bob_sees_alice)
    await eventually(alice_sees_bob)
    # CONNECT on B to a peer on A: answered by B, introduced by A.
    info = await bob.connect(1)
    assert info.public_key == alice.public_key and info.nickname == "alice"
    assert [c.address for c in info.candidates] == [alice.address, ("10.1.2.3", 4444)]
    intro = await asyncio.wait_for(alice.introductions.get(), WAIT)
    assert intro.peer_id == 2 and intro.public_key == bob.public_key
    assert intro.candidates[0].address == bob.address
    assert intro.punch_key == info.punch_key
    assert b.core is not None and a.core is not None
    assert b.core.stats["introductions_forwarded"] == 1
    await eventually(lambda: _true(a.core.stats["introductions_acknowledged"] == 1))
    # A session minted by A is good at B too (one secret), but B answers a
    # peer homed at A with Register Again: its requests belong at its home.
    # Unregistering on A takes it off B's list.
    await alice.unregister()

    async def bob_sees_nobody() -> bool:
        return await listed(bob) == []

    await eventually(bob_sees_nobody)


async def _true(value: bool) -> bool:
    return value


async def test_a_peer_moving_to_another_instance_keeps_its_id(instances, clients) -> None:
    a = await instances()
    b = await instances()
    alice = await clients(a)
    watcher = await clients(a)
    assert (await alice.register()).peer_id == 1
    await watcher.register()
    moved = await clients(b, private_key=alice.private_key)
    assert (await moved.register()).peer_id == 1
    assert a.core is not None

    async def a_mirrors_it() -> bool:
        record = a.core.directory.get(1)  # type: ignore[union-attr]
        return record is not None and record.home == b.instance

    await eventually(a_mirrors_it)
    # A now forwards introductions to it through B.
    await watcher.connect(1)
    intro = await asyncio.wait_for(moved.introductions.get(), WAIT)
    assert intro.peer_id == 2


async def test_relay_between_peers_on_two_instances(instances, clients) -> None:
    a = await instances()
    b = await instances()
    alice = await clients(a)
    bob = await clients(b)
    assert (await alice.register()).peer_id == 1
    assert (await bob.register()).peer_id == 2
    assert a.core is not None and b.core is not None

    async def mirrored() -> bool:
        return 2 in a.core.directory and 1 in b.core.directory  # type: ignore[union-attr]

    await eventually(mirrored)
    # Each SEND is checked by the sender's instance and sent on by the
    # receiver's (whose address the receiver's NAT knows), through Redis.
    for n in range(20):
        bob.send_relayed(1, b"to alice %d" % n)
        alice.send_relayed(2, b"to bob %d" % n)
    got_alice = [await asyncio.wait_for(alice.relayed.get(), WAIT) for _ in range(20)]
    got_bob = [await asyncio.wait_for(bob.relayed.get(), WAIT) for _ in range(20)]
    assert sorted(got_alice) == sorted((2, b"to alice %d" % n) for n in range(20))
    assert sorted(got_bob) == sorted((1, b"to bob %d" % n) for n in range(20))
    assert a.core.stats["relay_forwarded"] == b.core.stats["relay_forwarded"] == 20
    assert a.core.stats["relayed_from_instances"] == b.core.stats["relayed_from_instances"] == 20


async def test_a_webpeer_falls_over_to_its_second_server_and_keeps_its_id(instances, tmp_path: Path) -> None:
    """``webpeer --server a,b``: registered with A, A stops, the peer is on B with its id."""
    from webpeer.engine import address_text
    from webpeer.node import NodeConfig, PeerNode

    a = await instances()
    b = await instances()
    config = NodeConfig(
        server=a.address,
        fallback_servers=(b.address,),
        data_dir=tmp_path / "alice",
        name="alice",
        udp_host="127.0.0.1",
        list_interval=0.3,
    )
    node = PeerNode(config)
    await node.start()
    try:

        async def registered_with(server: RendezvousServer) -> bool:
            return node.registration.state.value == "registered" and node.registration.server == server.address

        await eventually(lambda: registered_with(a), timeout=20)
        assert node.registration.peer_id == 1
        assert node.me()["server"] == address_text(a.address)
        await a.stop()
        await eventually(lambda: registered_with(b), timeout=30)
        assert node.registration.peer_id == 1
        me = node.me()
        assert me["server"] == address_text(b.address) and me["server_state"] == "registered"
        assert b.core is not None and (record := b.core.directory.get(1)) is not None and not record.home
    finally:
        await node.stop()


async def test_ids_survive_restarting_every_instance(instances, clients) -> None:
    a = await instances()
    b = await instances()
    peers = [await clients(a if n % 2 else b) for n in range(6)]
    ids = [(await peer.register()).peer_id for peer in peers]
    assert sorted(ids) == list(range(1, 7))
    await a.stop()
    await b.stop()
    a2 = await instances()
    b2 = await instances()
    for n, peer in enumerate(peers):
        again = await clients(b2 if n % 2 else a2, private_key=peer.private_key)
        assert (await again.register()).peer_id == ids[n]
    newcomer = await clients(a2)
    assert (await newcomer.register()).peer_id == 7


@pytest.mark.timeout(60)
async def test_redis_killed_while_peers_refresh(redis_servers, clients, caplog: pytest.LogCaptureFixture) -> None:
    redis = redis_servers(appendonly=True)
    registry = RedisRegistry(redis.url, timeout=0.3)
    server = RendezvousServer(ServerConfig(), registry, "127.0.0.1", 0, flush_interval=0.2, presence=registry)
    await server.start()
    caplog.set_level(logging.INFO, "rendezvous")
    try:
        peers = [await clients(server, nickname=f"p{n}") for n in range(3)]
        for peer in peers:
            await peer.register()
        await server.flush_registry()
        redis.kill()
        outage_started = time.time()
        # For 3 s without Redis: refreshes, LIST and CONNECT are answered.
        while time.time() - outage_started < 3:
            refreshed_at = time.time()  # the server's clock too: its last_seen for them is later
            for peer in peers:
                assert await peer.refresh(ttl=120) == 120
            assert await listed(peers[0]) == [2, 3]
            await peers[0].connect(2)
            await asyncio.sleep(0.2)
        redis.start()
        assert server.core is not None

        # The refreshes made without Redis reach it once it is back. (Read
        # from Redis itself: the server's owed set is empty while a save is
        # still on its way, so it cannot say "written".)
        check = RedisRegistry(redis.url)
        async with check:

            async def written() -> bool:
                for peer in peers:
                    assert peer.registration is not None
                    stored = await check.get(peer.registration.peer_id)
                    if stored is None or stored.last_seen < refreshed_at - 0.01:
                        return False
                    assert stored.expires_at == pytest.approx(stored.last_seen + 120)
                return True

            await eventually(written, timeout=20)
        messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len([m for m in messages if "unreachable" in m]) == 1, messages
        assert not [r for r in caplog.records if r.exc_info], "no tracebacks"
    finally:
        await server.stop()


def test_cli_with_an_unreachable_or_bad_registry_exits_with_one_line(tmp_path: Path) -> None:

    for url, message in [
        (f"redis://127.0.0.1:{free_tcp_port()}/0", "rendezvous: cannot reach Redis at redis://127.0.0.1:"),
        ("mysql://127.0.0.1/0", "expected redis://HOST:PORT/DB"),
        ("redis+cluster://127.0.0.1:7000/2", "a Redis Cluster has database 0 only"),
    ]:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "rendezvous",
                "--host",
                "127.0.0.1",
                "--port",
                str(free_udp_port()),
                "--registry",
                url,
            ],
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=20,
        )
        assert result.returncode == 1, result.stderr
        assert message in result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.timeout(60)
async def test_two_processes_on_one_redis(tmp_path: Path, redis_server: RedisProcess) -> None:
    """``python -m rendezvous --registry``, twice: the CLI path end to end."""
    a = await start_server(tmp_path / "unused-a.sqlite3", "--registry", redis_server.url)
    b = await start_server(tmp_path / "unused-b.sqlite3", "--registry", redis_server.url)
    opened: list[RendezvousClient] = []
    try:
        await a.wait_for(rf"Instance \S+:{a.port} sharing the registry")
        alice = await RendezvousClient(a.address, nickname="alice").open()
        bob = await RendezvousClient(b.address, nickname="bob").open()
        opened += [alice, bob]
        assert (await alice.register()).peer_id == 1
        assert (await bob.register()).peer_id == 2

        async def bob_sees_alice() -> bool:
            return await listed(bob) == [1]

        await eventually(bob_sees_alice)
        await bob.connect(1)
        intro = await asyncio.wait_for(alice.introductions.get(), WAIT)
        assert intro.peer_id == 2
        assert await a.stop() == 0 and await b.stop() == 0
        assert not (tmp_path / "unused-a.sqlite3").exists()
        for server in (a, b):
            assert server.messages("ERROR") == [] and not [line for line in server.lines if "Traceback" in line]
    finally:
        for client in opened:
            client.close()
        await a.kill()
        await b.kill()


# ------------------------------------------------------------ Redis Cluster


async def test_two_instances_on_a_redis_cluster(instances, clients, redis_cluster: RedisClusterProcesses) -> None:
    """``redis+cluster://``: register on A, list, connect and relay from B;
    every key of the registry in one hash slot (its scripts need that)."""
    # Seconds of socket timeout: joining a Cluster takes several round trips, and no outage is tested here.
    a = await instances(redis_cluster.url, timeout=5)
    b = await instances(redis_cluster.url, timeout=5)
    alice = await clients(a, nickname="alice")
    bob = await clients(b, nickname="bob")
    assert (await alice.register()).peer_id == 1
    assert (await bob.register()).peer_id == 2

    async def bob_sees_alice() -> bool:
        return await listed(bob) == [1]

    await eventually(bob_sees_alice, timeout=20)
    info = await bob.connect(1)
    assert info.public_key == alice.public_key and info.nickname == "alice"
    intro = await asyncio.wait_for(alice.introductions.get(), 20)
    assert intro.peer_id == 2 and intro.public_key == bob.public_key
    assert b.core is not None and b.core.stats["introductions_forwarded"] == 1

    async def mirrored() -> bool:
        return 1 in b.core.directory  # type: ignore[union-attr]

    await eventually(mirrored, timeout=20)
    for n in range(5):
        bob.send_relayed(1, b"to alice %d" % n)
    got = [await asyncio.wait_for(alice.relayed.get(), 20) for _ in range(5)]
    assert sorted(got) == [(2, b"to alice %d" % n) for n in range(5)]

    holders = {port: keys for port in redis_cluster.ports if (keys := node_keys(port))}
    assert len(holders) == 1, holders  # one node: the one serving the tag's slot
    (keys,) = holders.values()
    assert b"{peerlink}:ids" in keys and b"{peerlink}:peer:1" in keys
    assert all(k.startswith(b"{peerlink}:") for k in keys), keys


def node_keys(port: int) -> list[bytes]:
    """The keys stored on one cluster node (KEYS * asks only that node)."""
    result = subprocess.run(
        ["redis-cli", "-p", str(port), "--raw", "KEYS", "*"], capture_output=True, check=True, timeout=10
    )
    return [line for line in result.stdout.splitlines() if line]


async def test_a_redis_cluster_outage_is_registry_unavailable_and_the_listener_comes_back(
    redis_cluster: RedisClusterProcesses,
) -> None:
    """Every node killed: calls fail with RegistryUnavailable (redis-py's
    RedisClusterException is no RedisError), and once the nodes are back the
    listener is subscribed again (by itself or by redis-py's reconnection,
    whichever comes first) and forwarded datagrams flow again."""
    arrived: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
    # Refused connections fail at once whatever the timeout; a long one keeps a slow machine from looking down.
    a = RedisRegistry(redis_cluster.url, timeout=5)
    b = RedisRegistry(redis_cluster.url, timeout=5)
    async with a, b:
        await a.start("A", lambda records: None, lambda i, d: arrived.put_nowait((i, d)))
        await b.start("B", lambda records: None, lambda i, d: None)
        await b.forward_many([("A", 7, b"before")])
        assert await asyncio.wait_for(arrived.get(), 20) == (7, b"before")
        redis_cluster.kill()
        with pytest.raises(RegistryUnavailable):
            await b.forward_many([("A", 8, b"lost")])
        with pytest.raises(RegistryUnavailable):
            await b.assign_id(key(1))
        redis_cluster.restart()

        async def forwarded_again() -> bool:
            # Sent until A's listener is subscribed again (pub/sub keeps nothing for the absent).
            try:
                await b.forward_many([("A", 9, b"after")])
            except RegistryUnavailable:
                return False
            try:
                return await asyncio.wait_for(arrived.get(), 0.5) == (9, b"after")
            except TimeoutError:
                return False

        await eventually(forwarded_again, timeout=20)
        assert await b.assign_id(key(1)) == 1  # an empty registry again: the nodes kept no data
