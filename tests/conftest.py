"""Shared fixtures: a real rendezvous server on a loopback port with a real SQLite file."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from rendezvous.client import RendezvousClient
from rendezvous.core import ServerConfig
from rendezvous.server import RendezvousServer
from rendezvous.sqlite_registry import SqliteRegistry


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
