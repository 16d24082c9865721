"""What a webpeer with 20 contacts pays for presence as the server's population grows.

    .venv/bin/python bench/presence_bench.py [--sizes 1000,10000,100000] [--seconds 60]
                                             [--registry sqlite|redis] [--json PATH]

For each size N, on 127.0.0.1 only (bench/PRESENCE.md has the method and results):

1. a real ``rendezvous`` process pinned to CPU 0 (SQLite registry, or
   ``--registry redis://`` on a ``redis-server`` child process);
2. a **crowd** of N online peers made by a load generator (this file run as
   ``_crowd``, alone on CPU 1) that speaks the real protocol: each peer has
   its own Ed25519 key and its own address (IP 127.2.x.y, one IP per <= 1,000
   peers so the server's per-IP caps stay the defaults), registers with the
   signed handshake of ``rendezvous.client_protocol.RegisterHandshake`` and
   sends REFRESH (TTL 60) every 21 s, as a webpeer does; every answer is
   checked;
3. 20 **contacts** (``RendezvousClient``, in this process): 12 stay online,
   8 take turns going offline (UNREGISTER) and online again (REGISTER), one
   change every 3 s, so the server sends PRESENCE;
4. one real ``webpeer`` process (CPU 0, as this process) that adds the 20 ids as contacts
   (POST /api/peers) and talks to the server through a small UDP relay in
   this process, which counts the datagrams and their UDP payload bytes each
   way (the webpeer sends the server nothing that does not pass through it).

Over the measured window (``--seconds``, 60 by default): the webpeer's CPU
seconds (utime + stime of /proc/PID/stat, and the scheduler's on-CPU time of
/proc/PID/task/*/schedstat), its datagrams and bytes to and from the server,
and the time of GET /api/peers (once every 2 s).  Side figures: the server's
RSS and CPU per online peer, the crowd's REFRESH answers (all must succeed),
the server's peers_online (its /metrics) before and after the window, and
the load average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
sys.path.insert(0, str(REPO_DIR))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from rendezvous.client import RendezvousClient, RendezvousError, TransactionTimeout, public_key_bytes  # noqa: E402
from rendezvous.client_protocol import (  # noqa: E402
    RegisterHandshake,
    RegisterRefused,
    Registration,
    error_of,
    session_request,
)
from rendezvous.stun import Attr, Message, MessageClass, Method, StunProtocolError, decode, encode, unpack_type  # noqa: E402

HOST = "127.0.0.1"
CROWD_BASE_PORT = 10_000  # below the ephemeral range, so no test's socket holds one of them
PEERS_PER_IP = 1_000  # under the server's default --max-online-per-ip (1,024)
CROWD_TTL = 60  # the contacts' and (by default) the crowd's: a webpeer's default
REFRESH_FRACTION = 0.35  # REFRESH at 35% of the TTL, as webpeer/registration.py does
CONTACTS = 20
TOGGLING = 8
TOGGLE_EVERY = 3.0
START_TIMEOUT = 30.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(text: str) -> None:
    print(f"[presence] {text}", file=sys.stderr, flush=True)


def crowd_address(index: int, ip_count: int) -> tuple[str, int]:
    """Peer ``index`` of the crowd: its IP (127.2.x.y) and port."""
    k = index % ip_count + 1
    return f"127.2.{k >> 8}.{k & 255}", CROWD_BASE_PORT + index // ip_count


# ---- the crowd: N online peers over the real protocol -----------------------------------------


@dataclass
class Flight:
    """One request in flight from one crowd peer's socket."""

    index: int
    sock: socket.socket
    data: bytes
    transaction_id: bytes
    sends: int
    resend_at: float


