"""A real ``redis-server`` child process for the Redis registry's tests
(fixtures ``redis_server`` and ``redis_servers`` in tests/conftest.py)."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path


class RedisProcess:
    """One ``redis-server`` child on a free loopback port, its files in ``directory``.

    No persistence by default (``--save '' --appendonly no``); ``appendonly``
    turns the append-only file on, fsync'ed at every write, for tests that
    kill Redis and expect what it acknowledged back."""

    def __init__(self, directory: Path, *, appendonly: bool = False) -> None:
        self.directory = directory
        self.appendonly = appendonly
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        """Start (again, on the same port once it has one) and wait until it answers PING."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for _attempt in range(5):
            port = self.port or free_tcp_port()
            args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
            args += ["--dir", str(self.directory), "--daemonize", "no", "--loglevel", "warning"]
            args += ["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly else ["--appendonly", "no"]
            log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 (the child keeps it)
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            log.close()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                if redis_answers(port):
                    self.port = port
                    return self
                time.sleep(0.02)
            self.kill()
            if self.port:
                break  # its own port is taken: nothing to retry
        raise RuntimeError("redis-server did not start: " + (self.directory / "redis.log").read_text()[-2000:])

    def kill(self) -> None:
        """SIGKILL: what Redis had not written is lost."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisClusterProcesses:
    """A Redis Cluster of ``masters`` ``redis-server`` children (no replicas)
    on free loopback ports, given their slots and joined with CLUSTER
    ADDSLOTSRANGE and CLUSTER MEET; its files in ``directory``.  ``url`` is
    ``redis+cluster://`` naming the first node (the client learns the others
    from it)."""

    def __init__(self, directory: Path, masters: int = 3) -> None:
        self.directory = directory
        self.masters = masters
        self.ports: list[int] = []
        self.buses: list[int] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def start(self) -> RedisClusterProcesses:
        """Start the nodes, give them the 16384 slots and wait until every node says ``cluster_state:ok``."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for _index in range(self.masters):
            # The cluster bus needs a port too; the default (port + 10000) may be taken or past 65535.
            self.ports.append(free_tcp_port())
            self.buses.append(free_tcp_port())
        deadline = time.monotonic() + 60  # bounds a failure only: a loaded machine starts processes slowly
        self._launch(deadline)
        # What ``redis-cli --cluster create`` does, without its one-second waits:
        # each master takes a third of the slots, and the first meets the others.
        per = 16384 // self.masters
        for index, port in enumerate(self.ports):
            last = 16383 if index == self.masters - 1 else (index + 1) * per - 1
            assert command(port, b"CLUSTER ADDSLOTSRANGE %d %d" % (index * per, last)).startswith(b"+OK")
        for port, bus in zip(self.ports[1:], self.buses[1:], strict=True):
            assert command(self.ports[0], b"CLUSTER MEET 127.0.0.1 %d %d" % (port, bus)).startswith(b"+OK")
        while not all(cluster_ok(port) for port in self.ports):
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"the cluster did not reach cluster_state:ok: {self._logs()}")
            time.sleep(0.05)
        return self

    def restart(self) -> None:
        """SIGKILL every node, start them again on their ports (their
        nodes.conf keeps the slots; the data is gone) and wait for
        ``cluster_state:ok``."""
        self.kill()
        deadline = time.monotonic() + 60
        self._launch(deadline)
        while not all(cluster_ok(port) for port in self.ports):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not come back: {self._logs()}")
            time.sleep(0.05)

    def _launch(self, deadline: float) -> None:
        """Start one redis-server per port and wait until each answers PING."""
        for index, (port, bus) in enumerate(zip(self.ports, self.buses, strict=True)):
            node_dir = self.directory / f"node{index}"
            node_dir.mkdir(exist_ok=True)
            args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            args += ["--cluster-enabled", "yes", "--cluster-port", str(bus), "--cluster-config-file", "nodes.conf"]
            args += ["--dir", str(node_dir), "--daemonize", "no", "--loglevel", "warning"]
            log = open(node_dir / "redis.log", "ab")  # noqa: SIM115 (the child keeps it)
            self.procs.append(subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log))
            log.close()
        for port, proc in zip(self.ports, self.procs, strict=True):
            while not redis_answers(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"redis-server on {port} did not start: {self._logs()}")
                time.sleep(0.02)

    def flush(self) -> None:
        """Empty every node (between tests sharing one cluster)."""
        for port in self.ports:
            assert command(port, b"FLUSHALL").startswith(b"+OK"), port

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.procs = []

    def _logs(self) -> str:
        return " | ".join(p.read_text()[-500:] for p in self.directory.glob("node*/redis.log"))


def cluster_ok(port: int) -> bool:
    try:
        return b"cluster_state:ok" in command(port, b"CLUSTER INFO")
    except OSError:
        return False


def command(port: int, line: bytes) -> bytes:
    """One inline command to the Redis on ``port``; the start of its reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(line + b"\r\n")
        return sock.recv(4096)
