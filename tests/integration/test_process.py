"""``python -m rendezvous`` as a real process: its log lines, signals, kill -9, options.

Each test starts the server as a subprocess on a free loopback port with a
SQLite file in tmp_path, and talks to it over real UDP with
:class:`RendezvousClient` or a plain socket.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from processes import START, WAIT

from rendezvous.cli import build_parser
from rendezvous.client import RendezvousClient, RendezvousError, public_key_bytes, register_request
from rendezvous.sqlite_registry import SqliteRegistry
from rendezvous.stun import Address, Attr
from rendezvous.tokens import registration_payload

# A start under load takes seconds (tests/processes.py: START); a log line
# after a request normally comes at once (WAIT).  Both only bound how long a
# failure takes to show.
STARTUP_SECONDS = START


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**overrides: str) -> dict[str, str]:
    """The test's environment without any RENDEZVOUS_* setting of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RENDEZVOUS_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    env.update(overrides)
    return env


class ServerProcess:
    """One ``python -m rendezvous`` child whose stderr is collected line by line."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @property
    def address(self) -> Address:
        return ("127.0.0.1", self.port)

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.lines.append(line.decode(errors="replace").rstrip("\n"))
            self._changed.set()
        self._changed.set()

    def messages(self, level: str = "INFO") -> list[str]:
        """Log messages at ``level`` without the timestamp (format: date time LEVEL message)."""
        marker = f" {level} "
        return [line.split(marker, 1)[1] for line in self.lines if marker in line]

    async def wait_for(self, pattern: str, timeout: float = WAIT) -> str:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines:
                if regex.search(line):
                    return line
            if self.proc.returncode is not None and self._reader.done():
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass
        raise AssertionError(f"no log line matching {pattern!r}; got:\n" + "\n".join(self.lines))

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = WAIT) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await self._reader
        return code

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        await self._reader


async def start_server(db: Path, *extra: str, port: int | None = None) -> ServerProcess:
    """Start the server and wait until it says it is listening."""
    for _ in range(3):
        chosen = port or free_udp_port()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "rendezvous",
            "--host",
            "127.0.0.1",
            "--port",
            str(chosen),
            "--db",
            str(db),
            "--log-level",
            "info",
            *extra,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=clean_env(),
        )
        server = ServerProcess(proc, chosen)
        try:
            await server.wait_for(r"Running STUN Server on ", STARTUP_SECONDS)
            return server
        except AssertionError:
            await server.kill()
            if port is not None or "Address already in use" not in "\n".join(server.lines):
                raise
    raise AssertionError("no free port")


@pytest.fixture
async def processes():
    """Every server process a test starts is gone when the test ends."""
    started: list[ServerProcess] = []

    async def start(db: Path, *extra: str, port: int | None = None) -> ServerProcess:
        server = await start_server(db, *extra, port=port)
        started.append(server)
        return server

    yield start
    for server in started:
        await server.kill()


@pytest.fixture
async def clients():
    opened: list[RendezvousClient] = []

    async def open_client(server: Address, **kwargs: object) -> RendezvousClient:
        client = RendezvousClient(server, **kwargs)  # type: ignore[arg-type]
        await client.open()
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        client.close()


class LegacySocket:
    """What the original course client did: a plain UDP socket, sendto and recvfrom."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = int(self.sock.getsockname()[1])

    async def ask(self, server: Address, text: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        await loop.sock_sendto(self.sock, text, server)
        data, _ = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 2048), WAIT)
        return data

    def close(self) -> None:
        self.sock.close()


# ------------------------------------------------------------ (a) log lines


