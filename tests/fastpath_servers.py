"""A rendezvous server on either answering path, for the tests that run on
both: the compiled fast path (rendezvous/_fastpath.c) and the Python path
must give every client the same answers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rendezvous.core import ServerConfig
from rendezvous.server import RendezvousServer
from rendezvous.sqlite_registry import SqliteRegistry

PATHS = ["compiled", "python"]  # the fixtures' params


@contextlib.asynccontextmanager
async def server_on_path(path: str, database: Path, host: str) -> AsyncIterator[RendezvousServer]:
    """A started server with the default configuration on ``host``, port 0,
    answering through ``path`` (one of :data:`PATHS`); the test is skipped
    when the compiled library was not built (no C compiler at install time)."""
    compiled = path == "compiled"
    server = RendezvousServer(ServerConfig(), SqliteRegistry(database), host, 0, fast_path=compiled)
    await server.start()
    try:
        if compiled and not server.fast_path_used:
            pytest.skip("the compiled fast path is not built here (no C compiler at install time)")
        yield server
    finally:
        await server.stop()
