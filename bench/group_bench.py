"""Group fan-out on loopback: time from send to delivered-to-all, and messages/s.

One process runs a rendezvous server and N webpeer nodes (real UDP sockets on
127.0.0.1, real QUIC links, real SQLite histories in a temporary directory),
all on one asyncio loop, so every figure includes the CPU of all N peers on
one core: an upper bound on what one member's machine spends, not a network
latency.  For each group size:

- latency: one member writes a message, waits until every other member has
  delivered it (their group logs), then the next; median and worst of ``--rounds``.
- throughput: one member writes ``--burst`` messages at once; messages/s until
  every member has delivered all of them.

Usage: .venv/bin/python bench/group_bench.py --sizes 5 20 50 [--rounds 20] [--burst 200]
Prints one JSON line per size.  Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rendezvous.core import ServerConfig
from rendezvous.server import RendezvousServer
from rendezvous.sqlite_registry import SqliteRegistry
from webpeer.node import NodeConfig, PeerNode


async def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.002)


async def run_size(size: int, rounds: int, burst: int, root: Path) -> dict[str, object]:
    server = RendezvousServer(ServerConfig(), SqliteRegistry(root / f"server-{size}.sqlite3"), "127.0.0.1", 0)
    await server.start()
    nodes: list[PeerNode] = []
    try:
        for index in range(size):
            config = NodeConfig(
                server=server.address,
                data_dir=root / f"g{size}-{index}",
                name=f"p{index}",
                udp_host="127.0.0.1",
                list_interval=0.5,
            )
            node = PeerNode(config)
            await node.start()
            nodes.append(node)
        await wait_for(lambda: all(n.registration.peer_id for n in nodes), 60, "registration")
        writer, others = nodes[0], nodes[1:]
        ids = [n.registration.peer_id for n in others]
        for peer_id in ids:  # watched: the server's presence answers carry their keys
            if peer_id is not None:
                writer.engine.add_contact(peer_id, time.time())
        writer._flush()
        await wait_for(lambda: all(writer.engine.key_of(i) for i in ids if i), 60, "keys")
        started = time.monotonic()
        group = await writer.create_group("bench", [i for i in ids if i])
        group_id = str(group["id"])
        await wait_for(lambda: all(group_id in n.engine.groups.logs for n in others), 120, "group everywhere")
        setup = time.monotonic() - started

        def everyone_has(seq: int) -> bool:
            return all(n.engine.groups.logs[group_id].delivered_seq(me) >= seq for n in others)

        me = writer.registration.peer_id
        assert me is not None
        latencies = []
        for round_ in range(rounds):
            started = time.monotonic()
            message = await writer.send_group_message(group_id, f"latency {round_}")
            await wait_for(lambda s=int(message["seq"]): everyone_has(s), 60, "delivered to all")
            latencies.append(time.monotonic() - started)
        started = time.monotonic()
        last = 0
        for n in range(burst):
            last = int((await writer.send_group_message(group_id, f"burst {n}"))["seq"])
        await wait_for(lambda: everyone_has(last), 300, "burst delivered to all")
        burst_seconds = time.monotonic() - started
        return {
            "members": size,
            "group_setup_s": round(setup, 3),
            "send_to_all_median_ms": round(statistics.median(latencies) * 1000, 1),
            "send_to_all_max_ms": round(max(latencies) * 1000, 1),
            "burst": burst,
            "burst_messages_per_s": round(burst / burst_seconds, 1),
            "deliveries_per_s": round(burst * (size - 1) / burst_seconds, 1),
        }
    finally:
        for node in nodes:
            await node.stop()
        await server.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 20, 50])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--burst", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="group-bench-") as tmp:
        for size in args.sizes:
            print(json.dumps(await run_size(size, args.rounds, args.burst, Path(tmp))), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