class Crowd:
    """N peers, each with its own key and address; sockets are opened only
    while a request of theirs is in flight (the fd limit is far below N)."""

    WINDOW = 512  # registrations in flight at once
    RTO = 0.5
    MAX_SENDS = 5

    def __init__(self, server: tuple[str, int], count: int, ttl: int) -> None:
        self.server = server
        self.count = count
        self.ttl = ttl
        self.ip_count = max(1, math.ceil(count / PEERS_PER_IP))
        self.keys: list[Ed25519PrivateKey | None] = [None] * count
        self.sessions: list[bytes | None] = [None] * count
        self.handshakes: dict[int, RegisterHandshake] = {}
        self.epoll = select.epoll()
        self.live: dict[int, Flight] = {}  # by fd
        self.stats = {
            "registered": 0,
            "register_retries": 0,
            "refresh_ok": 0,
            "refresh_lost": 0,
            "refresh_refused": 0,
            "reregistered": 0,
        }

    # -- sockets and flights

    def _socket(self, index: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(crowd_address(index, self.ip_count))
        sock.connect(self.server)  # the kernel drops anything not from the server
        sock.setblocking(False)
        return sock

    def _send(self, index: int, sock: socket.socket, message: Message, now: float) -> None:
        data = encode(message)
        flight = Flight(index, sock, data, message.transaction_id, 1, now + self.RTO)
        if sock.fileno() not in self.live:
            self.epoll.register(sock.fileno(), select.EPOLLIN)
        self.live[sock.fileno()] = flight
        with contextlib.suppress(OSError):
            sock.send(data)

    def _finish(self, flight: Flight) -> None:
        fd = flight.sock.fileno()
        self.live.pop(fd, None)
        self.epoll.unregister(fd)
        flight.sock.close()

    def poll(self, timeout: float) -> list[tuple[Flight, Message | None]]:
        """Answers that arrived (and flights given up on: None) within ``timeout``."""
        out: list[tuple[Flight, Message | None]] = []
        for fd, _ in self.epoll.poll(timeout):
            flight = self.live.get(fd)
            if flight is None:
                continue
            try:
                data = flight.sock.recv(2048)
                message = decode(data, require_fingerprint=True)
            except (OSError, StunProtocolError):
                continue
            if message.transaction_id == flight.transaction_id:
                out.append((flight, message))
        now = time.monotonic()
        answered = {id(flight) for flight, _ in out}
        for flight in list(self.live.values()):
            if flight.resend_at <= now and id(flight) not in answered:
                if flight.sends >= self.MAX_SENDS:
                    out.append((flight, None))
                    continue
                flight.sends += 1
                flight.resend_at = now + self.RTO * 2 ** (flight.sends - 1)
                with contextlib.suppress(OSError):
                    flight.sock.send(flight.data)
        return out

    # -- registering

    def _start_register(self, index: int, now: float) -> None:
        key = self.keys[index]
        if key is None:
            key = self.keys[index] = Ed25519PrivateKey.generate()
        handshake = RegisterHandshake(key, public_key_bytes(key), nickname=f"crowd{index}", ttl=self.ttl)
        self.handshakes[index] = handshake
        self._send(index, self._socket(index), handshake.first_request(), now)

    def _register_answer(self, flight: Flight, message: Message | None, retry: list[int], now: float) -> None:
        handshake = self.handshakes[flight.index]
        step = handshake.answer(message) if message is not None else None
        if isinstance(step, Message):
            self._send(flight.index, flight.sock, step, now)
            return
        self._finish(flight)
        del self.handshakes[flight.index]
        if isinstance(step, Registration):
            self.sessions[flight.index] = step.session
            self.stats["registered"] += 1
            return
        # No answer, 429 (200 signed REGISTERs/s per IP) or 503 Try Again Later: again later.
        if isinstance(step, RegisterRefused) and (step.error is None or step.error.code not in (429, 503)):
            raise SystemExit(f"crowd peer {flight.index} refused: {step.reason}")
        self.stats["register_retries"] += 1
        retry.append(flight.index)

    def register_all(self, indices: list[int]) -> None:
        todo = list(reversed(indices))
        while todo or self.live:
            now = time.monotonic()
            while todo and len(self.live) < self.WINDOW:
                self._start_register(todo.pop(), now)
            retry: list[int] = []
            for flight, message in self.poll(0.02):
                self._register_answer(flight, message, retry, time.monotonic())
            if retry:
                time.sleep(0.05)
                todo[:0] = retry

    # -- staying online

    def refresh_forever(self, stop: list[bool], report_every: float = 5.0) -> None:
        """REFRESH each peer every REFRESH_EVERY s, spread evenly; a 401
        (the server forgot it) registers it again (counted)."""
        started = time.monotonic()
        done = 0  # refreshes started
        next_report = started + report_every
        lost: list[int] = []
        while not stop[0]:
            now = time.monotonic()
            due = int((now - started) / (REFRESH_FRACTION * self.ttl) * self.count)
            while done < due and len(self.live) < 4 * self.WINDOW:
                index = done % self.count
                done += 1
                session = self.sessions[index]
                if session is None or index in self.handshakes:
                    continue  # being registered again
                request = session_request(Method.REFRESH, session, (Attr.TTL, self.ttl))
                self._send(index, self._socket(index), request, now)
            for flight, message in self.poll(0.02):
                if flight.index in self.handshakes:
                    self._register_answer(flight, message, lost, time.monotonic())
                    if self.sessions[flight.index] is not None and flight.index not in self.handshakes:
                        self.stats["reregistered"] += 1
                    continue
                self._finish(flight)
                error = error_of(message) if message is not None else None
                if message is None:
                    self.stats["refresh_lost"] += 1
                elif error is None:
                    self.stats["refresh_ok"] += 1
                else:
                    self.stats["refresh_refused"] += 1
                    if error.code == 401:
                        self.sessions[flight.index] = None
                        lost.append(flight.index)
            while lost and len(self.live) < 4 * self.WINDOW:
                self._start_register(lost.pop(), time.monotonic())
            if time.monotonic() >= next_report:
                next_report += report_every
                print(json.dumps({"stats": self.stats}), flush=True)


def crowd_main(args: argparse.Namespace) -> None:
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    crowd = Crowd((HOST, args.port), args.count, args.ttl)
    started = time.monotonic()
    if args.sessions is not None:
        # Seeded: the registry already has them online; their SESSIONs (what
        # REGISTER would have answered) come from the seeding process.
        raw = args.sessions.read_bytes()
        for i in range(args.count):
            crowd.sessions[i] = raw[20 * i : 20 * i + 20]
        crowd.stats["registered"] = args.count
    else:
        crowd.register_all(list(range(args.count)))
    print(json.dumps({"ready": crowd.stats["registered"], "seconds": time.monotonic() - started}), flush=True)
    crowd.refresh_forever(stop)
    print(json.dumps({"stats": crowd.stats, "final": True}), flush=True)


async def seed_crowd(path: Path, count: int, sessions_file: Path) -> None:
    """Write ``count`` online crowd peers into a fresh SQLite registry, with
    real keys and the addresses crowd_address() gives them, and their SESSIONs
    (tokens.Tokens under the registry's secret, as REGISTER would answer) into
    ``sessions_file``, 20 bytes each."""
    from rendezvous.registry import PeerRecord
    from rendezvous.sqlite_registry import SqliteRegistry
    from rendezvous.tokens import Tokens

    registry = SqliteRegistry(path)
    await registry.open()
    tokens = Tokens(await registry.secret())
    ip_count = max(1, math.ceil(count / PEERS_PER_IP))
    now = time.time()
    records, sessions = [], bytearray()
    for i in range(count):
        identity = public_key_bytes(Ed25519PrivateKey.generate())
        observed = crowd_address(i, ip_count)
        records.append(
            PeerRecord(
                peer_id=i + 1,
                identity=identity,
                nickname=f"crowd{i}",
                observed=observed,
                local=(),
                first_seen=now,
                last_seen=now,
                # Long enough for the server to load them and the crowd's first
                # round of REFRESH (TTL 60) to take over.
                expires_at=now + 900,
                online_since=now,
            )
        )
        sessions += tokens.session(i + 1, identity, observed)
    await registry.seed(records)
    await registry.close()
    sessions_file.write_bytes(bytes(sessions))


# ---- measuring processes -----------------------------------------------------------------------


def stat_cpu_seconds(pid: int) -> float:
    """utime + stime of /proc/PID/stat (every thread), in seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def sched_cpu_seconds(pid: int) -> float:
    """On-CPU time by the scheduler (ns resolution), every thread."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def sched_run_wait(pid: int) -> tuple[float, float]:
    """(on-CPU, runnable but waiting for a CPU) seconds of every thread so far."""
    run = wait = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            fields = (task / "schedstat").read_text().split()
            run += int(fields[0])
            wait += int(fields[1])
    return run / 1e9, wait / 1e9


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# ---- the counting relay in front of the server -----------------------------------------------


class CountingRelay:
    """The webpeer's only way to the server: forwards both ways and counts
    datagrams and UDP payload bytes (add 28 bytes of IPv4+UDP headers each for
    what crosses a wire)."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.client: tuple[str, int] | None = None
        self.up = [0, 0]  # datagrams, bytes: webpeer -> server
        self.down = [0, 0]  # server -> webpeer
        self.kinds: dict[str, list[int]] = {}  # "up LIST request" -> [datagrams, bytes]
        self.front: asyncio.DatagramTransport | None = None
        self.back: asyncio.DatagramTransport | None = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        relay = self

        class Front(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                relay.client = addr
                relay.up[0] += 1
                relay.up[1] += len(data)
                relay.count("up", data)
                if relay.back is not None:
                    relay.back.sendto(data)

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                if relay.client is not None and relay.front is not None:
                    relay.down[0] += 1
                    relay.down[1] += len(data)
                    relay.count("down", data)
                    relay.front.sendto(data, relay.client)

        self.front, _ = await loop.create_datagram_endpoint(Front, local_addr=(HOST, 0))
        self.back, _ = await loop.create_datagram_endpoint(Back, local_addr=(HOST, 0), remote_addr=self.server)
        return int(self.front.get_extra_info("sockname")[1])

    def count(self, way: str, data: bytes) -> None:
        kind = "other"
        if len(data) >= 20 and data[0] < 0x40:
            method, message_class = unpack_type(int.from_bytes(data[:2], "big"))
            with contextlib.suppress(ValueError):
                kind = f"{Method(method).name} {MessageClass(message_class).name}"
        tally = self.kinds.setdefault(f"{way} {kind}", [0, 0])
        tally[0] += 1
        tally[1] += len(data)

    def sends(self) -> int:
        return self.kinds.get("up SEND INDICATION", [0, 0])[0]

    def snapshot(self) -> tuple[int, int, int, int]:
        return self.up[0], self.up[1], self.down[0], self.down[1]

    def close(self) -> None:
        for transport in (self.front, self.back):
            if transport is not None:
                transport.close()


# ---- contacts ----------------------------------------------------------------------------------


class Contacts:
    """20 peers the webpeer watches; TOGGLING of them take turns going offline
    and coming back, one change every TOGGLE_EVERY s."""

    def __init__(self, server: tuple[str, int], ttl: int) -> None:
        self.server = server
        self.ttl = ttl
        self.clients: list[RendezvousClient] = []
        self.ids: list[int] = []
        self.changes = 0
        self.lost = 0

    async def start(self) -> None:
        for i in range(CONTACTS):
            client = await RendezvousClient(self.server, nickname=f"contact{i}").open("127.3.0.1")
            for attempt in range(5):  # a busy server on a busy machine may miss the client's short timeouts
                try:
                    registration = await client.register(ttl=self.ttl)
                    break
                except TransactionTimeout:
                    if attempt == 4:
                        raise
            self.clients.append(client)
            self.ids.append(registration.peer_id)

    async def keep_online(self) -> None:
        """REFRESH every contact that is online at 35% of its TTL, from registration on."""
        while True:
            await asyncio.sleep(REFRESH_FRACTION * self.ttl)
            for client in self.clients:
                if client.registration is not None:
                    with contextlib.suppress(TransactionTimeout, RendezvousError):
                        await client.refresh(self.ttl)

    async def run(self, stop: asyncio.Event) -> None:
        toggles = self.clients[CONTACTS - TOGGLING :]
        turn = 0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), TOGGLE_EVERY)
                return
            client = toggles[turn % TOGGLING]
            turn += 1
            with contextlib.suppress(TransactionTimeout):
                if client.registration is not None:
                    try:
                        await client.unregister()
                    except RendezvousError:
                        client.registration = None  # already gone (counted: it should not happen)
                        self.lost += 1
                else:
                    await client.register(ttl=self.ttl)
                self.changes += 1

    def close(self) -> None:
        for client in self.clients:
            client.close()


# ---- one size ----------------------------------------------------------------------------------


@dataclass
class Run:
    size: int
    workdir: Path
    registry: str
    fill: str
    crowd_ttl: int
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)

    def spawn(self, name: str, argv: list[str], cpu: int, **kwargs: Any) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PYTHONPATH=str(REPO_DIR))
        with open(self.workdir / f"{name}.log", "wb") as log_file:
            kwargs.setdefault("stdout", log_file)
            proc = subprocess.Popen(["taskset", "-c", str(cpu), *argv], env=env, stderr=log_file, **kwargs)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


async def metric(session: Any, url: str, name: str) -> float:
    async with session.get(url) as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return float("nan")


async def lag_counts(session: Any, url: str) -> dict[str, float]:
    """The server's loop-lag histogram: timers run (``count``), and those
    late by more than 0.1, 0.25 and 1 s."""
    name = "peerlink_event_loop_lag_seconds"
    count = await metric(session, url, name + "_count")
    out = {"count": count}
    for le in ("0.1", "0.25", "1.0"):
        out[le] = count - await metric(session, url, f'{name}_bucket{{le="{le}"}}')
    return out


async def read_json_line(stream: asyncio.StreamReader, key: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        line = await asyncio.wait_for(stream.readline(), max(0.1, deadline - time.monotonic()))
        if not line:
            raise RuntimeError("the crowd exited")
        record: dict[str, Any] = json.loads(line)
        if key in record:
            return record


async def _drain(ws: Any) -> None:  # an aiohttp ClientWebSocketResponse (aiohttp is imported late)
    """Read a page's websocket events (and drop them), as a page would."""
    async for _ in ws:
        pass


async def run_size(run: Run, seconds: float, page: bool = False, api_every: float = 2.0) -> None:
    import aiohttp

    result = run.result
    result["load_before"] = loadavg()
    port = free_port()
    metrics_port = free_port(socket.SOCK_STREAM)
    server_argv = [sys.executable, "-m", "rendezvous", "--host", HOST, "--port", str(port), "--log-level", "warning"]
    server_argv += ["--metrics", f"{HOST}:{metrics_port}"]
    if run.registry == "redis":
        sys.path.insert(0, str(REPO_DIR / "tests"))
        from redis_process import RedisProcess

        redis = RedisProcess(run.workdir / "redis").start()
        assert redis.proc is not None
        os.sched_setaffinity(redis.proc.pid, {0})
        run.procs.append(redis.proc)
        server_argv += ["--registry", redis.url]
    else:
        server_argv += ["--db", str(run.workdir / "rendezvous.sqlite3")]
    crowd_extra: list[str] = []
    if run.fill == "seed":
        if run.registry != "sqlite":
            raise SystemExit("--fill seed writes a SQLite registry: use --fill register with redis")
        started = time.monotonic()
        await seed_crowd(run.workdir / "rendezvous.sqlite3", run.size, run.workdir / "sessions.bin")
        result["seed_s"] = round(time.monotonic() - started, 1)
        crowd_extra = ["--sessions", str(run.workdir / "sessions.bin")]
    server = run.spawn("rendezvous", server_argv, cpu=0)
    metrics_url = f"http://{HOST}:{metrics_port}/metrics"
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + START_TIMEOUT
        # Serving, and (--fill seed) done loading the crowd from the registry.
        expected = run.size if run.fill == "seed" else 0
        deadline = time.monotonic() + START_TIMEOUT + run.size / 1000
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                if await metric(http, metrics_url, "peerlink_peers_online") >= expected:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not come up with {expected} peers online")
            await asyncio.sleep(0.2)
        # With --fill seed the server has loaded the crowd already: "empty" is then
        # the 1,000-peer run's figure minus what those peers cost (see PRESENCE.md).
        rss_empty = rss_mib(server.pid)
        server_cpu_empty = sched_cpu_seconds(server.pid)

        # The crowd, through a pipe for its progress lines.
        env = dict(os.environ, PYTHONPATH=str(REPO_DIR))
        crowd_log = open(run.workdir / "crowd.log", "wb")  # noqa: SIM115 (the child keeps it)
        crowd = await asyncio.create_subprocess_exec(
            "taskset",
            "-c",
            "1",
            sys.executable,
            __file__,
            "_crowd",
            "--port",
            str(port),
            "--count",
            str(run.size),
            "--ttl",
            str(run.crowd_ttl),
            *crowd_extra,
            stdout=asyncio.subprocess.PIPE,
            stderr=crowd_log,
            env=env,
        )
        crowd_log.close()
        assert crowd.stdout is not None
        crowd_stats: dict[str, Any] = {}

        async def follow_crowd() -> None:
            assert crowd.stdout is not None
            while line := await crowd.stdout.readline():
                record = json.loads(line)
                if "stats" in record:
                    crowd_stats.update(record["stats"])
                    log(f"{run.size:,}: crowd {record['stats']}")

        try:
            ready = await read_json_line(crowd.stdout, "ready", timeout=max(600.0, run.size / 50))
            follower = asyncio.create_task(follow_crowd())
            run.tasks.append(follower)
            result["crowd_register_s"] = round(ready["seconds"], 1)
            log(f"{run.size:,}: crowd registered in {ready['seconds']:.1f} s")
            rss_loaded = rss_mib(server.pid)
            result["server_rss_loaded_mib"] = round(rss_loaded, 1)
            if run.fill == "register":
                result["server_rss_empty_mib"] = round(rss_empty, 1)
                result["server_kib_per_online_peer"] = round((rss_loaded - rss_empty) * 1024 / run.size, 2)
                result["server_cpu_register_s"] = round(sched_cpu_seconds(server.pid) - server_cpu_empty, 1)

            contacts = Contacts((HOST, port), CROWD_TTL)
            await contacts.start()
            run.tasks.append(asyncio.create_task(contacts.keep_online()))
            relay = CountingRelay((HOST, port))
            relay_port = await relay.start()
            token = "presence-bench-" + os.urandom(8).hex()
            http_port = free_port(socket.SOCK_STREAM)
            webpeer_argv = [sys.executable, "-m", "webpeer", "--server", f"{HOST}:{relay_port}"]
            webpeer_argv += ["--http-port", str(http_port), "--token", token, "--name", "bench"]
            webpeer_argv += ["--data-dir", str(run.workdir / "webpeer"), "--no-browser", "--udp-host", HOST]
            webpeer_argv += ["--no-port-mapping", "--log-level", "warning"]
            # With the server, not the crowd: the crowd's work grows with N, and
            # sharing its core would charge that to the webpeer's API times.
            peer = run.spawn("webpeer", webpeer_argv, cpu=0)
            base = f"http://{HOST}:{http_port}"
            headers = {"Authorization": f"Bearer {token}", "Origin": base}

            async def api(method: str, path: str, body: Any = None) -> Any:
                async with http.request(method, base + path, headers=headers, json=body) as response:
                    response.raise_for_status()
                    return await response.json()

            deadline = time.monotonic() + START_TIMEOUT
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    if (await api("GET", "/api/me")).get("id"):
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"webpeer did not register (see {run.workdir / 'webpeer.log'})")
                await asyncio.sleep(0.1)
            for contact_id in contacts.ids:
                await api("POST", "/api/peers", {"id": contact_id})
            deadline = time.monotonic() + 3 * START_TIMEOUT  # a generous bound on a loaded machine
            wanted = set(contacts.ids)
            while True:
                online = {p["id"] for p in await api("GET", "/api/peers") if p["online"]}
                if wanted <= online:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"webpeer sees {sorted(wanted & online)} of {sorted(wanted)} online")
                await asyncio.sleep(0.1)
            # Adding an id the webpeer never heard of asks the server (CONNECT), and
            # that starts a connection; our contacts do not speak QUIC, so the
            # webpeer tries, then relays its handshake through the server (SEND),
            # then gives up.  Real contacts would answer and the link would be
            # peer to peer: start the window once no SEND went out for 5 s.
            quiet_since, sends = time.monotonic(), relay.sends()
            deadline = time.monotonic() + 180
            while time.monotonic() - quiet_since < 5.0:
                await asyncio.sleep(0.5)
                if relay.sends() != sends:
                    quiet_since, sends = time.monotonic(), relay.sends()
                if time.monotonic() > deadline:
                    raise RuntimeError("the webpeer kept relaying through the server for 3 minutes")
            result["setup_sends"] = sends
            # --page: a page's websocket open through the window (the webpeer
            # then fetches the directory page every other heartbeat); without
            # one it fetches it only when GET /api/peers asks and its last is
            # older than a heartbeat (--api-every 0: one GET, at the start).
            page_ws = await http.ws_connect(base + "/ws", headers=headers) if page else None
            reader = asyncio.create_task(_drain(page_ws)) if page_ws is not None else None
            poll = api_every if api_every > 0 else seconds
            result["page_open"] = page
            result["api_every_s"] = api_every

            # The window.
            stop = asyncio.Event()
            toggler = asyncio.create_task(contacts.run(stop))
            online_before = await metric(http, metrics_url, "peerlink_peers_online")
            lag_before = await lag_counts(http, metrics_url)
            crowd_before = dict(crowd_stats)
            traffic0 = relay.snapshot()
            kinds0 = {k: list(v) for k, v in relay.kinds.items()}
            stat0, sched0 = stat_cpu_seconds(peer.pid), sched_cpu_seconds(peer.pid)
            server0 = sched_cpu_seconds(server.pid)
            t0 = time.monotonic()
            api_ms: list[float] = []
            api_cpu_ms: list[float] = []
            api_wait_ms: list[float] = []
            peers_seen: list[int] = []
            server_lag: list[float] = []
            while time.monotonic() - t0 < seconds:
                server_lag.append(await metric(http, metrics_url, "peerlink_event_loop_lag_last_seconds"))
                run0, wait0 = sched_run_wait(peer.pid)
                started = time.perf_counter()
                peers = await api("GET", "/api/peers")
                api_ms.append((time.perf_counter() - started) * 1000)
                run1, wait1 = sched_run_wait(peer.pid)
                # The webpeer's own CPU time over the call, and the time it was
                # ready to run but another process had the core (the shared machine).
                api_cpu_ms.append((run1 - run0) * 1000)
                api_wait_ms.append((wait1 - wait0) * 1000)
                peers_seen.append(len(peers))
                await asyncio.sleep(max(0.0, min(poll, seconds - (time.monotonic() - t0))))
            elapsed = time.monotonic() - t0
            stat1, sched1 = stat_cpu_seconds(peer.pid), sched_cpu_seconds(peer.pid)
            server1 = sched_cpu_seconds(server.pid)
            traffic1 = relay.snapshot()
            if page_ws is not None and reader is not None:
                await page_ws.close()
                await reader
            stop.set()
            await toggler
            online_after = await metric(http, metrics_url, "peerlink_peers_online")
            lag_after = await lag_counts(http, metrics_url)
            lag = {k: int(lag_after[k] - lag_before[k]) for k in lag_after}
            per_minute = 60.0 / elapsed
            up_n, up_b, down_n, down_b = (b - a for a, b in zip(traffic0, traffic1, strict=True))
            result.update(
                {
                    "window_s": round(elapsed, 1),
                    "webpeer_cpu_s_per_min": round((stat1 - stat0) * per_minute, 3),
                    "webpeer_sched_cpu_s_per_min": round((sched1 - sched0) * per_minute, 3),
                    "to_server_datagrams_per_min": round(up_n * per_minute, 1),
                    "to_server_bytes_per_min": round(up_b * per_minute),
                    "from_server_datagrams_per_min": round(down_n * per_minute, 1),
                    "from_server_bytes_per_min": round(down_b * per_minute),
                    "api_peers_ms_median": round(statistics.median(api_ms), 2),
                    "api_peers_ms_max": round(max(api_ms), 2),
                    "api_peers_webpeer_cpu_ms_median": round(statistics.median(api_cpu_ms), 2),
                    "api_peers_webpeer_waited_ms_median": round(statistics.median(api_wait_ms), 2),
                    "api_peers_entries": max(peers_seen),
                    "server_loop_lag_ms_max": round(1000 * max(server_lag), 1),
                    # The server's loop-lag timer (every 0.5 s) over the window: how many
                    # times it ran, and how many of those were late by over 0.1/0.25/1 s.
                    "server_loop_lag_samples": lag,
                    "webpeer_registered_again": relay.kinds.get("down REGISTER SUCCESS", [0])[0]
                    - kinds0.get("down REGISTER SUCCESS", [0])[0],
                    "contact_changes": contacts.changes,
                    "contacts_found_expired": contacts.lost,
                    "server_online_before": int(online_before),
                    "server_online_after": int(online_after),
                    "server_cpu_s_per_min": round((server1 - server0) * per_minute, 2),
                    "server_cpu_ms_per_min_per_online_peer": round(
                        (server1 - server0) * per_minute * 1000 / max(1.0, online_before), 4
                    ),
                    "by_kind_per_min": {
                        k: [
                            round((v[0] - kinds0.get(k, [0, 0])[0]) * per_minute),
                            round((v[1] - kinds0.get(k, [0, 0])[1]) * per_minute),
                        ]
                        for k, v in sorted(relay.kinds.items())
                    },
                    "crowd_window": {k: crowd_stats.get(k, 0) - crowd_before.get(k, 0) for k in crowd_stats},
                }
            )
            relay.close()
            contacts.close()
        finally:
            for task in run.tasks:
                task.cancel()
            if crowd.returncode is None:
                crowd.send_signal(signal.SIGTERM)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(crowd.wait(), 20)
                if crowd.returncode is None:
                    crowd.kill()
                    await crowd.wait()
            run.stop_all()
    result["load_after"] = loadavg()


