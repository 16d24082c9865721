"""``rendezvous --workers 2``: two processes on one port (SO_REUSEPORT) on one
real Redis; peers spread over both find and introduce each other; the
supervisor forwards SIGTERM and leaves no orphan even when SIGKILLed."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from processes import START, WAIT
from redis_process import RedisProcess
from test_metrics_endpoint import samples, scrape
from test_process import ServerProcess, clean_env, start_server

from rendezvous.client import RendezvousClient

# Enough clients that both workers get some (the kernel hashes each source
# port to a worker): all on one worker has odds of 2**-39.
MAX_CLIENTS = 40


def worker_pids(server: ServerProcess) -> list[int]:
    for line in server.lines:
        if match := re.search(r"Supervising \d+ workers on port \d+: pids ([\d ]+)$", line):
            return [int(pid) for pid in match.group(1).split()]
    raise AssertionError("no supervisor line:\n" + "\n".join(server.lines))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def free_tcp_port_pair() -> int:
    """A loopback TCP port P with P+1 free too (the metrics of workers 0 and 1)."""
    for _attempt in range(50):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise AssertionError("no two free ports in a row")


async def gone(pids: list[int], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def start_workers(tmp_path: Path, redis: RedisProcess, *options: str) -> ServerProcess:
    server = await start_server(tmp_path / "unused.sqlite3", "--registry", redis.url, "--workers", "2", *options)
    # Each worker is a Python start of its own: under load, seconds (START).
    await server.wait_for(r" w0 INFO Running STUN Server on 127\.0\.0\.1", START)
    await server.wait_for(r" w1 INFO Running STUN Server on 127\.0\.0\.1", START)
    return server


@pytest.mark.timeout(240)
async def test_two_workers_on_one_port_serve_peers_that_find_each_other(
    tmp_path: Path, redis_server: RedisProcess
) -> None:
    metrics_port = free_tcp_port_pair()
    server = await start_workers(tmp_path, redis_server, "--metrics", f"127.0.0.1:{metrics_port}")
    opened: list[RendezvousClient] = []
    try:
        homes: dict[int, str] = {}
        while len(set(homes.values())) < 2:
            assert len(opened) < MAX_CLIENTS, f"every peer on one worker: {homes}"
            client = await RendezvousClient(server.address, nickname=f"p{len(opened)}").open()
            opened.append(client)
            peer_id = (await client.register()).peer_id
            line = await server.wait_for(rf" w\d INFO Peer {peer_id} online at", WAIT)
            homes[peer_id] = line.split(" INFO ")[0].rsplit(" ", 1)[1]
        ids = sorted(homes)
        assert ids == list(range(1, len(opened) + 1))
        # Each worker lists the other's peers (through Redis), in id order.
        first, last = opened[0], opened[-1]
        assert homes[ids[0]] != homes[ids[-1]]
        deadline = time.monotonic() + 20
        while [entry.peer_id for entry in await last.list_all()] != ids[:-1]:
            assert time.monotonic() < deadline, "the last peer's worker never listed the others"
            await asyncio.sleep(0.1)
        # CONNECT on one worker to a peer on the other: the target's own worker
        # introduces (the introduction comes from the one shared port).
        info = await last.connect(ids[0])
        assert info.public_key == first.public_key
        intro = await asyncio.wait_for(first.introductions.get(), WAIT)
        assert intro.peer_id == ids[-1] and intro.public_key == last.public_key
        # Relay between peers on the two workers: sent straight from the shared port.
        last.send_relayed(ids[0], b"across workers")
        assert await asyncio.wait_for(first.relayed.get(), WAIT) == (ids[-1], b"across workers")
        first.send_relayed(ids[-1], b"and back")
        assert await asyncio.wait_for(last.relayed.get(), WAIT) == (ids[0], b"and back")
        # Each worker serves its own metrics, worker i on PORT+i: together they count every peer.
        online = []
        for index in range(2):
            await server.wait_for(rf" w{index} INFO Metrics on http://127\.0\.0\.1:{metrics_port + index}/", START)
            got = samples((await scrape(f"http://127.0.0.1:{metrics_port + index}/metrics"))[1])
            online.append(got["peerlink_peers_online"])
            assert got['peerlink_redis_command_duration_seconds_count{op="assign"}'] >= 1
        assert sorted(online) == sorted(Counter(homes.values()).values())
        # SIGTERM to the supervisor stops both workers cleanly.
        pids = worker_pids(server)
        assert len(pids) == 2
        assert await server.stop(timeout=30) == 0
        assert await gone(pids)
        assert len([m for m in server.messages() if m == "Rendezvous server stopped"]) == 2
        assert not [line for line in server.lines if "Traceback" in line or " ERROR " in line]
    finally:
        for client in opened:
            client.close()
        await server.kill()


@pytest.mark.timeout(180)
async def test_killing_the_supervisor_leaves_no_worker(tmp_path: Path, redis_server: RedisProcess) -> None:
    server = await start_workers(tmp_path, redis_server)
    pids = worker_pids(server)
    try:
        await server.stop(signal.SIGKILL)
        assert await gone(pids), "a worker outlived its supervisor"
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_workers_without_a_shared_registry_are_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rendezvous", "--port", "0", "--db", str(tmp_path / "r.db"), "--workers", "2"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=20,
    )
    assert result.returncode == 2
    assert "--workers above 1 needs a shared registry (--registry redis://" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "r.db").exists()
