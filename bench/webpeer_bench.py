"""Benchmark of the webpeer message path, with the bare aioquic floor, in one run.

    .venv/bin/python bench/webpeer_bench.py [--json PATH] [--profile PY_SPY] [--only PART ...]

Parts, in the order they run (bench/WEBPEER.md has the method and results):

1. ``floor``: bare aioquic, two processes pinned to different cores, one QUIC
   connection, one stream, small length-prefixed messages echoed back, closed
   loop with W messages outstanding; round trips/s and latency, on the
   default asyncio loop and on uvloop.  The echo client and server are this
   file run as ``_quic_server`` / ``_quic_client``.
2. ``latency``: one rendezvous and two webpeers (alice on one core, bob on
   the other).  500 messages one at a time: POST /api/messages on alice ->
   the ``message`` event on bob's websocket (and -> ``delivered`` on
   alice's websocket).
3. ``throughput``: ``send`` frames on alice's websocket with up to W
   (default 200) messages not yet reported ``delivered``; delivered
   messages/s over the measured window.  Afterwards every message must be
   ``delivered`` in alice's SQLite file and ``received`` in bob's.
4. ``connect``: N fresh webpeers; for each, POST on alice or bob ->
   ``connection`` event with state ``direct`` on the sender's websocket
   (CONNECT through the server + connectivity checks + QUIC handshake +
   mutual authentication), and -> ``delivered``.  ``cold``: each fresh
   process's first connection; ``warm``: its second, from the other sender.

CPU use of every process over each measured window comes from
/proc/PID/task/*/schedstat: on-CPU seconds, and seconds spent runnable but
waiting for the core (another tenant of this shared machine).

``--profile PY_SPY`` also runs ``py-spy record`` on alice and bob during the
throughput window and writes flame graphs and the top functions next to the
JSON (the sampling slows the peers: numbers from a profiled run are not the
results).  Everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import json
import math
import os
import platform
import secrets
import shlex
import signal
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
HOST = "127.0.0.1"
LENGTH = struct.Struct("!I")
PAYLOAD = struct.Struct("!Qd16x")  # sequence, send time, padding: 32 bytes, 36 on the wire
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0

# The targets (issue 3, "Done means", bench/).
TARGET_LATENCY_P50_MS = 3.0
TARGET_THROUGHPUT = 10_000.0
TARGET_FLOOR_RATIO = 0.3
TARGET_OFFLINE_MS = 1000.0  # issue 14: EXIT is seen offline within a second
TARGET_CONNECT_MS = 30.0


def log(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary_ms(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "count": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p90_ms": round(percentile(ms, 90), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(max(ms), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
    }


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def run_loop(main: Any, loop_name: str) -> Any:
    if loop_name == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


# ---- CPU accounting --------------------------------------------------------------


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(on-CPU, runnable-but-waiting) seconds of all threads of ``pid`` so far."""
    run_ns = wait_ns = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0.0, 0.0
    for task in tasks:
        try:
            fields = (task / "schedstat").read_text().split()
        except OSError:
            continue
        run_ns += int(fields[0])
        wait_ns += int(fields[1])
    return run_ns / 1e9, wait_ns / 1e9


class CpuMeter:
    """CPU share of named processes between :meth:`start` and :meth:`stop`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._begin: dict[str, tuple[float, float]] = {}
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._begin = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, dict[str, float]]:
        elapsed = time.monotonic() - self._t0
        out = {}
        for name, pid in self.pids.items():
            run, wait = cpu_seconds(pid)
            run0, wait0 = self._begin[name]
            out[name] = {
                "cpu_pct": round(100 * (run - run0) / elapsed, 1),
                "waited_pct": round(100 * (wait - wait0) / elapsed, 1),
                "cpu_s": round(run - run0, 4),
            }
        return out


def pin(pid: int, cpu: int | None) -> None:
    if cpu is not None and cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(pid, {cpu})


# ---- 1. the bare aioquic floor -------------------------------------------------------


def _self_signed() -> tuple[Any, Any]:
    """A throwaway P-256 key and self-signed certificate for 127.0.0.1."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate, key


async def quic_server(port_file: Path) -> None:
    """Echo every byte of every stream back on the same stream, until SIGTERM."""
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.asyncio.server import serve
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import QuicEvent, StreamDataReceived

    class Echo(QuicConnectionProtocol):
        def quic_event_received(self, event: QuicEvent) -> None:
            # aioquic's adapter transmits after every datagram it processes.
            if isinstance(event, StreamDataReceived) and event.data:
                self._quic.send_stream_data(event.stream_id, event.data)

    configuration = QuicConfiguration(is_client=False, alpn_protocols=["bench-echo"], idle_timeout=60.0)
    configuration.certificate, configuration.private_key = _self_signed()
    server = await serve(HOST, 0, configuration=configuration, create_protocol=Echo)
    transport = server._transport
    assert transport is not None
    partial = port_file.with_suffix(".partial")
    partial.write_text(str(transport.get_extra_info("sockname")[1]))
    partial.rename(port_file)  # the parent never reads half a number
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()