# ---- report ------------------------------------------------------------------------------------


ROWS = [
    ("webpeer CPU s/min (/proc stat)", "webpeer_cpu_s_per_min"),
    ("webpeer CPU s/min (schedstat)", "webpeer_sched_cpu_s_per_min"),
    ("datagrams/min to server", "to_server_datagrams_per_min"),
    ("bytes/min to server", "to_server_bytes_per_min"),
    ("datagrams/min from server", "from_server_datagrams_per_min"),
    ("bytes/min from server", "from_server_bytes_per_min"),
    ("GET /api/peers ms (median)", "api_peers_ms_median"),
    ("GET /api/peers ms (max)", "api_peers_ms_max"),
    ("  of which webpeer on CPU, ms (median)", "api_peers_webpeer_cpu_ms_median"),
    ("  of which webpeer waiting for a CPU, ms (median)", "api_peers_webpeer_waited_ms_median"),
    ("/api/peers entries", "api_peers_entries"),
    ("contact changes in window", "contact_changes"),
    ("webpeer registered again in window", "webpeer_registered_again"),
    ("server event loop lag ms (max of samples)", "server_loop_lag_ms_max"),
    ("server loop-lag timers in window: all / late > 0.1 s / > 0.25 s / > 1 s", None),
    ("server peers_online before/after", None),
    ("crowd REFRESH ok / refused / lost in window", None),
    ("server RSS MiB with the crowd online", "server_rss_loaded_mib"),
    ("server CPU s/min", "server_cpu_s_per_min"),
    ("server CPU ms/min per online peer", "server_cpu_ms_per_min_per_online_peer"),
    ("crowd registration s (--fill register)", "crowd_register_s"),
    ("registry seeding s (--fill seed)", "seed_s"),
    ("load average before / after", None),
]


