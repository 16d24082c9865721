"""The registry's cap on ids and the release of ids of keys unseen for long
(issue 16, finding 7), through a real RendezvousServer on loopback UDP with a
real SQLite file; the server's clock is the test's, so "two days later" is a
number, not a wait."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rendezvous.client import RendezvousClient, RendezvousError
from rendezvous.core import ServerConfig
from rendezvous.server import RendezvousServer
from rendezvous.sqlite_registry import SqliteRegistry

DAY = 86400.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def server(tmp_path: Path, clock: Clock) -> AsyncIterator[RendezvousServer]:
    server = RendezvousServer(
        ServerConfig(),
        SqliteRegistry(tmp_path / "registry.sqlite3", max_ids=2),
        "127.0.0.1",
        0,
        flush_interval=0.2,
        clock=clock,
        id_retention=None,  # the test turns it on once the clock has moved
    )
    await server.start()
    yield server
    await server.stop()


async def client(server: RendezvousServer, opened: list[RendezvousClient], **kwargs: object) -> RendezvousClient:
    c = RendezvousClient(server.address, **kwargs)  # type: ignore[arg-type]
    await c.open()
    opened.append(c)
    return c


async def test_a_full_registry_refuses_new_keys_until_an_unseen_one_is_released(
    server: RendezvousServer, clock: Clock
) -> None:
    opened: list[RendezvousClient] = []
    try:
        alice, bob, carol = [await client(server, opened) for _ in range(3)]
        assert (await alice.register()).peer_id == 1
        assert (await bob.register()).peer_id == 2
        with pytest.raises(RendezvousError, match="503 Registry Full"):
            await carol.register()
        assert (await alice.register()).peer_id == 1  # a known key is not refused
        # Bob leaves; two days on, alice is about (registered again), bob is not.
        await bob.unregister()
        clock.now += 2 * DAY
        assert (await alice.register()).peer_id == 1
        assert await server.flush_registry()
        # From now on the release may also run by itself, after any flush:
        # either way, only bob's id goes.
        server.id_retention = DAY
        await server.release_unseen_ids()
        assert server.core is not None and server.core.stats["ids_released"] == 1
        # Carol gets bob's id; bob, back, is a new key to the registry: full again.
        assert (await carol.register()).peer_id == 2
        with pytest.raises(RendezvousError, match="503 Registry Full"):
            await bob.register()
        assert (await alice.register()).peer_id == 1
    finally:
        for c in opened:
            c.close()