async def test_log_lines_match_the_original_project(tmp_path: Path, processes, clients) -> None:
    # LIST is routine (every page repeats it) and logged at debug: ask for debug too.
    server = await processes(tmp_path / "r.sqlite3", "--legacy-text", "--log-level", "debug")
    assert f"Running STUN Server on 127.0.0.1:{server.port}..." in server.messages()

    alice = await clients(server.address, nickname="alice")
    bob = await clients(server.address, nickname="bob")
    await alice.register()
    await bob.register()
    assert [e.peer_id for e in await alice.list_all()] == [2]
    await alice.connect(2)
    await alice.unregister()
    a = f"('127.0.0.1', {alice.address[1]})"
    b = f"('127.0.0.1', {bob.address[1]})"
    await server.wait_for(re.escape(f"Received UNREGISTER Request From Client: {a}") + "$")

    # The original course client's conversation, in plain text.
    legacy = LegacySocket()
    try:
        assert await legacy.ask(server.address, b"REGISTER") == b"REGISTER_ACK:3"
        assert (await legacy.ask(server.address, b"LIST")).startswith(b"LIST_ACK:")
        # Peer 1 speaks STUN only: no address for a legacy client.
        assert await legacy.ask(server.address, b"CONNECT:1") == b"ERROR:unknown peer 1"
        assert await legacy.ask(server.address, b"EXIT") == b"EXIT_ACK"
    finally:
        legacy.close()
    c = f"('127.0.0.1', {legacy.port})"
    await server.wait_for(re.escape(f"Received EXIT Request From Client: {c}") + "$")

    messages = server.messages()
    routine = server.messages("DEBUG")
    # Exactly the original project's wording, with each client's real port.
    assert messages.count(f"Received REGISTER Request From Client: {a}") == 1
    assert messages.count(f"Received REGISTER Request From Client: {b}") == 1
    assert f"Received LIST Request From Client: {a}" in routine
    assert f"Received LIST Request From Client: {a}" not in messages  # not at info
    assert f"Received CONNECT Request From Client: {a} to peer 2" in messages
    assert f"Received UNREGISTER Request From Client: {a}" in messages
    for line in ("REGISTER", "LIST", "CONNECT", "EXIT"):
        detail = " to peer 1" if line == "CONNECT" else ""
        assert f"Received {line} Request From Client: {c}{detail}" in (routine if line == "LIST" else messages), line
    # The lines are in the order the requests were made (at either level).
    order = [line.split(" ", 3)[3] for line in server.lines if " Received " in line]
    assert (
        order.index(f"Received LIST Request From Client: {a}")
        < order.index(f"Received CONNECT Request From Client: {a} to peer 2")
        < order.index(f"Received UNREGISTER Request From Client: {a}")
    )
    assert await server.stop() == 0
    assert server.messages()[-1] == "Rendezvous server stopped"
    assert server.messages("ERROR") == [] and server.messages("WARNING") == []


# ------------------------------------------------------------ (b) clean shutdown


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_stops_cleanly_and_writes_refreshes(tmp_path: Path, processes, clients, sig: int) -> None:
    db = tmp_path / "r.sqlite3"
    server = await processes(db)
    peers = [await clients(server.address, nickname=f"p{i}") for i in range(4)]
    registered_at = time.time()
    for peer in peers:
        assert (await peer.register(ttl=30)).ttl == 30
    # Refreshes only touch memory; the flush every 2 s or the one at shutdown
    # writes them.  Signal right away so that it is the shutdown's that counts.
    refreshed = peers[:3]
    before_refresh = time.time()
    for peer in refreshed:
        assert await peer.refresh(ttl=600) == 600
    after_refresh = time.time()
    assert await server.stop(sig) == 0
    assert time.time() - after_refresh < 2.0, "too slow to tell the shutdown flush from the periodic one"
    assert server.messages()[-1] == "Rendezvous server stopped"
    assert server.messages("ERROR") == []

    registry = SqliteRegistry(db)
    await registry.open()
    try:
        for peer in refreshed:
            assert peer.registration is not None
            record = await registry.get(peer.registration.peer_id)
            assert record is not None and record.identity == peer.public_key
            assert before_refresh - 0.01 <= record.last_seen <= after_refresh + 0.01
            assert record.expires_at == pytest.approx(record.last_seen + 600)
            assert record.observed == peer.address
            assert record.nickname == peer.nickname
        lazy = await registry.get(4)
        assert lazy is not None
        assert registered_at - 0.01 <= lazy.last_seen <= before_refresh + 0.01
        assert lazy.expires_at == pytest.approx(lazy.last_seen + 30)
    finally:
        await registry.close()

    # A restarted server still knows who is online, and their sessions still work.
    again = await processes(db, port=server.port)
    await again.wait_for(r"4 peers still online from before the restart")
    assert [e.peer_id for e in await peers[0].list_all()] == [2, 3, 4]
    assert await again.stop(sig) == 0


# ------------------------------------------------------------ (c) kill -9


