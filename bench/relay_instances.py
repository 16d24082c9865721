"""Relay (SEND -> DATA) between two peers on one instance vs on two instances
sharing a Redis registry (the DATA forwarded through Redis pub/sub).

Everything runs in this one process on one event loop (two servers, two
clients), plus one ``redis-server`` child on a free loopback port; so the
figures are relative: packets/s and CPU per packet (this process, and Redis)
for the same window-limited stream, one instance against two.

    .venv/bin/python bench/relay_instances.py [--packets 20000] [--window 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import tempfile
import time

from rendezvous.client import RendezvousClient
from rendezvous.events import ServerConfig
from rendezvous.redis_registry import RedisRegistry
from rendezvous.server import RendezvousServer

CONFIG = ServerConfig(relay_packets_per_second=1e7, relay_bytes_per_second=1e10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def stream(sender: RendezvousClient, receiver: RendezvousClient, dest: int, packets: int, window: int) -> None:
    payload = b"x" * 100
    sent = received = 0
    while received < packets:
        while sent < packets and sent - received < window:
            sender.send_relayed(dest, payload)
            sent += 1
        try:
            await asyncio.wait_for(receiver.relayed.get(), 2)
        except TimeoutError:
            sent -= 1  # lost: send another in its place
            continue
        received += 1


async def run(url: str, redis_pid: int, packets: int, window: int, instances: int) -> dict[str, float]:
    servers = []
    for _ in range(instances):
        registry = RedisRegistry(url)
        server = RendezvousServer(CONFIG, registry, "127.0.0.1", 0, presence=registry)
        await server.start()
        servers.append(server)
    alice = await RendezvousClient(servers[0].address).open()
    bob = await RendezvousClient(servers[-1].address).open()
    try:
        a_id = (await alice.register()).peer_id
        await bob.register()
        while any(s.core is None or a_id not in s.core.directory for s in servers):
            await asyncio.sleep(0.05)
        await stream(bob, alice, a_id, 500, window)  # warm-up
        cpu, redis_cpu, wall = time.process_time(), cpu_seconds(redis_pid), time.perf_counter()
        await stream(bob, alice, a_id, packets, window)
        wall = time.perf_counter() - wall
        cpu = time.process_time() - cpu
        redis_cpu = cpu_seconds(redis_pid) - redis_cpu
    finally:
        alice.close()
        bob.close()
        for server in servers:
            await server.stop()
    return {
        "packets_per_s": packets / wall,
        "process_us_per_packet": cpu / packets * 1e6,
        "redis_us_per_packet": redis_cpu / packets * 1e6,
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--packets", type=int, default=20000)
    parser.add_argument("--window", type=int, default=64)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        redis = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=directory,
            stdout=subprocess.DEVNULL,
        )
        try:
            await asyncio.sleep(0.5)
            url = f"redis://127.0.0.1:{port}/0"
            for instances in (1, 2):
                result = await run(url, redis.pid, args.packets, args.window, instances)
                print(instances, "instance(s):", " ".join(f"{k}={v:.1f}" for k, v in result.items()), flush=True)
        finally:
            redis.terminate()
            redis.wait()


if __name__ == "__main__":
    asyncio.run(main())
