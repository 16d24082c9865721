"""Command-line STUN clients from Debian against our server.

- ``turnutils_stunclient`` (coturn): an RFC 5389/8489 client (magic cookie,
  XOR-MAPPED-ADDRESS).  coturn 4.6 has no RFC 3489 mode; its only option, -f,
  forces RFC 5780 NAT-behaviour tests (CHANGE-REQUEST, RESPONSE-PORT), which
  need a server with a second address, so it is not used here.
- ``stun`` (package stun-client, the classic stund client): RFC 3489 requests
  without the magic cookie, answered with MAPPED-ADDRESS.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest

from rendezvous.server import RendezvousServer

pytestmark = pytest.mark.interop

Run = Callable[[Sequence[str], float], Awaitable[Any]]  # the `run` fixture, tests/interop/conftest.py
Tool = Callable[[str, str], str]

# "0: : IPv4. UDP reflexive addr: 127.0.0.1:52982" (IPv6: "::1:57968").
REFLEXIVE = re.compile(r"UDP reflexive addr: (?P<host>[0-9A-Fa-f.:]+):(?P<port>\d+)\s*$", re.MULTILINE)


async def test_turnutils_stunclient_reports_the_mapped_address(
    stun_server: RendezvousServer, tool: Tool, run: Run, server_stats: Callable[[RendezvousServer], dict[str, int]]
) -> None:
    binary = tool("turnutils_stunclient", "coturn")
    host, port = stun_server.address
    result = await run([binary, "-p", str(port), host], 10.0)

    assert result.returncode == 0, result.output
    # It prints the address to its log and to stdout: the same line twice.
    found = {(match["host"], int(match["port"])) for match in REFLEXIVE.finditer(result.output)}
    assert len(found) == 1, result.output
    ((mapped_host, mapped_port),) = found
    assert mapped_host == host
    assert 0 < mapped_port < 65536
    assert "error" not in result.output.lower()
    counters = server_stats(stun_server)
    assert counters["binding"] == 1
    assert counters.get("dropped", 0) == 0


def free_udp_port() -> int:
    """A port free on the loopback right now, for a client that wants one named."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_rfc3489_stun_client_reads_our_mapped_address(server: RendezvousServer, tool: Tool, run: Run) -> None:
    binary = tool("stun", "stun-client")
    host, port = server.address
    source_port = free_udp_port()
    # Test number 1 is a single Binding request (RFC 3489 test I); without it
    # the client runs its whole NAT-type discovery, which needs a server with
    # two addresses.  -p fixes the source port so the mapping can be checked.
    result = await run([binary, f"{host}:{port}", "1", "-v", "-p", str(source_port)], 10.0)

    assert result.returncode == 0, result.output
    assert f"mappedAddr={host}:{source_port}" in result.output, result.output
    # ok=1: the client parsed every attribute of the reply.  RFC 3489 parsers
    # like this one insist that text attributes (our SOFTWARE, its SERVER-NAME)
    # have a length that is a multiple of 4; ok=0 here means we broke that.
    assert re.search(r"^\s*ok=1\s*$", result.output, re.MULTILINE), result.output
    assert server.core is not None
    # Answered on the classic path (the request had no magic cookie).
    assert server.core.stats["binding_classic"] == 1
    assert server.core.stats["binding"] == 0
    assert server.core.stats["dropped"] == 0
