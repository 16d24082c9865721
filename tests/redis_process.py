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
