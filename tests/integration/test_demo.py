"""`make demo` (scripts/demo.py) on ports of its own: when one peer stops, the
server and the other peer keep answering, the demo prints the command that
starts the stopped one again, and that command does."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import socket
import sys
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 30.0  # seconds for a line to come: three Python processes start on a loaded machine


def free_udp_port_pair() -> int:
    """A UDP port free on 127.0.0.1 whose next one is free on 127.0.0.2 (the server's second address)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as second:
                    second.bind(("127.0.0.2", port + 1))
            except OSError:
                continue
            return port
    raise AssertionError("no free pair of UDP ports")


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def read_until(stream: asyncio.StreamReader, pattern: str, seen: list[str]) -> re.Match[str]:
    """The first line (from now on) matching ``pattern``; every line read goes to ``seen``."""
    regex = re.compile(pattern)
    deadline = asyncio.get_running_loop().time() + DEADLINE
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        assert remaining > 0, f"no line matching {pattern!r}; got:\n" + "\n".join(seen)
        try:
            raw = await asyncio.wait_for(stream.readline(), remaining)
        except TimeoutError:
            continue  # the assert above says what was missing
        assert raw, f"output ended before {pattern!r}; got:\n" + "\n".join(seen)
        line = raw.decode(errors="replace").rstrip("\n")
        seen.append(f"{asyncio.get_running_loop().time():.1f} {line}")
        if match := regex.search(line):
            return match


async def says_its_name(session: aiohttp.ClientSession, url: str) -> str:
    """GET /api/me of the page at ``url`` (its token from the URL)."""
    base, token = url.split("/?token=")
    async with session.get(f"{base}/api/me", headers={"Authorization": f"Bearer {token}"}) as response:
        assert response.status == 200
        return str((await response.json())["name"])


async def test_the_demo_keeps_running_when_a_peer_stops_and_says_how_to_start_it_again(tmp_path: Path) -> None:
    server_port = free_udp_port_pair()
    ports = [free_tcp_port(), free_tcp_port()]
    demo = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "scripts" / "demo.py"),
        "--server-port",
        str(server_port),
        "--http-ports",
        f"{ports[0]},{ports[1]}",
        "--dir",
        str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the children go with it if this test fails
    )
    restarted: asyncio.subprocess.Process | None = None
    seen: list[str] = []
    try:
        assert demo.stdout is not None
        alice = await read_until(demo.stdout, r"alice's page: +(\S+) +pid (\d+)$", seen)
        bob = await read_until(demo.stdout, r"bob's page: +(\S+) +pid (\d+)$", seen)
        async with aiohttp.ClientSession() as session:
            assert await says_its_name(session, alice[1]) == "alice"
            assert await says_its_name(session, bob[1]) == "bob"

            os.kill(int(bob[2]), signal.SIGTERM)  # bob stops; the demo goes on
            await read_until(demo.stdout, r"demo: bob stopped \(exit code 0\); the others keep running", seen)
            command = (await read_until(demo.stdout, r"^ +(\S.*--name bob.*)$", seen))[1]
            assert demo.returncode is None
            assert await says_its_name(session, alice[1]) == "alice"

            # The printed command starts bob again, on his port, with his data.
            restarted = await asyncio.create_subprocess_exec(
                *shlex.split(command),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                stdin=asyncio.subprocess.DEVNULL,
            )
            assert restarted.stdout is not None
            url = (await read_until(restarted.stdout, r"^Open (\S+)$", seen))[1]
            assert url.startswith(f"http://127.0.0.1:{ports[1]}/")
            assert await says_its_name(session, url) == "bob"
            assert await says_its_name(session, alice[1]) == "alice"
            assert demo.returncode is None
        restarted.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(restarted.wait(), DEADLINE) == 0
        demo.send_signal(signal.SIGTERM)  # as Ctrl-C: stops the server and alice, exits 0
        assert await asyncio.wait_for(demo.wait(), DEADLINE) == 0
    finally:
        if restarted is not None and restarted.returncode is None:
            restarted.kill()
            await restarted.wait()
        if demo.returncode is None:
            os.killpg(demo.pid, signal.SIGKILL)
            await demo.wait()
