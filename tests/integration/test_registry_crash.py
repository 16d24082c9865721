"""An acknowledged id survives kill -9 of the process that assigned it."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rendezvous.sqlite_registry import SqliteRegistry

# The child assigns ids to fresh random identities in small concurrent
# bursts, forever, and prints each one only after assign_id returned.
CHILD = """
import asyncio, os, sys
from rendezvous.sqlite_registry import SqliteRegistry

async def main(path):
    registry = SqliteRegistry(path)
    await registry.open()
    while True:
        identities = [os.urandom(32) for _ in range(7)]
        ids = await asyncio.gather(*(registry.assign_id(i) for i in identities))
        for identity, peer_id in zip(identities, ids):
            sys.stdout.write(f"{peer_id} {identity.hex()}\\n")
        sys.stdout.flush()
        await asyncio.sleep(0)

asyncio.run(main(sys.argv[1]))
"""

ACKNOWLEDGED_BEFORE_KILL = 500


def read_until(proc: subprocess.Popen[bytes], lines: int, deadline: float) -> bytes:
    """The child's stdout until it holds at least ``lines`` newlines."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buffer = b""
    while buffer.count(b"\n") < lines:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or proc.poll() is not None:
            got = buffer.count(b"\n")
            pytest.fail(f"child printed {got} lines, exit status {proc.poll()}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            buffer += os.read(fd, 65536)
    return buffer


@pytest.mark.timeout(60)
async def test_acknowledged_ids_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    src = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(src))
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, env=env)
    try:
        output = read_until(proc, ACKNOWLEDGED_BEFORE_KILL, time.monotonic() + 40)  # a bound only: a second, unloaded
        assert proc.poll() is None, "the child must die mid-work, not finish"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.stdout is not None
        # Lines printed between our last read and the kill count too.
        output += proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    acknowledged: dict[bytes, int] = {}
    complete = output[: output.rfind(b"\n") + 1]  # a torn last line is not an ack
    for line in complete.decode().splitlines():
        id_text, identity_hex = line.split()
        acknowledged[bytes.fromhex(identity_hex)] = int(id_text)
    assert len(acknowledged) >= ACKNOWLEDGED_BEFORE_KILL
    assert len(set(acknowledged.values())) == len(acknowledged)

    registry = SqliteRegistry(path)
    await registry.open()
    try:
        for identity, peer_id in acknowledged.items():
            assert await registry.lookup_id(identity) == peer_id
        # Ids are dense from 1: the child may have committed a burst it never
        # printed, but never skipped or repeated one.
        total = await registry.count()
        assert total >= len(acknowledged)
        assert max(acknowledged.values()) <= total
        assert await registry.get(total) is not None
        assert await registry.assign_id(os.urandom(32)) == total + 1
    finally:
        await registry.close()
