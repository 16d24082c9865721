"""How long one rendezvous instance takes to load N online peers from Redis at start-up.

Seeds a fresh ``redis-server`` with ``--peers`` online peers (as
registry_scale.py does: the keys RedisRegistry writes, homed at another
instance), then starts a RendezvousServer on it in this process and times
``start()`` (every online peer loaded into its directory before it answers)
plus the CPU time it took (here and in redis-server: what a busy machine
does not inflate) and the RSS it grew by.  In-process so that a profiler sees the load alone:

    .venv/bin/python bench/registry_load.py --peers 200000
    .venv/bin/py-spy record -o load.svg -- .venv/bin/python bench/registry_load.py --peers 200000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.registry_scale import free_port, rss_mib, seed_redis, start_redis  # noqa: E402
from rendezvous.events import ServerConfig  # noqa: E402
from rendezvous.redis_registry import RedisRegistry  # noqa: E402
from rendezvous.server import RendezvousServer  # noqa: E402


@dataclass
class StartUp:
    seconds: float  # wall clock
    cpu_s: float  # this process's CPU time: what a busy machine does not inflate
    redis_cpu_s: float  # redis-server's (INFO cpu), spent serving the load
    loaded: int
    rss_mib: float  # what the process grew by


def redis_cpu(port: int) -> float:
    out = subprocess.run(["redis-cli", "-p", str(port), "INFO", "cpu"], capture_output=True, text=True, check=True)
    fields = dict(line.split(":", 1) for line in out.stdout.splitlines() if ":" in line)
    return float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])


async def time_start(redis_port: int) -> StartUp:
    before = rss_mib(os.getpid())
    registry = RedisRegistry(f"redis://127.0.0.1:{redis_port}/0")
    server = RendezvousServer(ServerConfig(), registry, "127.0.0.1", free_port(), presence=registry)
    redis_before = redis_cpu(redis_port)
    cpu_before = time.process_time()
    started = time.perf_counter()
    await server.start()
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu_before
    redis_used = redis_cpu(redis_port) - redis_before
    assert server.core is not None
    loaded = len(server.core.directory)
    grown = rss_mib(os.getpid()) - before
    await server.stop()
    return StartUp(seconds, cpu, redis_used, loaded, grown)


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
                run = asyncio.run(time_start(redis_port))
                per_peer = 1e6 / max(run.loaded, 1)
                print(
                    f"start-up: {run.seconds:.2f} s for {run.loaded:,} peers ({run.seconds * per_peer:.1f} us a peer); "
                    f"CPU {run.cpu_s * per_peer:.1f} us a peer here + {run.redis_cpu_s * per_peer:.1f} in Redis; "
                    f"RSS +{run.rss_mib:.0f} MiB",
                    flush=True,
                )
        finally:
            redis.kill()
            redis.wait()


if __name__ == "__main__":
    main()
