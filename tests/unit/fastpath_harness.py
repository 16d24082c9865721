"""The compiled fast path for unit tests: built from the current C source.

The library is compiled once per test session into a temporary directory
(``hatch_build.compile_library``, the build hook's own function), so the
tests always run the C code as it is in the tree, not a stale in-place
build.  Without a C compiler the tests that need it are skipped, saying why.
"""

from __future__ import annotations

import array
import importlib.util
import sys
from pathlib import Path

import pytest

from rendezvous import fastpath
from rendezvous.core import ServerCore
from rendezvous.stun import Address

ROOT = Path(__file__).resolve().parents[2]


def build_library(directory: Path) -> fastpath.Library:
    spec = importlib.util.spec_from_file_location("peerlink_hatch_build", ROOT / "hatch_build.py")
    assert spec is not None and spec.loader is not None
    hook = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, hook)
    spec.loader.exec_module(hook)
    output = directory / "libfastpath.so"
    problem = hook.compile_library(output)
    if problem is not None:
        pytest.skip(f"the fast path cannot be built here: {problem}")
    library = fastpath.load(output)
    assert library is not None, "built but not loadable"
    return library


def feed_through(
    fast: fastpath.FastPath, core: ServerCore, data: bytes, address: Address, now: float
) -> list[tuple[bytes, Address]] | None:
    """One datagram as the server handles it with the fast path on: the C
    side's reply (the core told, as the socket reader tells it), or None when
    it left the datagram to the core, which then has it."""
    answer = fast.answer(data, address)
    if answer is None:
        core.receive_datagram(data, address, now)
        return None
    reply, peer_id, ttl = answer
    refreshed = array.array("I", [peer_id, ttl] if peer_id else [])
    core.fast_answered(0 if peer_id else 1, memoryview(refreshed), now)
    return [(reply, address)]