async def register_key(client: RendezvousClient, key: Ed25519PrivateKey) -> int:
    """One REGISTER for ``key`` from ``client``'s socket (several may run at once on one socket)."""
    public_key = public_key_bytes(key)
    first = await client.request(register_request(public_key), check=False)
    challenge = first.get(Attr.CHALLENGE)
    if challenge is None:
        code, reason = first.get(Attr.ERROR_CODE)
        raise RendezvousError(code, reason, first)
    signature = key.sign(registration_payload(challenge, public_key))
    response = await client.request(register_request(public_key, challenge=challenge, signature=signature))
    peer_id: int = response.get(Attr.PEER_ID)
    return peer_id


KEYS = 800
SOCKETS = 40
KILL_AFTER = 300


@pytest.mark.timeout(180)  # a start under load may take up to START
async def test_acknowledged_registrations_survive_kill_9(tmp_path: Path, processes, clients) -> None:
    db = tmp_path / "r.sqlite3"
    server = await processes(db)
    keys = [Ed25519PrivateKey.generate() for _ in range(KEYS)]
    sockets = [await clients(server.address) for _ in range(SOCKETS)]
    acknowledged: dict[bytes, int] = {}
    refused: list[int] = []
    enough = asyncio.Event()

    async def worker(client: RendezvousClient, share: list[Ed25519PrivateKey]) -> None:
        for key in share:
            try:
                peer_id = await register_key(client, key)
            except RendezvousError as error:
                refused.append(error.code)  # 429 once the per-IP burst is spent: not acknowledged
                await asyncio.sleep(0.05)
                continue
            acknowledged[public_key_bytes(key)] = peer_id
            if len(acknowledged) >= KILL_AFTER:
                enough.set()

    tasks = [asyncio.create_task(worker(c, keys[i::SOCKETS])) for i, c in enumerate(sockets)]
    await asyncio.wait_for(enough.wait(), 3 * WAIT)
    server.proc.kill()  # SIGKILL, in the middle of the load
    await server.proc.wait()
    # A reply that reached us before the process died is an acknowledgement too.
    await asyncio.sleep(0.05)
    unfinished = sum(not t.done() for t in tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await server.kill()
    assert server.proc.returncode == -signal.SIGKILL
    assert unfinished > SOCKETS // 2, "the load should still have been running when the server died"
    assert len(acknowledged) < KEYS
    assert len(set(acknowledged.values())) == len(acknowledged), "two keys acknowledged with one id"
    assert set(refused) <= {429}

    # Restart on the same file: every acknowledged key gets its id back.
    restarted = await processes(db, port=server.port)
    for client in sockets:
        client.server = restarted.address
    items = list(acknowledged.items())
    by_key = {public_key_bytes(k): k for k in keys}
    mismatches: list[tuple[int, int]] = []

    async def reregister(client: RendezvousClient, share: list[tuple[bytes, int]]) -> None:
        for public_key, peer_id in share:
            for _attempt in range(20):
                try:
                    got = await register_key(client, by_key[public_key])
                    break
                except RendezvousError as error:
                    assert error.code == 429
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("rate limited for 2 s")
            if got != peer_id:
                mismatches.append((peer_id, got))

    await asyncio.gather(*(reregister(c, items[i::SOCKETS]) for i, c in enumerate(sockets)))
    assert mismatches == []
    # Ids are never reused: a newcomer gets one above every acknowledged id.
    newcomer = await register_key(sockets[0], Ed25519PrivateKey.generate())
    assert newcomer > max(acknowledged.values())
    assert await restarted.stop() == 0
    print(
        f"acknowledged {len(acknowledged)} of {KEYS} before kill -9; {unfinished} workers were mid-load; refused {len(refused)}"
    )


# ------------------------------------------------------------ (d) options and environment


def option_actions() -> list:
    return [a for a in build_parser()._actions if a.option_strings and a.dest != "help"]


def test_help_mentions_every_option_and_its_environment_variable() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rendezvous", "--help"], capture_output=True, text=True, env=clean_env(), timeout=20
    )
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert len(option_actions()) >= 7
    for action in option_actions():
        for option in action.option_strings:
            assert option in text, option
        env_name = "RENDEZVOUS_" + action.dest.upper()
        assert env_name in text, env_name


