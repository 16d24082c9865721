"""The real programs as child processes, for the integration and browser tests.

One place for what every test that runs ``python -m rendezvous`` or
``python -m webpeer`` needs: a free loopback port; the child's environment
(ours, less any WEBPEER_*/RENDEZVOUS_* setting of the caller's, with this
tree first on PYTHONPATH); a child whose stderr is always read, since a full
pipe would stall it, kept as lines and, when asked, appended to a log file;
the page URL a webpeer prints; and waiting for a condition with a deadline
instead of sleeping.

Deadlines are generous on purpose: they only bound how long a failure takes
to show, and CI is a noisy two-core machine where a process start alone can
take seconds.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from signal import SIGCONT, SIGTERM
from typing import Any, Self, TypeVar

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
WAIT = 20.0
"""Seconds to wait for something that normally takes well under one."""
START = 60.0
"""Seconds a program may take to start: its imports alone need about a second of CPU, and a
loaded two-core machine gives each process a fraction of one."""

C = TypeVar("C", bound="Child")

OPEN_LINE = re.compile(r"Open (http://127\.0\.0\.1:(\d+)/\?token=(\S+))")


def child_env(**overrides: str) -> dict[str, str]:
    """Our environment for a child: no WEBPEER_*/RENDEZVOUS_* setting leaks into it, and it runs this tree."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEBPEER_", "RENDEZVOUS_"))}
    env["PYTHONPATH"] = str(ROOT)
    env.update(overrides)
    return env


