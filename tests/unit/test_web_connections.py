"""The local site's TCP connections are bounded (issue 16, finding 11;
webpeer/web_connections.py): idle ones are closed after the idle timeout or
to make room, so a pile of silent connections cannot keep the page out.
Real sites from start_site on loopback, raw sockets for the silent ones."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from fake_api import FakePeerApi

from webpeer.web import CONNECTIONS_KEY, WebConfig, create_app, start_site

TOKEN = "test-token_0123456789abcdefXYZ"
DEADLINE = 20.0


async def started(**config: object) -> tuple[web.AppRunner, int]:
    app = create_app(WebConfig(port=0, token=TOKEN, **config), FakePeerApi())  # type: ignore[arg-type]
    runner = await start_site(app)
    return runner, runner.addresses[0][1]


@pytest.fixture
async def runners() -> AsyncIterator[list[web.AppRunner]]:
    made: list[web.AppRunner] = []
    yield made
    for runner in made:
        await runner.cleanup()


async def silent(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True once the server closed the connection (EOF or reset), waiting up to DEADLINE."""
    try:
        return await asyncio.wait_for(reader.read(), DEADLINE) == b""
    except ConnectionResetError:
        return True


async def api_me(port: int) -> int:
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{port}/api/me"
        async with session.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            return response.status


async def test_past_the_cap_the_oldest_silent_connection_makes_room(runners: list[web.AppRunner]) -> None:
    runner, port = await started(max_connections=4)
    runners.append(runner)
    held = [await silent(port) for _ in range(4)]
    # The site holds all four (they are accepted before anything else happens).
    server = runner.server
    assert server is not None
    for _ in range(int(DEADLINE / 0.01)):
        if len(server.connections) == 4:
            break
        await asyncio.sleep(0.01)
    assert len(server.connections) == 4
    assert await api_me(port) == 200  # the page still gets in
    assert await closed_by_server(held[0][0])  # the oldest silent one went
    assert runner.app[CONNECTIONS_KEY].evicted >= 1
    for _, writer in held:
        writer.close()


async def test_a_connection_with_a_request_under_way_is_not_the_one_closed(runners: list[web.AppRunner]) -> None:
    runner, port = await started(max_connections=2)
    runners.append(runner)
    async with aiohttp.ClientSession() as session:
        # A websocket is a request for its whole life: its connection is busy.
        async with session.ws_connect(
            f"http://127.0.0.1:{port}/ws?token={TOKEN}", headers={"Origin": f"http://127.0.0.1:{port}"}
        ) as ws:
            reader, writer = await silent(port)
            assert await api_me(port) == 200
            assert await closed_by_server(reader)  # the silent one, not the websocket
            assert not ws.closed
            await ws.send_json({"type": "nonsense"})
            answer = await asyncio.wait_for(ws.receive(), DEADLINE)
            assert answer.type == aiohttp.WSMsgType.TEXT
            writer.close()


async def test_a_silent_connection_is_closed_after_the_idle_timeout(runners: list[web.AppRunner]) -> None:
    runner, port = await started(idle_timeout=0.3)
    runners.append(runner)
    reader, writer = await silent(port)
    assert await closed_by_server(reader)
    writer.close()
    assert await api_me(port) == 200
