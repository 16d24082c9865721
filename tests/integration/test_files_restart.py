"""A receiver killed (SIGKILL) half way through a file resumes it after a
restart: a real ``webpeer`` process receives, an in-process node sends,
over loopback UDP and QUIC with an in-process rendezvous."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
import test_nodes
from test_nodes import wait_for

from webpeer.node import PeerNode

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "restart-test-token"
DEADLINE = 30.0
SIZE = 8 * 1024 * 1024

# Two process starts (a few seconds each on a loaded machine) and 8 MiB.
pytestmark = pytest.mark.slow

rendezvous = test_nodes.rendezvous
nodes = test_nodes.nodes


async def start_receiver(server: tuple[str, int], data_dir: Path, log: Path) -> tuple[asyncio.subprocess.Process, str]:
    """``python -m webpeer`` on loopback; returns it and its site's base URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEBPEER_", "RENDEZVOUS_"))}
    env["PYTHONPATH"] = str(ROOT)
    with log.open("ab") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "webpeer",
            "--server",
            f"{server[0]}:{server[1]}",
            "--http-port",
            "0",
            "--token",
            TOKEN,
            "--name",
            "receiver",
            "--data-dir",
            str(data_dir),
            "--no-browser",
            "--udp-host",
            "127.0.0.1",
            "--log-level",
            "warning",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), DEADLINE)).decode()
    match = re.match(r"Open (http://127\.0\.0\.1:\d+)/\?token=", line)
    assert match, f"the receiver printed {line!r}:\n{log.read_text(errors='replace')}"
    return process, match[1]


async def settled(read: Callable[[], int], quiet: float = 0.5) -> int:
    """The value once it has not changed for ``quiet`` seconds (at most DEADLINE)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    value, since = read(), loop.time()
    while loop.time() < deadline:
        await asyncio.sleep(0.05)
        if read() != value:
            value, since = read(), loop.time()
        elif loop.time() - since >= quiet:
            return value
    raise AssertionError("the sender kept sending to a dead peer")


async def test_a_receiver_killed_half_way_resumes_after_restart(nodes, tmp_path: Path, rendezvous) -> None:
    sender: PeerNode = await nodes("sender")
    content = os.urandom(SIZE)
    data_dir, log = tmp_path / "receiver", tmp_path / "receiver.log"
    process, base = await start_receiver(rendezvous.address, data_dir, log)
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            # Its id once it has registered (a loaded machine may take a while):
            # asking the sender about an id of None would make a session for None.
            deadline = asyncio.get_running_loop().time() + DEADLINE
            while True:
                async with http.get(f"{base}/api/me") as response:
                    me = await response.json()
                if me["id"] is not None:
                    break
                assert asyncio.get_running_loop().time() < deadline, "the receiver did not register"
                await asyncio.sleep(0.05)
            receiver_id = await wait_for(lambda: sender.peer_state(me["id"]).online and me["id"], DEADLINE, "listed")

            async def chunks():
                yield content

            sent = await sender.send_file(receiver_id, "big.bin", "", chunks())
            file_id = sent["id"]

            async def offered() -> bool:
                async with http.get(f"{base}/api/files?peer={sender.registration.peer_id}") as response:
                    return any(f["id"] == file_id for f in await response.json())

            deadline = asyncio.get_running_loop().time() + DEADLINE
            while not await offered():
                assert asyncio.get_running_loop().time() < deadline, "the offer did not arrive"
                await asyncio.sleep(0.05)
            async with http.post(f"{base}/api/files/{file_id}/accept") as response:
                assert response.status == 200, await response.text()
                partial = data_dir / "files" / (await response.json())["name"]
        await wait_for(lambda: partial.exists() and partial.stat().st_size >= SIZE // 2, DEADLINE, "half of it")
        process.send_signal(signal.SIGKILL)
        await process.wait()
        held = partial.stat().st_size
        assert held < SIZE
        # Acknowledgements already on their way when it died let the sender
        # top the dead stream up a little more: count from when that stopped.
        sent_before = await settled(lambda: sender.stats["file_bytes_sent"])
        process, base = await start_receiver(rendezvous.address, data_dir, log)
        await wait_for(lambda: sender.store.get_file(file_id).status == "complete", 60, "complete after the restart")
        assert hashlib.sha256(partial.read_bytes()).hexdigest() == sent["sha256"]
        sent_again = sender.stats["file_bytes_sent"] - sent_before
        # What the receiver lacked, and no more than ~10% of the file again.
        assert SIZE - held <= sent_again <= SIZE - held + SIZE // 10, (held, sent_again)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
    assert "Traceback" not in log.read_text(errors="replace"), log.read_text()
