"""REGISTER, LIST and CONNECT latency with 1,000 vs 1,000,000 registered keys.

For each size: seed a fresh SQLite registry with that many online peers,
start ``python -m rendezvous`` pinned to core 0, wait until it has loaded
them, then measure from core 1 with one request outstanding at a time
(latency, not throughput): a full REGISTER of a new key (challenge + signed
request), the first LIST page, a LIST page at a random cursor, and CONNECT
to a random online peer.  The server's RSS is read from /proc after the run.

With ``--redis``: a fresh ``redis-server`` (pinned to core 0 too) and
``--instances`` rendezvous instances on it (default 3); the peers are seeded
(mass insertion of the keys RedisRegistry writes), spread evenly over the instances as
their homes.  REGISTERs go to the instances in turn (each a Redis round
trip: the id script); LIST and CONNECT are asked of the second instance, so
most CONNECTs target a peer homed elsewhere and their introduction is
forwarded through Redis.  Redis's memory per peer is ``used_memory`` after
seeding minus before, over the peers; RSS is the instances' total.

    .venv/bin/python bench/registry_scale.py [--sizes 1000,1000000] [--samples 2000]
    .venv/bin/python bench/registry_scale.py --redis --instances 3 --sizes 1000,1000000

Prints a markdown table and writes bench/out/registry_scale.json (or
registry_scale_redis.json).
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
from rendezvous.redis_registry import _state  # noqa: E402
from rendezvous.registry import PeerRecord  # noqa: E402
from rendezvous.sqlite_registry import SqliteRegistry  # noqa: E402

# Every seeded peer and every bench client is on 127.0.0.1: lift the per-address cap.
UNCAPPED = ["--max-online-per-ip", "100000000"]


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


def peer_record(peer_id: int, identity: bytes, now: float) -> PeerRecord:
    return PeerRecord(
        peer_id=peer_id,
        identity=identity,
        nickname=f"peer{peer_id}",
        observed=("127.0.0.1", 20000 + peer_id % 40000),
        local=(),
        first_seen=now,
        last_seen=now,
        expires_at=now + 86400,
        online_since=now,
    )


def resp(*args: bytes) -> bytes:
    """One command in the Redis protocol (RESP), for ``redis-cli --pipe``."""
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def seed_redis(port: int, count: int, homes: list[str], prefix: str = "peerlink:") -> float:
    """``count`` online peers in the Redis registry on ``port``, peer i homed
    at ``homes[i % len(homes)]``: the keys RedisRegistry's scripts write
    (rendezvous/redis_registry.py), mass-inserted with ``redis-cli --pipe``
    (the scripts themselves take minutes per million on a busy machine)."""
    started = time.perf_counter()
    now = time.time()
    p = prefix.encode()
    feeder = subprocess.Popen(
        ["redis-cli", "-p", str(port), "--pipe"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    assert feeder.stdin is not None
    chunk: list[bytes] = []
    for peer_id in range(1, count + 1):
        identity = os.urandom(32)
        record = peer_record(peer_id, identity, now)
        n = str(peer_id).encode()
        chunk.append(
            resp(
                b"HSET",
                p + b"peer:" + n,
                *(b"identity", identity, b"state", _state(record).encode()),
                *(b"expires_at", repr(record.expires_at).encode(), b"last_seen", repr(record.last_seen).encode()),
                *(b"home", homes[peer_id % len(homes)].encode()),
            )
            + resp(b"HSET", p + b"ids", identity, n)
            + resp(b"ZADD", p + b"online", n, n)
            + resp(b"ZADD", p + b"seen", repr(record.last_seen).encode(), n)
        )
        if len(chunk) >= 10000:
            feeder.stdin.write(b"".join(chunk))
            chunk = []
    chunk.append(resp(b"SET", p + b"next_id", str(count).encode()))
    feeder.stdin.write(b"".join(chunk))
    feeder.stdin.close()
    if feeder.wait() != 0:
        raise RuntimeError("redis-cli --pipe failed")
    return time.perf_counter() - started


def redis_used_memory(port: int) -> int:
    out = subprocess.run(
        ["redis-cli", "-p", str(port), "INFO", "memory"], capture_output=True, text=True, check=True
    ).stdout
    for line in out.splitlines():
        if line.startswith("used_memory:"):
            return int(line.split(":")[1])
    raise RuntimeError("no used_memory in INFO memory")


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


async def measure(ports: list[int], size: int, samples: int) -> dict[str, dict[str, float]]:
    # LIST and CONNECT on the second instance when there are several.
    server = ("127.0.0.1", ports[1 % len(ports)])
    results: dict[str, list[float]] = {"register": [], "list_first_page": [], "list_random_page": [], "connect": []}
    # REGISTER of brand-new keys: each one a full challenge + signed round trip.
    for n in range(samples):
        client = await RendezvousClient(("127.0.0.1", ports[n % len(ports)])).open()
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
            *UNCAPPED,
        ],
        env=env,
    )
    try:
        load_seconds = await wait_ready(port, timeout=600)
        latencies = await measure([port], size, samples)
        rss = rss_mib(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=120)
    return {"size": size, "seed_s": seed_seconds, "start_s": load_seconds, "rss_mib": rss, "latency": latencies}


async def wait_loaded(port: int, size: int, timeout: float) -> None:
    """Until the instance on ``port`` lists the last seeded peer (its start-up load is done)."""
    deadline = time.perf_counter() + timeout
    client = await RendezvousClient(("127.0.0.1", port), nickname="probe").open()
    try:
        await client.register()
        while time.perf_counter() < deadline:
            entries, _cursor = await client.list_page(limit=20, cursor=cursor_after(size - 1))
            if any(entry.peer_id == size for entry in entries):
                return
            await asyncio.sleep(1.0)
    finally:
        client.close()
    raise RuntimeError(f"instance on {port} did not load {size} peers")


async def run_size_redis(size: int, samples: int, instances: int, workdir: Path) -> dict[str, object]:
    """One fresh redis-server and ``instances`` rendezvous instances on it."""
    redis_dir = workdir / f"redis-{size}"
    redis_dir.mkdir()
    redis, redis_port = start_redis(redis_dir, cores="0")
    servers: list[subprocess.Popen[bytes]] = []
    try:
        url = f"redis://127.0.0.1:{redis_port}/0"
        before = redis_used_memory(redis_port)
        ports = [free_port() for _ in range(instances)]
        homes = [f"{socket.gethostname()}:{port}" for port in ports]
        seed_seconds = seed_redis(redis_port, size, homes)
        redis_bytes = redis_used_memory(redis_port) - before
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        started = time.perf_counter()
        for port in ports:
            servers.append(
                subprocess.Popen(
                    # Not pinned: three loads of the whole registry at once want both cores.
                    [sys.executable, "-m", "rendezvous", "--host", "127.0.0.1"]
                    + ["--port", str(port), "--registry", url, "--log-level", "warning", *UNCAPPED],
                    env=env,
                )
            )
        for port in ports:
            # An instance answers nothing until its start-up load is done: minutes per million on a busy machine.
            await wait_ready(port, timeout=3600)
            await wait_loaded(port, size, timeout=3600)
        load_seconds = time.perf_counter() - started
        latencies = await measure(ports, size, samples)
        rss = sum(rss_mib(server.pid) for server in servers)
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(timeout=120)
        redis.kill()
        redis.wait()
    return {
        "size": size,
        "instances": instances,
        "seed_s": seed_seconds,
        "start_s": load_seconds,
        "rss_mib": rss,
        "redis_bytes_per_peer": redis_bytes / size,
        "latency": latencies,
    }


def start_redis(workdir: Path, cores: str | None) -> tuple[subprocess.Popen[bytes], int]:
    """A fresh redis-server without persistence (pinned to ``cores`` if given), once it answers PING."""
    port = free_tcp_port()
    pin = ["taskset", "-c", cores] if cores else []
    redis = subprocess.Popen(
        [*pin, "redis-server", "--port", str(port), "--bind", "127.0.0.1"]
        + ["--save", "", "--appendonly", "no", "--dir", str(workdir), "--loglevel", "warning"],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.perf_counter() + 20
    while subprocess.run(["redis-cli", "-p", str(port), "PING"], capture_output=True).stdout != b"PONG\n":
        if time.perf_counter() > deadline or redis.poll() is not None:
            redis.kill()
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)
    return redis, port


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,1000000")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--redis", action="store_true", help="instances on one redis-server instead of SQLite")
    parser.add_argument("--instances", type=int, default=3, help="with --redis: how many rendezvous instances")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    os.sched_setaffinity(0, {1})
    with tempfile.TemporaryDirectory(prefix="peerlink-scale-") as tmp:
        if args.redis:
            runs = [asyncio.run(run_size_redis(size, args.samples, args.instances, Path(tmp))) for size in sizes]
        else:
            runs = [asyncio.run(run_size(size, args.samples, Path(tmp))) for size in sizes]
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / ("registry_scale_redis.json" if args.redis else "registry_scale.json")).write_text(
        json.dumps(runs, indent=2)
    )
    redis_column = " Redis bytes/peer |" if args.redis else ""
    print(
        "| keys | seed s | server start s | RSS MiB |"
        + redis_column
        + " "
        + " | ".join(f"{op} p50/p99 us" for op in runs[0]["latency"])
        + " |"
    )
    print("|---" * (4 + bool(args.redis) + len(runs[0]["latency"])) + "|")
    for run in runs:
        cells = [f"{v['p50_us']:.0f} / {v['p99_us']:.0f}" for v in run["latency"].values()]
        redis_cell = f" {run['redis_bytes_per_peer']:.0f} |" if args.redis else ""
        print(
            f"| {run['size']:,} | {run['seed_s']:.1f} | {run['start_s']:.1f} | {run['rss_mib']:.0f} |"
            + redis_cell
            + " "
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