def cell(result: dict[str, Any], label: str, key: str | None) -> str:
    if key is not None:
        value = result.get(key, "")
        return f"{value:,}" if isinstance(value, int | float) else str(value)
    if label.startswith("server loop-lag timers"):
        lag = result.get("server_loop_lag_samples", {})
        return " / ".join(f"{lag.get(k, 0):,}" for k in ("count", "0.1", "0.25", "1.0"))
    if label.startswith("server peers_online"):
        return f"{result['server_online_before']:,} / {result['server_online_after']:,}"
    if label.startswith("crowd REFRESH"):
        w = result["crowd_window"]
        expected = result["size"] * result["window_s"] / (REFRESH_FRACTION * result["crowd_ttl"])
        return (
            f"{w.get('refresh_ok', 0):,} / {w.get('refresh_refused', 0)} / {w.get('refresh_lost', 0)}"
            f" (due: {expected:,.0f})"
        )
    return f"{result['load_before']} / {result['load_after']}"


def render(results: list[dict[str, Any]]) -> str:
    sizes = [r["size"] for r in results]
    head = "| | " + " | ".join(f"{s:,} online" for s in sizes)
    if len(results) > 1:
        head += f" | {sizes[-1]:,} vs {sizes[0]:,}"
    lines = [head + " |", "|---" * (len(sizes) + 1 + (len(results) > 1)) + "|"]
    for label, key in ROWS:
        row = f"| {label} | " + " | ".join(cell(r, label, key) for r in results)
        if len(results) > 1:
            ratio = ""
            if key is not None and key.startswith(
                ("webpeer", "to_server", "from_server", "api_peers_ms", "api_peers_webpeer")
            ):
                small, big = results[0][key], results[-1][key]
                ratio = f"{big / small:.2f}x" if small else ""
            row += f" | {ratio}"
        lines.append(row + " |")
    if len(results) > 1:
        small, big = results[0], results[-1]
        kib = (big["server_rss_loaded_mib"] - small["server_rss_loaded_mib"]) * 1024 / (big["size"] - small["size"])
        lines.append("")
        lines.append(
            f"Server memory per online peer (RSS difference {big['size']:,} vs {small['size']:,}): {kib:.2f} KiB"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    crowd = sub.add_parser("_crowd", help="internal: the load generator")
    crowd.add_argument("--port", type=int, required=True)
    crowd.add_argument("--count", type=int, required=True)
    crowd.add_argument("--sessions", type=Path)
    crowd.add_argument("--ttl", type=int, required=True)
    parser.add_argument(
        "--crowd-ttl",
        type=int,
        default=CROWD_TTL,
        help="TTL the crowd asks for; it refreshes at 35%% of it (60: 100,000 peers send 4,760 REFRESH/s)",
    )
    parser.add_argument(
        "--fill",
        choices=("seed", "register"),
        default="seed",
        help="seed: the registry file is written with the crowd online before the server starts "
        "(as after a restart), register: every crowd peer registers over UDP (SQLite: ~200/s here)",
    )
    parser.add_argument("--page", action="store_true", help="keep a page's websocket open through the window")
    parser.add_argument(
        "--api-every", type=float, default=2.0, help="GET /api/peers this often in the window (0: once, at its start)"
    )
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--registry", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--workdir", type=Path, help="where the runs' temporary directories go")
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "out" / "presence.json")
    args = parser.parse_args()
    if args.command == "_crowd":
        crowd_main(args)
        return
    os.sched_setaffinity(0, {0})  # the relay, the contacts and the HTTP client: beside the server
    random.seed(1)
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="peerlink-presence-", dir=args.workdir) as tmp:
            run = Run(size, Path(tmp), args.registry, args.fill, args.crowd_ttl)
            run.result["size"] = size
            run.result["registry"] = args.registry
            run.result["fill"] = args.fill
            run.result["crowd_ttl"] = args.crowd_ttl
            try:
                asyncio.run(run_size(run, args.seconds, args.page, args.api_every))
            except BaseException:
                # Keep the processes' logs of a failed run.
                logs = BENCH_DIR / "out" / f"presence-logs-{size}"
                shutil.rmtree(logs, ignore_errors=True)
                shutil.copytree(tmp, logs, ignore=shutil.ignore_patterns("*.sqlite3*", "*.bin"))
                log(f"logs of the failed run: {logs}")
                raise
            finally:
                run.stop_all()
            results.append(run.result)
            log(json.dumps(run.result))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(render(results))


if __name__ == "__main__":
    main()
