"""``rendezvous --metrics``: a real server on loopback, real clients, and an
HTTP scrape of the Prometheus text (in process, and through the CLI)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest
from processes import WAIT
from redis_process import free_tcp_port
from test_process import start_server

from rendezvous.client import RendezvousClient
from rendezvous.core import ServerConfig
from rendezvous.metrics import CONTENT_TYPE, MetricsEndpoint
from rendezvous.server import RendezvousServer
from rendezvous.sqlite_registry import SqliteRegistry


def samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


async def scrape(url: str) -> tuple[str, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        return response.headers["Content-Type"], await response.text()


async def test_a_scrape_shows_registrations_peers_relay_and_drops(tmp_path: Path) -> None:
    server = RendezvousServer(ServerConfig(), SqliteRegistry(tmp_path / "r.sqlite3"), "127.0.0.1", 0)
    await server.start()
    metrics = MetricsEndpoint(lambda: server.core, "127.0.0.1", 0)
    await metrics.start()
    clients = [await RendezvousClient(server.address).open() for _ in range(2)]
    try:
        alice, bob = clients
        await alice.register()
        await bob.register()
        bob.send_relayed(1, b"hello")
        assert await asyncio.wait_for(alice.relayed.get(), WAIT) == (2, b"hello")
        alice.send_relayed(99, b"nobody")  # dropped: no such peer
        assert server.core is not None
        deadline = time.monotonic() + 20
        while server.core.stats["dropped: SEND to unknown peer"] < 1:
            assert time.monotonic() < deadline, "the SEND to nobody never arrived"
            await asyncio.sleep(0.02)
        content_type, text = await scrape(f"http://127.0.0.1:{metrics.port}/metrics")
        assert content_type == CONTENT_TYPE
        got = samples(text)
        assert got["peerlink_registrations_total"] == 2
        assert got["peerlink_peers_online"] == 2 and got["peerlink_peers_listed"] == 2
        assert got["peerlink_relay_packets_total"] == 1 and got["peerlink_relay_bytes_total"] == 5
        assert got['peerlink_drops_total{reason="SEND to unknown peer"}'] == 1
        # At least the challenge and the signed one each (a retransmission under load adds one).
        assert got['peerlink_requests_total{method="register"}'] >= 4
    finally:
        for client in clients:
            client.close()
        await metrics.stop()
        await server.stop()


@pytest.mark.timeout(60)
async def test_the_cli_serves_metrics_on_the_address_given(tmp_path: Path) -> None:
    port = free_tcp_port()
    server = await start_server(tmp_path / "r.sqlite3", "--metrics", f"127.0.0.1:{port}")
    try:
        await server.wait_for(rf"Metrics on http://127\.0\.0\.1:{port}/metrics", 20)
        client = await RendezvousClient(server.address).open()
        try:
            await client.binding()
        finally:
            client.close()
        _, text = await scrape(f"http://127.0.0.1:{port}/metrics")
        # One Binding, or two if the client retransmitted it under load.
        assert samples(text)['peerlink_requests_total{method="binding"}'] in (1, 2)
        assert await server.stop() == 0
    finally:
        await server.kill()
