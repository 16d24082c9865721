"""Fixtures for the interoperability tests: a rendezvous server on either
loopback family, and third-party programs run as real subprocesses.

Every address used here is 127.0.0.1 or ::1: the programs under test are
pointed at our server on the loopback and nowhere else.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastpath_servers import PATHS, server_on_path

from rendezvous.server import RendezvousServer


def loopback_available(host: str) -> bool:
    """Whether this host can bind a UDP socket on ``host`` (``::1`` is absent
    in some containers)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((host, 0))
    except OSError:
        return False
    return True


@pytest.fixture(params=["127.0.0.1", "::1"], ids=["ipv4", "ipv6"])
def loopback_host(request: pytest.FixtureRequest) -> str:
    """Each loopback address in turn; IPv6 skips where ``::1`` is missing."""
    host: str = request.param
    if not loopback_available(host):
        pytest.skip(f"no {host} loopback on this host")
    return host


@pytest.fixture(params=PATHS)
async def stun_server(
    loopback_host: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[RendezvousServer]:
    """A rendezvous server with the default configuration on ``loopback_host``,
    answering bare Binding and REFRESH through the compiled fast path
    (rendezvous/_fastpath.c) and then through the Python path: every client
    must get the same answers from both."""
    async with server_on_path(request.param, tmp_path / "interop.sqlite3", loopback_host) as server:
        yield server


def stats(server: RendezvousServer) -> dict[str, int]:
    assert server.core is not None
    return dict(server.core.stats)


@pytest.fixture
def server_stats() -> Callable[[RendezvousServer], dict[str, int]]:
    """A snapshot of a running server's counters."""
    return stats


def find_tool(command: str, package: str) -> str:
    """The path of ``command``.  Missing: skip when we could not install it
    anyway (not root), fail when we could (root), so a CI run as root never
    passes by skipping."""
    path = shutil.which(command)
    if path is not None:
        return path
    hint = f"{command} is not installed (Debian package {package}); scripts/system-deps.sh installs it"
    if os.geteuid() != 0:
        pytest.skip(f"{hint} when run as root")
    pytest.fail(f"{hint}: run it (we are root, so this is not skipped)")


@pytest.fixture
def tool() -> Callable[[str, str], str]:
    """``tool(command, debian_package)`` -> path, see :func:`find_tool`."""
    return find_tool


@dataclass(frozen=True)
class ToolResult:
    returncode: int
    output: str  # stdout and stderr, interleaved as the program wrote them


async def run_tool(argv: Sequence[str], timeout: float) -> ToolResult:
    """Run a program without blocking the event loop (our server lives on the
    same loop and must answer it).  STUN command-line clients wait forever for
    a reply that never comes, so a timeout kills it and fails the test."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        out, _ = await process.communicate()
        pytest.fail(f"{argv[0]} got no answer within {timeout} s; it printed:\n{out.decode(errors='replace')}")
    assert process.returncode is not None
    return ToolResult(process.returncode, out.decode(errors="replace"))


@pytest.fixture
def run() -> Callable[[Sequence[str], float], Awaitable[ToolResult]]:
    """``await run(argv, timeout)`` -> :class:`ToolResult`, see :func:`run_tool`."""
    return run_tool
