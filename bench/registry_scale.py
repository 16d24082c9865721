"""REGISTER, LIST and CONNECT latency with 1,000 vs 1,000,000 registered keys.

For each size: seed a fresh SQLite registry with that many online peers,
start ``python -m rendezvous`` pinned to core 0, wait until it has loaded
them, then measure from core 1 with one request outstanding at a time
(latency, not throughput): a full REGISTER of a new key (challenge + signed
request), the first LIST page, a LIST page at a random cursor, and CONNECT
to a random online peer.  The server's RSS is read from /proc after the run.

    .venv/bin/python bench/registry_scale.py [--sizes 1000,1000000] [--samples 2000]

Prints a markdown table and writes bench/out/registry_scale.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rendezvous.client import RendezvousClient, cursor_after  # noqa: E402
from rendezvous.registry import PeerRecord  # noqa: E402
from rendezvous.sqlite_registry import SqliteRegistry  # noqa: E402


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def seed(path: Path, count: int) -> float:
    started = time.perf_counter()
    now = time.time()
    registry = SqliteRegistry(path)
    await registry.open()

    def records():
        for i in range(1, count + 1):
            yield PeerRecord(
                peer_id=i,
                identity=os.urandom(32),
                nickname=f"peer{i}",
                observed=("127.0.0.1", 20000 + i % 40000),
                local=(),
                first_seen=now,
                last_seen=now,
                expires_at=now + 86400,
                online_since=now,
            )

    await registry.seed(records())
    await registry.close()
    return time.perf_counter() - started


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def wait_ready(port: int, timeout: float) -> float:
    started = time.perf_counter()
    deadline = started + timeout
    while time.perf_counter() < deadline:
        client = await RendezvousClient(("127.0.0.1", port)).open()
        try:
            await asyncio.wait_for(client.binding(), 1.0)
            return time.perf_counter() - started
        except (TimeoutError, Exception):
            await asyncio.sleep(0.5)
        finally:
            client.close()
    raise RuntimeError("server did not come up")


async def measure(port: int, size: int, samples: int) -> dict[str, dict[str, float]]:
    server = ("127.0.0.1", port)
    results: dict[str, list[float]] = {"register": [], "list_first_page": [], "list_random_page": [], "connect": []}
    # REGISTER of brand-new keys: each one a full challenge + signed round trip.
    for _ in range(samples):
        client = await RendezvousClient(server).open()
        started = time.perf_counter()
        await client.register()
        results["register"].append(time.perf_counter() - started)
        client.close()
        # The server allows 200 signed REGISTERs per second per source IP.
        await asyncio.sleep(0.006)
    me = await RendezvousClient(server, nickname="bench").open()
    await me.register()
    rng = random.Random(1)
    for _ in range(samples):
        started = time.perf_counter()
        await me.list_page(limit=20)
        results["list_first_page"].append(time.perf_counter() - started)
        cursor = cursor_after(rng.randint(1, size - 20))
        started = time.perf_counter()
        await me.list_page(limit=20, cursor=cursor)
        results["list_random_page"].append(time.perf_counter() - started)
        target = rng.randint(1, size)
        started = time.perf_counter()
        await me.connect(target)
        results["connect"].append(time.perf_counter() - started)
        # Stay under the server's per-peer request limit (50/s, burst 100; three requests per round) so
        # that what is measured is the work, not a 429.
        await asyncio.sleep(0.07)
    me.close()
    return {
        name: {"p50_us": percentile(v, 0.5) * 1e6, "p99_us": percentile(v, 0.99) * 1e6, "n": len(v)}
        for name, v in results.items()
    }


async def run_size(size: int, samples: int, workdir: Path) -> dict[str, object]:
    db = workdir / f"registry-{size}.sqlite3"
    seed_seconds = await seed(db, size)
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    server = subprocess.Popen(
        [
            "taskset",
            "-c",
            "0",
            sys.executable,
            "-m",
            "rendezvous",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--db",
            str(db),
            "--log-level",
            "warning",
        ],
        env=env,
    )
    try:
        load_seconds = await wait_ready(port, timeout=600)
        latencies = await measure(port, size, samples)
        rss = rss_mib(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=120)
    return {"size": size, "seed_s": seed_seconds, "start_s": load_seconds, "rss_mib": rss, "latency": latencies}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,1000000")
    parser.add_argument("--samples", type=int, default=1000)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    os.sched_setaffinity(0, {1})
    with tempfile.TemporaryDirectory(prefix="peerlink-scale-") as tmp:
        runs = [asyncio.run(run_size(size, args.samples, Path(tmp))) for size in sizes]
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "registry_scale.json").write_text(json.dumps(runs, indent=2))
    print(
        "| keys | seed s | server start s | RSS MiB | "
        + " | ".join(f"{op} p50/p99 us" for op in runs[0]["latency"])
        + " |"
    )
    print("|---" * (4 + len(runs[0]["latency"])) + "|")
    for run in runs:
        cells = [f"{v['p50_us']:.0f} / {v['p99_us']:.0f}" for v in run["latency"].values()]
        print(
            f"| {run['size']:,} | {run['seed_s']:.1f} | {run['start_s']:.1f} | {run['rss_mib']:.0f} | "
            + " | ".join(cells)
            + " |"
        )
    if len(runs) >= 2:
        small, big = runs[0]["latency"], runs[-1]["latency"]
        print()
        for op in small:
            print(
                f"{op}: p99 ratio {runs[-1]['size']:,} vs {runs[0]['size']:,} keys = {big[op]['p99_us'] / small[op]['p99_us']:.2f}x"
            )


if __name__ == "__main__":
    main()