def free_udp_port(*, dual_stack: bool = False) -> int:
    """A UDP port free on 127.0.0.1 (or, with ``dual_stack``, on both ::1 and 127.0.0.1)."""
    if dual_stack:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", 0))
            return int(sock.getsockname()[1])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_until(
    check: Callable[[], Any], timeout: float = WAIT, what: str = "the condition", step: float = 0.05
) -> Any:
    """Call ``check`` (plain or async) until it returns something true, and return that."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(step)


class Child:
    """One ``python -m PROGRAM`` child; its stderr read as it comes."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path | None = None) -> None:
        self.proc = proc
        self.log = log
        self.lines: list[str] = []
        self.started = time.monotonic()
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def spawn(
        cls,
        *args: str,
        log: Path | None = None,
        wrap: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> Self:
        """``[WRAP...] python -m ARGS``; stderr kept (and appended to ``log``), stdout a pipe."""
        proc = await asyncio.create_subprocess_exec(
            *wrap,
            sys.executable,
            "-m",
            *args,
            env=env or child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        return cls(proc, log)

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        with self.log.open("ab") if self.log is not None else open(os.devnull, "wb") as log:
            while line := await self.proc.stderr.readline():
                log.write(line)
                log.flush()
                self.lines.append(line.decode(errors="replace").rstrip("\n"))
                self._changed.set()
        self._changed.set()

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def text(self) -> str:
        """Everything it wrote to stderr so far."""
        return "\n".join(self.lines)

    def logged(self) -> str:
        """Its log file (every run of the program that appended to it), or else what it wrote so far."""
        return self.log.read_text(errors="replace") if self.log is not None else self.text()

    async def wait_for_line(self, pattern: str, timeout: float = WAIT) -> float:
        """Seconds from the start until a stderr line matched ``pattern``; fails if none does in time."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for line in self.lines[seen:]:
                if regex.search(line):
                    return time.monotonic() - self.started
            seen = len(self.lines)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._reader.done():
                raise AssertionError(f"no line matching {pattern!r} in:\n{self.text()}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    def signal(self, number: int) -> None:
        self.proc.send_signal(number)

    async def exit_code(self, timeout: float = WAIT) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await self._reader
        return code

    async def stop(self, sig: int = SIGTERM, timeout: float = WAIT) -> int:
        """Signal it (after SIGCONT: a paused child could not act on it) and wait for its exit status."""
        if self.proc.returncode is None:
            self.proc.send_signal(SIGCONT)
            self.proc.send_signal(sig)
        return await self.exit_code(timeout)

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.exit_code()


class WebPeer(Child):
    """A ``webpeer`` child serving its page: the URL it printed, and its HTTP API."""

    url = ""
    port = 0
    token = ""
    _stdout_reader: asyncio.Task[None] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Origin": self.base}

    async def call(self, session: aiohttp.ClientSession, method: str, path: str, body: Any = None) -> Any:
        """One API request that must succeed (200 or 201); its JSON."""
        async with session.request(method, self.base + path, json=body, headers=self.headers) as response:
            assert response.status in (200, 201), await response.text()
            return await response.json()

    async def get(self, session: aiohttp.ClientSession, path: str) -> Any:
        return await self.call(session, "GET", path)

    async def post(self, session: aiohttp.ClientSession, path: str, body: Any) -> Any:
        return await self.call(session, "POST", path, body)

    async def _read_url(self, timeout: float) -> None:
        assert self.proc.stdout is not None
        try:
            line = (await asyncio.wait_for(self.proc.stdout.readline(), timeout)).decode()
        except TimeoutError:
            raise AssertionError(f"the webpeer printed no URL in {timeout} s:\n{self.text()}") from None
        match = OPEN_LINE.match(line)
        assert match, f"the webpeer printed {line!r}:\n{self.text()}"
        self.url, self.port, self.token = match[1], int(match[2]), match[3]
        # Keep reading stdout too, so that the child never blocks on a full pipe.
        self._stdout_reader = asyncio.create_task(_drain(self.proc.stdout))


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(4096):
        pass


async def start_rendezvous(port: int, db: Path, *extra: str, host: str = "127.0.0.1", log: Path | None = None) -> Child:
    """``rendezvous`` on ``host:port`` with the SQLite file ``db``, once it says it is listening."""
    args = ["rendezvous", "--host", host, "--port", str(port), "--db", str(db), "--log-level", "info", *extra]
    server = await Child.spawn(*args, log=log)
    await server.wait_for_line("Running STUN Server on ", START)
    return server


async def start_webpeer(
    server: str,
    name: str,
    data_dir: Path,
    *extra: str,
    log: Path | None = None,
    wrap: Sequence[str] = (),
    timeout: float = START,
) -> WebPeer:
    """``webpeer`` for ``server`` (HOST:PORT) with its page on a free port, once it printed the URL."""
    args = ["webpeer", "--server", server, "--http-port", "0", "--name", name, "--data-dir", str(data_dir)]
    peer = await WebPeer.spawn(*args, "--no-browser", *extra, log=log, wrap=wrap)
    await peer._read_url(timeout)
    return peer


class Net:
    """One rendezvous on a free loopback port and the webpeers that use it; logs in ``tmp_path``.

    The ``net`` fixture (tests/conftest.py) stops every process it started."""

    def __init__(self, tmp_path: Path, session: aiohttp.ClientSession) -> None:
        self.tmp_path, self.session = tmp_path, session
        self.port = free_udp_port()
        self.processes: list[Child] = []

    async def rendezvous(self) -> Child:
        log = self.tmp_path / "rendezvous.log"
        return self._started(await start_rendezvous(self.port, self.tmp_path / "r.db", log=log))

    async def webpeer(self, name: str, data_dir: Path | None = None, *extra: str) -> WebPeer:
        server = f"127.0.0.1:{self.port}"
        data_dir = data_dir or self.tmp_path / name
        log = self.tmp_path / f"{name}.log"
        return self._started(await start_webpeer(server, name, data_dir, "--udp-host", "127.0.0.1", *extra, log=log))

    def _started(self, process: C) -> C:
        self.processes.append(process)
        return process

    async def stop_all(self) -> None:
        for process in self.processes:
            if process.returncode is None:
                await process.stop()

    async def get(self, peer: WebPeer, path: str) -> Any:
        return await peer.call(self.session, "GET", path)

    async def send(self, peer: WebPeer, to: int, text: str) -> dict[str, Any]:
        async with self.session.post(
            peer.base + "/api/messages", json={"to": to, "text": text}, headers=peer.headers
        ) as response:
            assert response.status == 201, await response.text()
            result: dict[str, Any] = await response.json()
            return result

    async def conversation(self, peer: WebPeer, other: int) -> list[dict[str, Any]]:
        result = await self.get(peer, f"/api/messages?peer={other}&limit=5000")
        assert isinstance(result, list)
        return result

    async def registered(self, peer: WebPeer) -> int:
        """The peer's id, once it is registered."""

        async def check() -> int:
            me = await self.get(peer, "/api/me")
            return int(me["id"]) if me["registered"] else 0

        result: int = await wait_until(check, WAIT, "registered")
        return result


def assert_no_traceback(*children: Child) -> None:
    for child in children:
        assert "Traceback" not in child.logged(), child.logged()[-3000:]


async def statuses(net: Net, sender: WebPeer, to: int) -> dict[str, int]:
    """How many of ``sender``'s messages to ``to`` are in each status."""
    counts: dict[str, int] = {}
    for message in await net.conversation(sender, to):
        if message["from"] != to:
            counts[str(message["status"])] = counts.get(str(message["status"]), 0) + 1
    return counts


async def all_delivered(net: Net, sender: WebPeer, to: int, count: int) -> bool:
    return (await statuses(net, sender, to)).get("delivered", 0) == count
