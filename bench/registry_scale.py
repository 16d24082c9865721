"""REGISTER, LIST and CONNECT latency with 1,000 vs 1,000,000 registered keys.

For each size: seed a fresh SQLite registry with that many online peers,
start ``python -m rendezvous`` pinned to core 0, wait until it has loaded
them, then measure from core 1 with one request outstanding at a time
(latency, not throughput): a full REGISTER of a new key (challenge + signed
request), the first LIST page, a LIST page at a random cursor, and CONNECT
to a random online peer.  The server's RSS is read from /proc after the run.

With ``--redis``: a fresh ``redis-server`` (pinned to core 0) and
``--instances`` rendezvous instances on it (default 3, on cores 0 and 1);
the peers are seeded (mass insertion of the keys RedisRegistry writes),
spread evenly over the instances as their homes.  REGISTERs go to the
instances in turn (each a Redis round trip: the id script); LIST and CONNECT
are asked of the second instance, so most CONNECTs target a peer homed
elsewhere and their introduction is forwarded through Redis.  Redis's memory
per peer is ``used_memory`` after seeding minus before, over the peers; RSS
is the instances' total.

With ``--redis --interleave``: every size gets its own world (its own
redis-server and instances, pinned alike), all set up side by side before
anything is measured (the biggest first, so its start-up is timed alone),
then measured together: sample i of each method goes to every world in turn,
the first of them alternating, so that the neighbours' load on this shared
machine falls on all sizes alike and the p99 ratio compares like with like.
Without it, sizes are measured one after the other (each world torn down
before the next is set up).

    .venv/bin/python bench/registry_scale.py [--sizes 1000,1000000] [--samples 2000]
    .venv/bin/python bench/registry_scale.py --redis --instances 3 --sizes 1000,1000000 --interleave

Prints a markdown table and writes bench/out/registry_scale.json (or
registry_scale_redis.json, registry_scale_redis_interleaved.json), with the
UTC times and the load average before and after.  Every child process
(redis-server, instances) is ended on the way out, on Ctrl-C and SIGTERM too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rendezvous.client import RendezvousClient, RendezvousError, cursor_after  # noqa: E402
from rendezvous.redis_registry import _state  # noqa: E402
from rendezvous.registry import PeerRecord  # noqa: E402
from rendezvous.sqlite_registry import SqliteRegistry  # noqa: E402

# Every seeded peer and every bench client is on 127.0.0.1: lift the per-address cap.
UNCAPPED = ["--max-online-per-ip", "100000000"]
# Where each process runs, the same for every world: Redis on core 0, the
# instances on both cores (three loads of a whole registry at once want
# both), the load generator (this process) on core 1.
REDIS_CORES = "0"
INSTANCE_CORES = "0,1"
CLIENT_CORE = 1


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


@dataclass
class World:
    """One registry of ``size`` online peers and the rendezvous instances serving it."""

    size: int
    ports: list[int]
    servers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    seed_s: float = 0.0
    start_s: float = 0.0
    redis_bytes: int | None = None


class Children:
    """Every child process the bench starts, killed on the way out whatever the way
    (an error, Ctrl-C, SIGTERM): no redis-server or instance outlives a run."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []
        self._handlers: dict[int, Any] = {}

    def start(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, **kwargs)
        self._procs.append(proc)
        return proc

    def adopt(self, proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        self._procs.append(proc)
        return proc

    def __enter__(self) -> Children:
        # Ctrl-C and SIGTERM raise KeyboardInterrupt wherever the program is, even
        # in synchronous code inside asyncio.run (whose own SIGINT handler only
        # cancels the main task at its next await, which a client's retry loop
        # can swallow), and so unwind through __exit__.
        self._handlers = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._handlers.items():
            signal.signal(sig, handler)
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 60
        for proc in self._procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def instance_argv(port: int, registry: list[str], cores: str = INSTANCE_CORES) -> list[str]:
    return [
        *pin(cores),
        sys.executable,
        "-m",
        "rendezvous",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *registry,
        "--log-level",
        "warning",
        *UNCAPPED,
    ]


def pin(cores: str) -> list[str]:
    return ["taskset", "-c", cores]


async def measure(worlds: list[World], samples: int) -> list[dict[str, Any]]:
    """Latencies of each world, one request in flight at a time.  With several
    worlds, sample i of each method goes to every world in turn (which one first
    alternates), so that whatever load the machine has hits them alike."""
    methods = ("register", "list_first_page", "list_random_page", "connect")
    results: list[dict[str, list[float]]] = [{name: [] for name in methods} for _ in worlds]
    # Requests that failed (timed out on a starved machine, or refused): counted, not timed.
    errors: list[Counter[str]] = [Counter() for _ in worlds]

    def turns(n: int) -> list[int]:
        order = list(range(len(worlds)))
        return order if n % 2 == 0 else order[::-1]

    async def timed(w: int, name: str, request: Awaitable[object]) -> None:
        started = time.perf_counter()
        try:
            await request
        except (RendezvousError, TimeoutError) as exc:
            errors[w][f"{name}: {exc}"] += 1
            return
        results[w][name].append(time.perf_counter() - started)

    # REGISTER of brand-new keys: each one a full challenge + signed round trip,
    # to the instances in turn.
    for n in range(samples):
        for w in turns(n):
            ports = worlds[w].ports
            client = await RendezvousClient(("127.0.0.1", ports[n % len(ports)])).open()
            await timed(w, "register", client.register())
            client.close()
        # The server allows 200 signed REGISTERs per second per source IP.
        await asyncio.sleep(0.006)
    # LIST and CONNECT on the second instance when there are several, so most
    # CONNECTs target a peer homed elsewhere.
    mes = []
    for world in worlds:
        me = await RendezvousClient(("127.0.0.1", world.ports[1 % len(world.ports)]), nickname="bench").open()
        # The longest lease: a thousand rounds on a busy machine outlast the default minute.
        await me.register(ttl=3600)
        mes.append(me)
    rngs = [random.Random(1) for _ in worlds]
    try:
        for n in range(samples):
            cursors = [cursor_after(rngs[w].randint(1, world.size - 20)) for w, world in enumerate(worlds)]
            targets = [rngs[w].randint(1, world.size) for w, world in enumerate(worlds)]
            for w in turns(n):
                await timed(w, "list_first_page", mes[w].list_page(limit=20))
            for w in turns(n):
                await timed(w, "list_random_page", mes[w].list_page(limit=20, cursor=cursors[w]))
            for w in turns(n):
                await timed(w, "connect", mes[w].connect(targets[w]))
            # Stay under the server's per-peer request limit (50/s, burst 100; three requests per round) so
            # that what is measured is the work, not a 429.
            await asyncio.sleep(0.07)
    finally:
        for me in mes:
            me.close()
    return [
        {
            **{
                name: {"p50_us": percentile(v, 0.5) * 1e6, "p99_us": percentile(v, 0.99) * 1e6, "n": len(v)}
                for name, v in result.items()
            },
            **({"errors": dict(errors[w])} if errors[w] else {}),
        }
        for w, result in enumerate(results)
    ]


async def run_size(size: int, samples: int, workdir: Path, children: Children) -> dict[str, object]:
    """SQLite: one server on a fresh registry file of ``size`` online peers."""
    db = workdir / f"registry-{size}.sqlite3"
    seed_seconds = await seed(db, size)
    world = World(size, [free_port()], seed_s=seed_seconds)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    server = children.start(instance_argv(world.ports[0], ["--db", str(db)], cores="0"), env=env)
    try:
        world.start_s = await wait_ready(world.ports[0], timeout=600)
        (latencies,) = await measure([world], samples)
        rss = rss_mib(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=120)
    return {"size": size, "seed_s": seed_seconds, "start_s": world.start_s, "rss_mib": rss, "latency": latencies}


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


async def open_redis_world(size: int, instances: int, workdir: Path, children: Children) -> World:
    """A fresh redis-server seeded with ``size`` online peers, and ``instances``
    rendezvous instances on it, once every one of them has loaded them all."""
    redis_dir = workdir / f"redis-{size}"
    redis_dir.mkdir()
    redis, redis_port = start_redis(redis_dir, cores=REDIS_CORES)
    children.adopt(redis)
    url = f"redis://127.0.0.1:{redis_port}/0"
    before = redis_used_memory(redis_port)
    world = World(size, [free_port() for _ in range(instances)])
    homes = [f"{socket.gethostname()}:{port}" for port in world.ports]
    world.seed_s = seed_redis(redis_port, size, homes)
    world.redis_bytes = redis_used_memory(redis_port) - before
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    started = time.perf_counter()
    for port in world.ports:
        world.servers.append(children.start(instance_argv(port, ["--registry", url]), env=env))
    for port in world.ports:
        # An instance answers nothing until its start-up load is done: minutes per million on a busy machine.
        await wait_ready(port, timeout=3600)
        await wait_loaded(port, size, timeout=3600)
    world.start_s = time.perf_counter() - started
    return world


def redis_result(world: World, latencies: dict[str, Any], instances: int) -> dict[str, object]:
    assert world.redis_bytes is not None
    return {
        "size": world.size,
        "instances": instances,
        "seed_s": world.seed_s,
        "start_s": world.start_s,
        "rss_mib": sum(rss_mib(server.pid) for server in world.servers),
        "redis_bytes_per_peer": world.redis_bytes / world.size,
        "latency": latencies,
    }


async def run_sizes_redis(
    sizes: list[int], samples: int, instances: int, workdir: Path, children: Children, *, interleave: bool
) -> list[dict[str, object]]:
    """Sequential: one world at a time, measured alone, torn down before the next.
    Interleaved: every world set up first (the biggest first, so its start-up is
    timed without the others loading), then measured together, sample by sample."""
    if not interleave:
        runs = []
        for size in sizes:
            with Children() as world_children:
                world = await open_redis_world(size, instances, workdir, world_children)
                (latencies,) = await measure([world], samples)
                runs.append(redis_result(world, latencies, instances))
        return runs
    worlds: dict[int, World] = {}
    for size in sorted(sizes, reverse=True):
        worlds[size] = await open_redis_world(size, instances, workdir, children)
        print(
            f"{size:,} peers: seeded in {worlds[size].seed_s:.1f} s, loaded in {worlds[size].start_s:.1f} s", flush=True
        )
    ordered = [worlds[size] for size in sizes]
    latencies = await measure(ordered, samples)
    return [redis_result(world, lat, instances) for world, lat in zip(ordered, latencies, strict=True)]


def start_redis(workdir: Path, cores: str | None) -> tuple[subprocess.Popen[bytes], int]:
    """A fresh redis-server without persistence (pinned to ``cores`` if given), once it answers PING."""
    port = free_tcp_port()
    redis = subprocess.Popen(
        [*(pin(cores) if cores else []), "redis-server", "--port", str(port), "--bind", "127.0.0.1"]
        + ["--save", "", "--appendonly", "no", "--dir", str(workdir), "--loglevel", "warning"],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.perf_counter() + 20
    while subprocess.run(["redis-cli", "-p", str(port), "PING"], capture_output=True).stdout != b"PONG\n":
        if time.perf_counter() > deadline or redis.poll() is not None:
            redis.kill()
            redis.wait()
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
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="with --redis: set every size up side by side and alternate their samples",
    )
    args = parser.parse_args()
    if args.interleave and not args.redis:
        parser.error("--interleave needs --redis")
    sizes = [int(s) for s in args.sizes.split(",")]
    os.sched_setaffinity(0, {CLIENT_CORE})
    load_before = os.getloadavg()
    began = time.strftime("%H:%M", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="peerlink-scale-") as tmp, Children() as children:
        if args.redis:
            runs = asyncio.run(
                run_sizes_redis(sizes, args.samples, args.instances, Path(tmp), children, interleave=args.interleave)
            )
        else:
            runs = [asyncio.run(run_size(size, args.samples, Path(tmp), children)) for size in sizes]
    load_after = os.getloadavg()
    ended = time.strftime("%H:%M", time.gmtime())
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    name = "registry_scale_redis_interleaved.json" if args.interleave else None
    name = name or ("registry_scale_redis.json" if args.redis else "registry_scale.json")
    (out / name).write_text(
        json.dumps({"utc": [began, ended], "loadavg": [load_before, load_after], "runs": runs}, indent=2)
    )
    print(
        f"{began}-{ended} UTC; load average (1, 5, 15 min) before "
        + ", ".join(f"{v:.1f}" for v in load_before)
        + "; after "
        + ", ".join(f"{v:.1f}" for v in load_after)
    )
    print_table(runs, redis=args.redis)


def print_table(runs: list[dict[str, Any]], *, redis: bool) -> None:
    ops = [op for op in runs[0]["latency"] if op != "errors"]
    redis_column = " Redis bytes/peer |" if redis else ""
    print(
        "| keys | seed s | server start s | RSS MiB |"
        + redis_column
        + " "
        + " | ".join(f"{op} p50/p99 us" for op in ops)
        + " |"
    )
    print("|---" * (4 + bool(redis) + len(ops)) + "|")
    for run in runs:
        cells = [f"{run['latency'][op]['p50_us']:.0f} / {run['latency'][op]['p99_us']:.0f}" for op in ops]
        redis_cell = f" {run['redis_bytes_per_peer']:.0f} |" if redis else ""
        print(
            f"| {run['size']:,} | {run['seed_s']:.1f} | {run['start_s']:.1f} | {run['rss_mib']:.0f} |"
            + redis_cell
            + " "
            + " | ".join(cells)
            + " |"
        )
    for run in runs:
        for error, count in run["latency"].get("errors", {}).items():
            print(f"- {run['size']:,} keys: {count} failed, not timed: {error}")
    if len(runs) >= 2:
        small, big = runs[0]["latency"], runs[-1]["latency"]
        print()
        for op in ops:
            ratio = big[op]["p99_us"] / small[op]["p99_us"]
            print(
                f"- {op}: p99 ratio {runs[-1]['size']:,} vs {runs[0]['size']:,} keys = {ratio:.2f}x "
                + ("(within 2x)" if ratio <= 2.0 else "(NOT within 2x)")
            )


if __name__ == "__main__":
    main()