async def quic_client(port: int, window: int, warmup: float, seconds: float, server_pid: int) -> dict[str, Any]:
    """Closed loop on one stream: ``window`` length-prefixed 32-byte messages
    outstanding; each echo that comes back sends the next one."""
    import ssl

    from aioquic.asyncio.client import connect
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import QuicEvent, StreamDataReceived

    clock = time.perf_counter

    class Client(QuicConnectionProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.buffer = bytearray()
            self.sent_at: collections.deque[float] = collections.deque()
            self.sequence = 0
            self.running = True
            self.measuring = False
            self.done = 0
            self.latencies: list[float] = []
            self.stream_id = 0

        def send_one(self) -> None:
            now = clock()
            self.sequence += 1
            self.sent_at.append(now)
            self._quic.send_stream_data(self.stream_id, LENGTH.pack(PAYLOAD.size) + PAYLOAD.pack(self.sequence, now))

        def quic_event_received(self, event: QuicEvent) -> None:
            if not isinstance(event, StreamDataReceived):
                return
            self.buffer += event.data
            size = LENGTH.size + PAYLOAD.size
            while len(self.buffer) >= size:
                (length,) = LENGTH.unpack_from(self.buffer)
                assert length == PAYLOAD.size, length
                del self.buffer[:size]
                latency = clock() - self.sent_at.popleft()
                if self.measuring:
                    self.done += 1
                    self.latencies.append(latency)
                if self.running:
                    self.send_one()

    configuration = QuicConfiguration(is_client=True, alpn_protocols=["bench-echo"], idle_timeout=60.0)
    configuration.verify_mode = ssl.CERT_NONE
    async with connect(HOST, port, configuration=configuration, create_protocol=Client) as client:
        assert isinstance(client, Client)
        client.stream_id = client._quic.get_next_available_stream_id()
        for _ in range(window):
            client.send_one()
        client.transmit()
        await asyncio.sleep(warmup)
        meter = CpuMeter({"server": server_pid, "client": os.getpid()})
        meter.start()
        client.measuring = True
        t0 = clock()
        await asyncio.sleep(seconds)
        client.measuring = False
        elapsed = clock() - t0
        cpu = meter.stop()
        client.running = False
        await asyncio.sleep(0.05)
    stats = summary_ms(client.latencies)
    return {"round_trips_per_s": round(client.done / elapsed), **stats, "cpu": cpu}


def measure_floor(loop_name: str, window: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Echo server on one core, client on the other, as separate processes."""
    port_file = workdir / "quic-port"
    port_file.unlink(missing_ok=True)  # left by the previous row
    me = [sys.executable, str(Path(__file__).resolve())]
    server = subprocess.Popen(me + ["_quic_server", "--loop", loop_name, "--port-file", str(port_file)])
    pin(server.pid, args.alice_cpu)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not port_file.exists():
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the QUIC echo server did not start")
            time.sleep(0.02)
        port = int(port_file.read_text())
        client = subprocess.Popen(
            me
            + [
                "_quic_client",
                "--loop",
                loop_name,
                "--port",
                str(port),
                "--window",
                str(window),
                "--warmup",
                str(args.floor_warmup),
                "--seconds",
                str(args.floor_seconds),
                "--server-pid",
                str(server.pid),
            ],
            stdout=subprocess.PIPE,
        )
        pin(client.pid, args.bob_cpu)
        try:
            out, _ = client.communicate(timeout=START_TIMEOUT + args.floor_warmup + args.floor_seconds)
        except subprocess.TimeoutExpired:
            client.kill()
            client.wait()
            raise
        if client.returncode != 0:
            raise RuntimeError(f"the QUIC echo client failed ({client.returncode})")
        result: dict[str, Any] = json.loads(out)
        return result
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            server.kill()


# ---- the webpeer processes ----------------------------------------------------------


@dataclass
class Proc:
    name: str
    process: asyncio.subprocess.Process
    port: int = 0
    token: str = ""
    peer_id: int = 0
    data_dir: Path | None = None

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Origin": self.base}


@dataclass
class Network:
    workdir: Path
    server_port: int
    server: Proc
    peers: list[Proc] = field(default_factory=list)

    async def stop(self, procs: list[Proc] | None = None) -> None:
        procs = list(self.peers if procs is None else procs)
        for proc in procs:
            if proc.process.returncode is None:
                proc.process.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                proc.process.kill()
                await proc.process.wait()
        for proc in procs:
            if proc in self.peers:
                self.peers.remove(proc)


async def _spawn(name: str, args: list[str], workdir: Path, stdout: bool) -> asyncio.subprocess.Process:
    env = dict(os.environ, PYTHONPATH=str(REPO_DIR))
    log_file = open(workdir / f"{name}.log", "wb")
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE if stdout else log_file,
            stderr=log_file,
        )
    finally:
        log_file.close()


async def start_network(workdir: Path) -> Network:
    port = free_udp_port()
    process = await _spawn(
        "rendezvous",
        [
            "-m",
            "rendezvous",
            "--host",
            HOST,
            "--port",
            str(port),
            "--db",
            str(workdir / "rendezvous.sqlite3"),
            "--log-level",
            "warning",
        ],
        workdir,
        stdout=False,
    )
    return Network(workdir, port, Proc("rendezvous", process))


async def start_peer(network: Network, name: str, cpu: int | None) -> Proc:
    data_dir = network.workdir / name
    process = await _spawn(
        name,
        [
            "-m",
            "webpeer",
            "--server",
            f"{HOST}:{network.server_port}",
            "--http-port",
            "0",
            "--name",
            name,
            "--data-dir",
            str(data_dir),
            "--no-browser",
            "--udp-host",
            HOST,
            "--log-level",
            "warning",
            # The throughput part sends ~18,000 messages a second to one peer:
            # far past the default per-sender rate (webpeer/quota.py); this is its maximum.
            "--peer-rate",
            "1000000000",
        ],
        network.workdir,
        stdout=True,
    )
    pin(process.pid, cpu)
    proc = Proc(name, process, data_dir=data_dir)
    network.peers.append(proc)
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT)).decode().strip()
    url = line.removeprefix("Open ")
    if not url.startswith(f"http://{HOST}:"):
        raise RuntimeError(f"{name} did not start: {line!r} (see {network.workdir / (name + '.log')})")
    address, _, token = url.partition("/?token=")
    proc.port, proc.token = int(address.rsplit(":", 1)[1]), token
    return proc


async def wait_registered(session: Any, proc: Proc) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        async with session.get(proc.base + "/api/me", headers=proc.headers) as response:
            me = await response.json()
        if me.get("id"):
            proc.peer_id = int(me["id"])
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{proc.name} did not register")


async def wait_sees_online(session: Any, proc: Proc, ids: set[int], timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with session.get(proc.base + "/api/peers", headers=proc.headers) as response:
            peers = await response.json()
        if ids <= {p["id"] for p in peers if p["online"] and p["fingerprint"]}:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not see peers {sorted(ids)} online")


class EventSocket:
    """A peer's websocket: every event (those of a ``batch`` frame one by
    one) goes to the current ``handler``, parsed."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.handler: Callable[[dict[str, Any], float], None] = lambda event, now: None
        self.resyncs = 0
        self.errors: list[str] = []
        self._task = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, session: Any, proc: Proc) -> EventSocket:
        ws = await session.ws_connect(
            f"ws://{HOST}:{proc.port}/ws?token={proc.token}",
            headers={"Origin": proc.base},
            max_msg_size=0,
            autoping=True,
        )
        hello = json.loads((await ws.receive()).data)
        assert hello["type"] == "hello", hello
        return cls(ws)

    async def _read(self) -> None:
        import aiohttp

        clock = time.perf_counter
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            now = clock()
            frame = json.loads(message.data)
            for event in frame["events"] if frame["type"] == "batch" else (frame,):
                if event["type"] == "resync":
                    self.resyncs += 1
                elif event["type"] == "error":
                    self.errors.append(json.dumps(event)[:300])
                self.handler(event, now)

    async def close(self) -> None:
        await self.ws.close()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