ENV_VALUES = {
    "host": ("::1", "::1"),
    "port": ("4000", 4000),
    "db": ("/tmp/elsewhere.sqlite3", "/tmp/elsewhere.sqlite3"),
    "registry": ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    "ttl": ("15", 15),
    "log_level": ("debug", "debug"),
    "legacy_text": ("1", True),
    "no_uvloop": ("yes", True),
    "no_fastpath": ("1", True),
    "peer_request_rate": ("7.5", 7.5),
    "other_address": ("127.0.0.2:3479", ("127.0.0.2", 3479)),
    "workers": ("3", 3),
    "metrics": ("127.0.0.1:9478", ("127.0.0.1", 9478)),
    "max_ids": ("5000", 5000),
    "id_retention_days": ("30", 30.0),
    "max_online_per_ip": ("8", 8),
    "no_mailbox": ("1", True),
    "mailbox_max_messages": ("20", 20),
    "mailbox_max_kb": ("64", 64),
    "mailbox_days": ("2.5", 2.5),
}


def test_every_option_reads_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("RENDEZVOUS_"):
            monkeypatch.delenv(name)
    defaults = build_parser().parse_args([])
    assert {a.dest for a in option_actions()} == set(ENV_VALUES), "a new option needs a row here"
    for dest, (text, value) in ENV_VALUES.items():
        monkeypatch.setenv("RENDEZVOUS_" + dest.upper(), text)
        assert getattr(build_parser().parse_args([]), dest) == value, dest
        assert getattr(defaults, dest) != value, dest
    # The command line wins over the environment.
    assert build_parser().parse_args(["--port", "5000"]).port == 5000
    # Flags read from the environment accept the usual spellings only.
    monkeypatch.setenv("RENDEZVOUS_LEGACY_TEXT", "0")
    assert build_parser().parse_args([]).legacy_text is False


async def test_server_configured_by_environment_alone(tmp_path: Path, clients) -> None:
    port = free_udp_port()
    db = tmp_path / "from-env.sqlite3"
    env = clean_env(
        RENDEZVOUS_HOST="127.0.0.1",
        RENDEZVOUS_PORT=str(port),
        RENDEZVOUS_DB=str(db),
        RENDEZVOUS_TTL="15",
        RENDEZVOUS_LOG_LEVEL="debug",
        RENDEZVOUS_LEGACY_TEXT="1",
        RENDEZVOUS_NO_UVLOOP="1",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rendezvous",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    server = ServerProcess(proc, port)
    try:
        await server.wait_for(re.escape(f"Running STUN Server on 127.0.0.1:{port}...") + "$", STARTUP_SECONDS)
        assert db.exists()
        client = await clients(server.address)
        assert (await client.register()).ttl == 15  # RENDEZVOUS_TTL is the default TTL
        legacy = LegacySocket()
        try:
            assert await legacy.ask(server.address, b"REGISTER") == b"REGISTER_ACK:2"  # RENDEZVOUS_LEGACY_TEXT
        finally:
            legacy.close()
        client.send_raw(b"\x00junk that is not STUN at all")
        await server.wait_for(r" DEBUG Dropped a datagram from ")  # RENDEZVOUS_LOG_LEVEL=debug
        assert await server.stop() == 0
    finally:
        await server.kill()


def test_bad_settings_exit_with_a_message(tmp_path: Path) -> None:
    def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "rendezvous", "--host", "127.0.0.1", *args],
            capture_output=True,
            text=True,
            env=clean_env(**env),
            timeout=20,
        )

    db = str(tmp_path / "x.sqlite3")
    port = str(free_udp_port())
    result = run("--ttl", "0", "--port", port, "--db", db)
    assert result.returncode != 0
    assert "--ttl must be between 1 and 86400" in result.stderr
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        result = run("--port", str(taken.getsockname()[1]), "--db", db)
    assert result.returncode == 1
    assert "Address already in use" in result.stderr
    # Bad values from the environment are usage errors too, and so is a
    # registry path that cannot be a database: one line, no traceback.
    cases = [
        ((), {"RENDEZVOUS_PORT": "abc", "RENDEZVOUS_DB": db}, "argument --port: invalid int value: 'abc'"),
        (("--port", port), {"RENDEZVOUS_TTL": "soon", "RENDEZVOUS_DB": db}, "argument --ttl: invalid int value"),
        (("--port", port, "--db", db), {"RENDEZVOUS_LOG_LEVEL": "verbose"}, "RENDEZVOUS_LOG_LEVEL must be one of"),
        (("--port", port, "--db", str(tmp_path)), {}, "rendezvous: cannot open registry"),
    ]
    for args, env, message in cases:
        result = run(*args, **env)
        assert result.returncode in (1, 2), (args, env, result.stderr)
        assert message in result.stderr, (args, env, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
