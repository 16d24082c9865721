"""``rendezvous --metrics``: a real server on loopback, real clients, and an
HTTP scrape of the Prometheus text (in process, and through the CLI)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from processes import WAIT
from prometheus_client.parser import text_string_to_metric_families
from redis_process import RedisProcess, free_tcp_port
from test_process import start_server

from rendezvous.client import RendezvousClient
from rendezvous.core import ServerConfig
from rendezvous.metrics import CONTENT_TYPE, MetricsEndpoint
from rendezvous.redis_registry import RedisRegistry
from rendezvous.server import RendezvousServer
from rendezvous.sqlite_registry import SqliteRegistry


def samples(text: str) -> dict[str, float]:
    """``name{label="value",...}`` -> value, read with prometheus_client's own
    parser (which raises on anything that is not valid text format)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return out


def total(got: dict[str, float], name: str) -> float:
    """The sum of a family's samples over all its labels."""
    return sum(value for key, value in got.items() if key == name or key.startswith(name + "{"))


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


async def scrape_until(url: str, check: Callable[[dict[str, float]], bool], what: str) -> dict[str, float]:
    """Scrape until ``check`` holds (20 s at most): counters move when the server gets to it."""
    deadline = time.monotonic() + 20
    while True:
        got = samples((await scrape(url))[1])
        if check(got):
            return got
        assert time.monotonic() < deadline, f"{what}: never seen in {got}"
        await asyncio.sleep(0.05)


@pytest.mark.timeout(60)
async def test_redis_latency_errors_and_loop_lag_on_a_real_redis(redis_server: RedisProcess) -> None:
    registry = RedisRegistry(redis_server.url, timeout=0.5)
    server: RendezvousServer | None = None
    metrics = MetricsEndpoint(lambda: None if server is None else server.core, "127.0.0.1", 0)
    registry.observer = metrics.metrics.redis
    server = RendezvousServer(ServerConfig(), registry, "127.0.0.1", 0, presence=registry)
    await server.start()
    await metrics.start()
    url = f"http://127.0.0.1:{metrics.port}/metrics"
    latency = "peerlink_redis_command_duration_seconds_count"
    client = await RendezvousClient(server.address).open()
    try:
        got = samples((await scrape(url))[1])
        assert got["peerlink_redis_connected"] == 1
        before = total(got, latency)
        assert before > 0  # start-up read the secret and loaded the online peers
        await client.register()
        # The id came from Redis: an "assign" round trip, timed.
        got = await scrape_until(url, lambda g: g.get(f'{latency}{{op="assign"}}', 0) >= 1, "assign timed")
        assert total(got, latency) > before
        assert got['peerlink_redis_command_duration_seconds_sum{op="assign"}'] > 0
        assert total(got, "peerlink_redis_errors_total") == 0
        # The loop-lag timer runs every 0.5 s: one sample at least, finite.
        got = await scrape_until(url, lambda g: g.get("peerlink_event_loop_lag_seconds_count", 0) >= 1, "loop lag")
        assert math.isfinite(got["peerlink_event_loop_lag_seconds_sum"])
        assert math.isfinite(got["peerlink_event_loop_lag_last_seconds"])

        redis_server.kill()
        # The pub/sub listener loses its connection, the write-behind its saves: counted.
        got = await scrape_until(
            url,
            lambda g: total(g, "peerlink_redis_errors_total") >= 1 and g["peerlink_redis_connected"] == 0,
            "a Redis error",
        )
        # The server itself goes on answering from memory.
        await client.refresh()
        redis_server.start()  # back on its port, so that stopping writes quickly
    finally:
        client.close()
        await metrics.stop()
        await server.stop()
