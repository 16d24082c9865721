"""How long one rendezvous instance takes to load N online peers from Redis at start-up.

Seeds a fresh ``redis-server`` with ``--peers`` online peers (as
registry_scale.py does: the keys RedisRegistry writes, homed at another
instance), then starts a RendezvousServer on it in this process and times
``start()`` (every online peer loaded into its directory before it answers)
plus the RSS it grew by.  In-process so that a profiler sees the load alone:

    .venv/bin/python bench/registry_load.py --peers 200000
    .venv/bin/py-spy record -o load.svg -- .venv/bin/python bench/registry_load.py --peers 200000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.registry_scale import free_port, rss_mib, seed_redis, start_redis  # noqa: E402
from rendezvous.events import ServerConfig  # noqa: E402
from rendezvous.redis_registry import RedisRegistry  # noqa: E402
from rendezvous.server import RendezvousServer  # noqa: E402


async def time_start(redis_port: int) -> tuple[float, int, float]:
    before = rss_mib(os.getpid())
    registry = RedisRegistry(f"redis://127.0.0.1:{redis_port}/0")
    server = RendezvousServer(ServerConfig(), registry, "127.0.0.1", free_port(), presence=registry)
    started = time.perf_counter()
    await server.start()
    seconds = time.perf_counter() - started
    assert server.core is not None
    loaded = len(server.core.directory)
    grown = rss_mib(os.getpid()) - before
    await server.stop()
    return seconds, loaded, grown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=1, help="start-ups to time on the same seeded Redis")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="peerlink-load-") as tmp:
        redis, redis_port = start_redis(Path(tmp), cores=None)
        try:
            seed_seconds = seed_redis(redis_port, args.peers, ["elsewhere:1"])
            print(f"seeded {args.peers:,} peers in {seed_seconds:.1f} s", flush=True)
            for _ in range(args.rounds):
                seconds, loaded, grown = asyncio.run(time_start(redis_port))
                print(
                    f"start-up: {seconds:.2f} s for {loaded:,} peers "
                    f"({seconds / max(loaded, 1) * 1e6:.1f} us a peer), RSS +{grown:.0f} MiB",
                    flush=True,
                )
        finally:
            redis.kill()
            redis.wait()


if __name__ == "__main__":
    main()
