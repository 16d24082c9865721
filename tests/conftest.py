"""Shared fixtures: a real rendezvous server on a loopback port with a real
SQLite file; real ``redis-server`` processes for the Redis registry; ``net``,
real rendezvous and webpeer processes (tests/processes.py)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from hypothesis import HealthCheck, settings
from processes import Net

# tests/ is on sys.path (pytest's prepend import mode), so the helper modules import by name.
from redis_process import RedisProcess

from rendezvous.client import RendezvousClient
from rendezvous.core import ServerConfig
from rendezvous.server import RendezvousServer
from rendezvous.sqlite_registry import SqliteRegistry

# Every property test runs on a shared, noisy 2-core machine (CI, and other
# suites beside it): Hypothesis's timing checks (a per-example deadline, "input
# generation is slow") then fail on load, not on behaviour.  They are off for
# all tests; the properties and example counts are unchanged.
settings.register_profile(
    "peerlink", deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.load_profile("peerlink")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "registry.sqlite3"


@pytest.fixture
async def server(db_path: Path) -> AsyncIterator[RendezvousServer]:
    server = RendezvousServer(
        ServerConfig(legacy_text=True), SqliteRegistry(db_path), "127.0.0.1", 0, flush_interval=0.2
    )
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def make_client(server: RendezvousServer) -> AsyncIterator[Callable[..., RendezvousClient]]:
    clients: list[RendezvousClient] = []

    async def make(**kwargs: object) -> RendezvousClient:
        client = RendezvousClient(server.address, **kwargs)  # type: ignore[arg-type]
        await client.open()
        clients.append(client)
        return client

    yield make  # type: ignore[misc]
    for client in clients:
        client.close()


@pytest.fixture
def redis_servers(tmp_path: Path) -> Iterator[Callable[..., RedisProcess]]:
    """Start ``redis-server`` processes (skip the test if it is not installed); all killed at the end."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (Debian package redis-server; scripts/system-deps.sh)")
    started: list[RedisProcess] = []

    def start(*, appendonly: bool = False) -> RedisProcess:
        server = RedisProcess(tmp_path / f"redis{len(started)}", appendonly=appendonly).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


@pytest.fixture
def redis_server(redis_servers: Callable[..., RedisProcess]) -> RedisProcess:
    return redis_servers()


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[Net]:
    """A rendezvous process and webpeer processes on loopback, all stopped at the end."""
    async with aiohttp.ClientSession() as session:
        network = Net(tmp_path, session)
        try:
            yield network
        finally:
            await network.stop_all()