# ---- 2. latency ---------------------------------------------------------------------


async def measure_latency(
    session: Any, alice: Proc, bob: Proc, ws_alice: EventSocket, ws_bob: EventSocket, count: int
) -> dict[str, Any]:
    """One message at a time: POST on alice -> ``message`` on bob's websocket,
    and -> ``delivered`` on alice's; the next goes when both are seen."""
    loop = asyncio.get_running_loop()
    arrived: dict[str, asyncio.Future[float]] = {}
    delivered_at: dict[str, float] = {}
    delivered_waiters: dict[str, asyncio.Future[float]] = {}

    def on_bob(event: dict[str, Any], now: float) -> None:
        if event["type"] == "message":
            text = event["message"]["text"]
            future = arrived.get(text)
            if future is not None and not future.done():
                future.set_result(now)

    def on_alice(event: dict[str, Any], now: float) -> None:
        if event["type"] == "status":
            if event["status"] == "delivered":
                delivered_at[event["id"]] = now
                waiter = delivered_waiters.pop(event["id"], None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(now)

    ws_bob.handler, ws_alice.handler = on_bob, on_alice
    to_bob, to_delivered = [], []
    tag = secrets.token_hex(4)
    clock = time.perf_counter
    for i in range(count):
        text = f"latency {tag} {i}"
        arrived[text] = loop.create_future()
        t0 = clock()
        async with session.post(
            alice.base + "/api/messages", json={"to": bob.peer_id, "text": text}, headers=alice.headers
        ) as response:
            assert response.status == 201, await response.text()
            message_id = (await response.json())["id"]
        t_bob = await asyncio.wait_for(arrived[text], 5)
        del arrived[text]
        if message_id in delivered_at:
            t_done = delivered_at.pop(message_id)
        else:
            delivered_waiters[message_id] = loop.create_future()
            t_done = await asyncio.wait_for(delivered_waiters[message_id], 5)
            delivered_at.pop(message_id, None)
        to_bob.append(t_bob - t0)
        to_delivered.append(t_done - t0)
    return {"post_to_bob_event": summary_ms(to_bob), "post_to_delivered": summary_ms(to_delivered)}


# ---- 3. throughput ------------------------------------------------------------------


async def measure_throughput(
    ws_alice: EventSocket,
    bob: Proc,
    window: int,
    warmup: float,
    seconds: float,
    meter: CpuMeter,
    on_window: Callable[[bool], None] | None = None,
) -> dict[str, Any]:
    """``send`` frames on alice's websocket, at most ``window`` not yet
    ``delivered``; counts ``delivered`` status events in the measured window."""
    state = {"delivered": 0, "in_window": 0, "measuring": False}
    per_second: collections.Counter[int] = collections.Counter()
    more = asyncio.Event()
    clock = time.perf_counter
    t_start = clock()

    def on_alice(event: dict[str, Any], now: float) -> None:
        if event["type"] == "status" and event["status"] == "delivered":
            state["delivered"] += 1
            per_second[int(now - t_start)] += 1
            if state["measuring"]:
                state["in_window"] += 1
            more.set()

    ws_alice.handler = on_alice
    ws = ws_alice.ws
    tag = secrets.token_hex(4)
    sent = 0
    t_measure, t_end = t_start + warmup, t_start + warmup + seconds
    t0 = t1 = 0.0
    while True:
        now = clock()
        if not state["measuring"] and now >= t_measure and t0 == 0.0:
            state["measuring"], t0 = True, now
            meter.start()
            if on_window:
                on_window(True)
        if now >= t_end:
            state["measuring"], t1 = False, now
            cpu = meter.stop()
            if on_window:
                on_window(False)
            break
        while sent - state["delivered"] < window:
            sent += 1
            await ws.send_str(
                json.dumps({"type": "send", "to": bob.peer_id, "text": f"tp {tag} {sent}", "client_id": str(sent)})
            )
        more.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(more.wait(), 0.25)
    # Every message sent must end up delivered.
    deadline = clock() + 10
    while state["delivered"] < sent and clock() < deadline:
        more.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(more.wait(), 0.5)
    return {
        "window": window,
        "measured_s": round(t1 - t0, 3),
        "delivered_in_window": state["in_window"],
        "delivered_per_s": round(state["in_window"] / (t1 - t0)),
        "sent_total": sent,
        "delivered_total": state["delivered"],
        "delivered_each_second": [per_second[i] for i in range(int(warmup + seconds) + 1)],
        "resync_events": ws_alice.resyncs,
        "error_replies": len(ws_alice.errors),
        "cpu": cpu,
        "tag": tag,
    }


def check_persisted(alice: Proc, bob: Proc, tag: str) -> dict[str, Any]:
    """Counts of the throughput messages by status in both SQLite files."""
    out = {}
    for proc in (alice, bob):
        assert proc.data_dir is not None
        db = sqlite3.connect(f"file:{proc.data_dir / 'history.sqlite3'}?mode=ro", uri=True)
        try:
            rows = db.execute(
                "SELECT status, count(*) FROM messages WHERE text LIKE ? GROUP BY status", (f"tp {tag} %",)
            ).fetchall()
        finally:
            db.close()
        out[proc.name] = dict(rows)
    return out


# ---- 4. connect ---------------------------------------------------------------------


class ConnectWatch:
    """Times from a peer's websocket: CONNECT answered, link ``direct``, message ``delivered``."""

    def __init__(self, ws: EventSocket) -> None:
        self.seen: dict[tuple[str, Any], float] = {}
        self.news = asyncio.Event()
        ws.handler = self.on_event

    def on_event(self, event: dict[str, Any], now: float) -> None:
        if event["type"] == "connection":
            connection = event.get("connection") or {}
            if connection.get("state") == "direct":
                self.seen.setdefault(("direct", event["peer"]), now)
                self.news.set()
            elif connection.get("state") == "connecting" and connection.get("address"):
                # The CONNECT answer came; the QUIC handshake to that address starts.
                self.seen.setdefault(("answered", event["peer"]), now)
        elif event["type"] == "status" and event["status"] == "delivered":
            self.seen.setdefault(("delivered", event["id"]), now)
            self.news.set()
        elif event["type"] == "peers":
            for peer in event["peers"]:
                if not peer.get("online"):
                    self.seen.setdefault(("offline", peer["id"]), now)
                    self.news.set()

    async def when(self, key: tuple[str, Any]) -> float:
        deadline = time.monotonic() + 10
        while key not in self.seen:
            self.news.clear()
            await asyncio.wait_for(self.news.wait(), max(0.0, deadline - time.monotonic()))
        return self.seen[key]


async def connect_each(session: Any, pairs: list[tuple[Proc, ConnectWatch, Proc]]) -> dict[str, Any]:
    """For each (sender, its websocket's watch, target) in turn, the target
    never connected to the sender yet: POST on the sender, then until the
    CONNECT answer, until ``direct``, until ``delivered``."""
    answered, direct, delivered, target_cpu = [], [], [], []
    clock = time.perf_counter
    for sender, watch, target in pairs:
        cpu0 = cpu_seconds(target.process.pid)
        t0 = clock()
        async with session.post(
            sender.base + "/api/messages",
            json={"to": target.peer_id, "text": "hello, new peer"},
            headers=sender.headers,
        ) as response:
            assert response.status == 201, await response.text()
            message = await response.json()
        direct.append(await watch.when(("direct", target.peer_id)) - t0)
        delivered.append(await watch.when(("delivered", message["id"])) - t0)
        cpu1 = cpu_seconds(target.process.pid)
        target_cpu.append(cpu1[0] - cpu0[0])
        if ("answered", target.peer_id) in watch.seen:
            answered.append(watch.seen[("answered", target.peer_id)] - t0)
    result = {
        "post_to_direct": summary_ms(direct),
        "post_to_delivered": summary_ms(delivered),
        "target_cpu": summary_ms(target_cpu),
    }
    if answered:
        result["post_to_quic_start"] = summary_ms(answered)
    return result


async def measure_connect(
    session: Any,
    network: Network,
    alice: Proc,
    bob: Proc,
    ws_alice: EventSocket,
    ws_bob: EventSocket,
    count: int,
    cpu: int | None,
) -> dict[str, Any]:
    """``count`` fresh webpeer processes.  ``cold``: alice (even ones) or bob
    (odd ones) sends to each, so each one's first QUIC connection ever is
    measured (what a user who just started a peer gets).  ``warm``: then the
    other of the two sends to each, whose process has accepted one
    connection already.  Both phases use both senders, so a difference
    between them is not a difference between alice's and bob's core."""
    fresh: list[Proc] = []
    for start in range(0, count, 4):  # a few at a time: start-up is CPU-bound
        fresh += await asyncio.gather(
            *(start_peer(network, f"fresh{i}", cpu) for i in range(start, min(count, start + 4)))
        )
    await asyncio.gather(*(wait_registered(session, proc) for proc in fresh))
    # Peers watch their contacts (PRESENCE) and see one directory page, not
    # the whole server: alice and bob do not know the fresh peers before the
    # first POST, which asks the server (one CONNECT, that also opens the
    # connection).  What a user who writes to a new id gets.  (Before the
    # presence work they waited here until the periodic full LIST showed all
    # of them; bench/WEBPEER.md compares the two in one run.)
    await asyncio.sleep(0.5)  # let the start-up burst of the fresh peers settle
    senders = [(alice, ConnectWatch(ws_alice)), (bob, ConnectWatch(ws_bob))]
    meter = CpuMeter({"alice": alice.process.pid, "bob": bob.process.pid})
    out: dict[str, Any] = {}
    for phase, first in (("cold", 0), ("warm", 1)):
        pairs = [(*senders[(i + first) % 2], target) for i, target in enumerate(fresh)]
        meter.start()
        out[phase] = await connect_each(session, pairs)
        out[phase]["cpu"] = meter.stop()
    out["leave"] = await leave_each(network, fresh, senders[0][1])
    return out


async def leave_each(network: Network, fresh: list[Proc], watch: ConnectWatch) -> dict[str, Any]:
    """Each fresh peer (a contact of alice's by now) stops in turn, as a user
    quits (SIGTERM: it unregisters): from the signal to alice's page showing
    it offline (the server's PRESENCE push; its registration would only
    expire after the TTL, 60 s)."""
    offline = []
    for proc in fresh:
        t0 = time.perf_counter()
        await network.stop([proc])
        offline.append(await watch.when(("offline", proc.peer_id)) - t0)
    return {"sigterm_to_offline_on_page": summary_ms(offline)}


# ---- profiling ----------------------------------------------------------------------


class Profiler:
    """``py-spy record`` on some pids while the throughput window runs."""

    def __init__(self, py_spy: str, pids: dict[str, int], out_dir: Path, seconds: float) -> None:
        self.py_spy, self.pids, self.out_dir, self.seconds = py_spy, pids, out_dir, seconds
        self.procs: list[subprocess.Popen[bytes]] = []

    def __call__(self, starting: bool) -> None:
        if not starting:
            return
        for name, pid in self.pids.items():
            self.procs.append(
                subprocess.Popen(
                    [
                        self.py_spy,
                        "record",
                        "--pid",
                        str(pid),
                        "--duration",
                        str(int(self.seconds)),
                        "--rate",
                        "250",
                        "--function",
                        "--format",
                        "raw",
                        "--output",
                        str(self.out_dir / f"profile-{name}.txt"),
                        "--nonblocking",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )

    def finish(self) -> dict[str, dict[str, list[tuple[str, float]]]]:
        for proc in self.procs:
            proc.wait(60)
        return {name: top_functions(self.out_dir / f"profile-{name}.txt") for name in self.pids}


def top_functions(raw: Path, limit: int = 20) -> dict[str, list[tuple[str, float]]]:
    """From py-spy's collapsed stacks: the functions with the largest share
    of samples, inclusive (the function and what it calls; frames in nearly
    every sample, like the loop's run, left out) and self (the innermost
    Python frame: time in C code called from there counts as its own)."""
    if not raw.exists():
        return {}
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return {}
    inclusive_top = [(f, round(100 * n / total, 1)) for f, n in inclusive.most_common() if n < 0.9 * total][:limit]
    own_top = [(f, round(100 * n / total, 1)) for f, n in own.most_common(limit)]
    return {"inclusive": inclusive_top, "self": own_top, "samples": [("total", float(total))]}


# ---- the run ------------------------------------------------------------------------


async def run_webpeer_parts(args: argparse.Namespace, workdir: Path, results: dict[str, Any]) -> None:
    import aiohttp

    parts = set(args.only)
    network = await start_network(workdir)
    try:
        async with aiohttp.ClientSession() as session:
            alice, bob = await asyncio.gather(
                start_peer(network, "alice", args.alice_cpu), start_peer(network, "bob", args.bob_cpu)
            )
            await asyncio.gather(wait_registered(session, alice), wait_registered(session, bob))
            await wait_sees_online(session, alice, {bob.peer_id})
            ws_alice, ws_bob = await EventSocket.open(session, alice), await EventSocket.open(session, bob)
            # The first message opens the connection; the later ones measure.
            await measure_latency(session, alice, bob, ws_alice, ws_bob, 20)
            if "latency" in parts:
                log(f"latency: {args.latency_count} messages, one at a time")
                results["latency"] = await measure_latency(session, alice, bob, ws_alice, ws_bob, args.latency_count)
            if "throughput" in parts:
                # Only alice's websocket is open: the page of the sender.
                await ws_bob.close()
                meter = CpuMeter(
                    {
                        "alice": alice.process.pid,
                        "bob": bob.process.pid,
                        "driver": os.getpid(),
                        "rendezvous": network.server.process.pid,
                    }
                )
                profiler = None
                if args.profile:
                    profiler = Profiler(
                        args.profile,
                        {"alice": alice.process.pid, "bob": bob.process.pid},
                        workdir,
                        args.throughput_seconds,
                    )
                log(f"throughput: window {args.window}, {args.throughput_seconds} s")
                tp = await measure_throughput(
                    ws_alice, bob, args.window, args.throughput_warmup, args.throughput_seconds, meter, profiler
                )
                tp["persisted"] = check_persisted(alice, bob, tp.pop("tag"))
                results["throughput"] = tp
                if profiler is not None:
                    results["profile"] = profiler.finish()
            if "connect" in parts:
                log(f"connect: {args.connect_peers} fresh peers")
                if ws_bob.ws.closed:
                    ws_bob = await EventSocket.open(session, bob)
                results["connect"] = await measure_connect(
                    session, network, alice, bob, ws_alice, ws_bob, args.connect_peers, args.bob_cpu
                )
            await ws_alice.close()
            if not ws_bob.ws.closed:
                await ws_bob.close()
    finally:
        await network.stop()
        network.server.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(network.server.process.wait(), STOP_TIMEOUT)
        if network.server.process.returncode is None:
            network.server.process.kill()


def verdicts(results: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(target, measured, ratio/comment, met?) rows."""
    rows: list[tuple[str, str, str, bool | None]] = []  # met None: shown for information only
    floor = results.get("floor", {})
    if "latency" in results:
        p50 = results["latency"]["post_to_bob_event"]["p50_ms"]
        rows.append((f"latency p50 <= {TARGET_LATENCY_P50_MS:g} ms", f"{p50} ms", "", p50 <= TARGET_LATENCY_P50_MS))
    if "throughput" in results:
        rate = results["throughput"]["delivered_per_s"]
        rows.append(
            (f"throughput >= {TARGET_THROUGHPUT:,.0f} delivered/s", f"{rate:,}/s", "", rate >= TARGET_THROUGHPUT)
        )
        reference = results.get("floor_reference_window")
        for loop_name in ("uvloop", "asyncio"):
            for window in sorted({reference, results.get("throughput", {}).get("window")} - {None}):
                floor_row = floor.get(f"{loop_name} W={window}")
                if not floor_row:
                    continue
                ratio = rate / floor_row["round_trips_per_s"]
                verdict = ratio >= TARGET_FLOOR_RATIO if window == reference else None
                rows.append(
                    (
                        f"throughput >= {TARGET_FLOOR_RATIO}x bare aioquic ({loop_name}, W={window})",
                        f"{ratio:.3f}x",
                        f"{rate:,} / {floor_row['round_trips_per_s']:,}",
                        verdict,
                    )
                )
    if "connect" in results:
        for phase in ("cold", "warm"):
            p50 = results["connect"][phase]["post_to_direct"]["p50_ms"]
            rows.append(
                (
                    f"connect to a new peer <= {TARGET_CONNECT_MS:g} ms (p50, {phase} peer process)",
                    f"{p50} ms",
                    "",
                    p50 <= TARGET_CONNECT_MS,
                )
            )
        if "leave" in results["connect"]:
            leave = results["connect"]["leave"]["sigterm_to_offline_on_page"]
            rows.append(
                (
                    f"a peer that quits shows offline on its contacts' pages <= {TARGET_OFFLINE_MS:g} ms (max)",
                    f"{leave['max_ms']} ms",
                    "issue 14: within a second",
                    leave["max_ms"] <= TARGET_OFFLINE_MS,
                )
            )
    return rows


def render(results: dict[str, Any]) -> str:
    lines = [f"webpeer bench, {results['date']}, {results['machine']}", f"command: {results['command']}", ""]
    if results.get("floor"):
        cpus = results["cpus"]
        lines += [
            f"bare aioquic echo (server on cpu {cpus['alice']}, client on cpu {cpus['bob']}; "
            "the least disturbed of the rounds)",
            "| loop, window | round trips/s | p50 ms | p99 ms | server CPU % (waited) | client CPU % (waited) "
            "| all rounds, round trips/s |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for key, r in results["floor"].items():
            server, client = r["cpu"]["server"], r["cpu"]["client"]
            rounds = ", ".join(f"{n:,}" for n in r.get("rounds_round_trips_per_s", []))
            lines.append(
                f"| {key} | {r['round_trips_per_s']:,} | {r['p50_ms']} | {r['p99_ms']} | "
                f"{server['cpu_pct']} ({server['waited_pct']}) | "
                f"{client['cpu_pct']} ({client['waited_pct']}) | {rounds} |"
            )
        lines.append("")
    if "latency" in results:
        lat = results["latency"]
        lines += [
            "latency, one message at a time",
            "| path | count | p50 ms | p90 ms | p99 ms | max ms |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for key in ("post_to_bob_event", "post_to_delivered"):
            s = lat[key]
            lines.append(f"| {key} | {s['count']} | {s['p50_ms']} | {s['p90_ms']} | {s['p99_ms']} | {s['max_ms']} |")
        lines.append("")
    if "throughput" in results:
        tp = results["throughput"]
        lines += [
            f"throughput: {tp['delivered_per_s']:,} delivered msgs/s (window {tp['window']}, "
            f"{tp['delivered_in_window']} in {tp['measured_s']} s; sent {tp['sent_total']}, "
            f"delivered {tp['delivered_total']}, resyncs {tp['resync_events']}, errors {tp['error_replies']})",
            f"delivered in each second from the start (warm-up included): {tp['delivered_each_second']}",
            f"persisted: {tp['persisted']}",
            "CPU in the window: "
            + ", ".join(f"{k} {v['cpu_pct']}% (waited {v['waited_pct']}%)" for k, v in tp["cpu"].items()),
            "CPU per delivered message: "
            + ", ".join(
                f"{k} {1e6 * v['cpu_s'] / max(1, tp['delivered_in_window']):.0f} us"
                for k, v in tp["cpu"].items()
                if k != "rendezvous"
            ),
            "",
        ]
    if "connect" in results:
        lines += [
            "connect to a fresh peer (cold: its process's first QUIC connection; warm: its second; "
            "target_cpu: CPU time the fresh peer spent from POST to delivered)",
            "| phase, path | count | p50 ms | p90 ms | max ms |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for phase in ("cold", "warm"):
            c = results["connect"][phase]
            for key in ("post_to_quic_start", "post_to_direct", "post_to_delivered", "target_cpu"):
                if key in c:
                    s = c[key]
                    lines.append(f"| {phase}, {key} | {s['count']} | {s['p50_ms']} | {s['p90_ms']} | {s['max_ms']} |")
        if "leave" in results["connect"]:
            s = results["connect"]["leave"]["sigterm_to_offline_on_page"]
            lines.append(
                f"| leave, sigterm_to_offline_on_page | {s['count']} | {s['p50_ms']} | {s['p90_ms']} | {s['max_ms']} |"
            )
        lines.append("")
    lines += ["| target | measured | | verdict |", "| --- | --- | --- | --- |"]
    for target, measured, comment, met in verdicts(results):
        verdict = "(for information)" if met is None else "MET" if met else "NOT MET"
        lines.append(f"| {target} | {measured} | {comment} | {verdict} |")
    if results.get("profile"):
        for name, tops in results["profile"].items():
            for kind in ("inclusive", "self"):
                lines += ["", f"py-spy, {name}, {kind} % of samples"]
                lines += [f"  {share:5.1f}%  {frame}" for frame, share in tops.get(kind, [])]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="internal")
    server = sub.add_parser("_quic_server")
    server.add_argument("--loop", default="asyncio")
    server.add_argument("--port-file", type=Path, required=True)
    client = sub.add_parser("_quic_client")
    client.add_argument("--loop", default="asyncio")
    client.add_argument("--port", type=int, required=True)
    client.add_argument("--window", type=int, default=1)
    client.add_argument("--warmup", type=float, default=0.5)
    client.add_argument("--seconds", type=float, default=3.0)
    client.add_argument("--server-pid", type=int, required=True)
    parser.add_argument(
        "--only",
        nargs="+",
        default=["floor", "latency", "throughput", "connect"],
        choices=["floor", "latency", "throughput", "connect"],
    )
    parser.add_argument("--alice-cpu", type=int, default=0, help="core of alice (and of the QUIC echo server)")
    parser.add_argument("--bob-cpu", type=int, default=1, help="core of bob, the fresh peers and the QUIC echo client")
    parser.add_argument("--driver-cpu", type=int, default=None, help="core of this process (default: not pinned)")
    parser.add_argument("--floor-windows", type=int, nargs="+", default=[1, 16, 200])
    parser.add_argument(
        "--floor-reference-window",
        type=int,
        default=16,
        help="the floor row the 0.3x target is judged on (16 reproduces the issue's figures)",
    )
    parser.add_argument("--floor-seconds", type=float, default=3.0)
    parser.add_argument("--floor-rounds", type=int, default=2, help="rounds of the floor; the least disturbed is shown")
    parser.add_argument("--floor-warmup", type=float, default=0.5)
    parser.add_argument("--latency-count", type=int, default=500)
    parser.add_argument("--window", type=int, default=200, help="throughput: messages not yet delivered")
    parser.add_argument("--throughput-seconds", type=float, default=5.0)
    parser.add_argument("--throughput-warmup", type=float, default=1.0)
    parser.add_argument("--connect-peers", type=int, default=20)
    parser.add_argument("--profile", metavar="PY_SPY", help="path of py-spy: profile alice and bob during throughput")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, data dirs, profiles)")
    args = parser.parse_args()

    if args.internal == "_quic_server":
        run_loop(quic_server(args.port_file), args.loop)
        return
    if args.internal == "_quic_client":
        client_main = quic_client(args.port, args.window, args.warmup, args.seconds, args.server_pid)
        print(json.dumps(run_loop(client_main, args.loop)))
        return

    if args.driver_cpu is not None:
        pin(os.getpid(), args.driver_cpu)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="webpeer-bench-"))
    results: dict[str, Any] = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "cpus": {"alice": args.alice_cpu, "bob": args.bob_cpu, "driver": args.driver_cpu},
        "floor": {},
        "floor_reference_window": args.floor_reference_window,
    }
    if "floor" in args.only:
        rounds: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        for round_number in range(args.floor_rounds):  # interleaved, so a noisy minute hits one round of each
            for loop_name in ("asyncio", "uvloop"):
                for window in args.floor_windows:
                    log(f"bare aioquic: {loop_name}, window {window}, round {round_number + 1}")
                    rounds[f"{loop_name} W={window}"].append(measure_floor(loop_name, window, args, workdir))
        for key, runs in rounds.items():
            # Noise only slows a run down: keep the round whose processes waited least for their cores.
            best = min(runs, key=lambda r: r["cpu"]["server"]["waited_pct"] + r["cpu"]["client"]["waited_pct"])
            results["floor"][key] = {**best, "rounds_round_trips_per_s": [r["round_trips_per_s"] for r in runs]}
    if set(args.only) - {"floor"}:
        import uvloop

        uvloop.run(run_webpeer_parts(args, workdir, results))
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    text = render(results)
    print(text)
    print(f"\n(run took {results['elapsed_s']} s; work dir {workdir})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if not args.keep and not args.profile:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
