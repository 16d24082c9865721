"""Delivery under faults, with real processes on loopback (issue 9): the
receiver killed, paused, or out of disk; the sender does nothing but wait.

The outages here are as long as the rule needs, not as long as the issue's
report: what matters is that they outlast every timer that could paper over
them (QUIC's idle timeout, the connect timeout, and, for the pause, the
paused peer's registration TTL).  ``PEERLINK_LONG_FAULTS=1`` runs the
report's own numbers (2,000 messages, a 45 s kill, a 90 s pause).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import pytest
from processes import WAIT, Net, all_delivered, assert_no_traceback, statuses, wait_until

LONG = os.environ.get("PEERLINK_LONG_FAULTS") == "1"
BURST = 2000 if LONG else 300
KILLED_FOR = 45.0 if LONG else 15.0
PAUSED_FOR = 90.0 if LONG else 25.0
PAUSED_TTL = 60 if LONG else 10  # the paused peer's registration lapses while it sleeps

pytestmark = pytest.mark.slow


async def test_messages_to_a_killed_receiver_are_all_delivered_when_it_returns(net: Net) -> None:
    await net.rendezvous()
    alice = await net.webpeer("alice")
    bob = await net.webpeer("bob")
    bob_id = await net.registered(bob)
    await net.registered(alice)
    await net.send(alice, bob_id, "hello")
    await wait_until(lambda: all_delivered(net, alice, bob_id, 1), WAIT, "the first message")
    sends = [asyncio.create_task(net.send(alice, bob_id, f"burst {n}")) for n in range(BURST)]
    await asyncio.sleep(0.3)
    bob.signal(signal.SIGKILL)  # mid-burst
    await asyncio.gather(*sends)

    async def shown_offline() -> bool:
        peers = await net.get(alice, "/api/peers")
        assert isinstance(peers, list)
        return not next(p for p in peers if p["id"] == bob_id)["online"]

    # How soon is tests/unit/test_engine.py's to say, in simulated time (no
    # more than QUIC's idle timeout plus a keepalive interval).
    await wait_until(shown_offline, WAIT, "bob shown offline")
    later = await net.send(alice, bob_id, "while bob is gone")
    assert later["status"] == "queued"  # never "sent" into a dead link
    await asyncio.sleep(KILLED_FOR)
    counts = await statuses(net, alice, bob_id)
    assert "failed" not in counts, counts
    bob = await net.webpeer("bob")
    await wait_until(lambda: all_delivered(net, alice, bob_id, BURST + 2), 30, "everything delivered, untouched")
    received = [m for m in await net.conversation(bob, 1) if m["from"] == 1]
    assert sorted(str(m["text"]) for m in received) == sorted(
        ["hello", "while bob is gone", *(f"burst {n}" for n in range(BURST))]
    )  # none lost, none twice
    assert_no_traceback(alice)


async def test_messages_to_a_paused_receiver_are_all_delivered_after_it_resumes(net: Net) -> None:
    await net.rendezvous()
    alice = await net.webpeer("alice")
    bob = await net.webpeer("bob", None, "--ttl", str(PAUSED_TTL))
    bob_id = await net.registered(bob)
    await net.registered(alice)
    await net.send(alice, bob_id, "hello")
    await wait_until(lambda: all_delivered(net, alice, bob_id, 1), WAIT, "the first message")
    bob.signal(signal.SIGSTOP)
    for n in range(30):
        await net.send(alice, bob_id, f"while paused {n}")
        await asyncio.sleep(PAUSED_FOR / 30)
    assert "failed" not in await statuses(net, alice, bob_id)
    bob.signal(signal.SIGCONT)
    await wait_until(lambda: all_delivered(net, alice, bob_id, 31), 30, "everything delivered after SIGCONT")
    received = [m for m in await net.conversation(bob, 1) if m["from"] == 1]
    assert len(received) == 31 and len({m["id"] for m in received}) == 31
    assert_no_traceback(alice, bob)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs for the receiver's data dir: needs root")
async def test_a_full_disk_acknowledges_nothing_and_everything_arrives_once_space_returns(
    net: Net, tmp_path: Path
) -> None:
    disk = tmp_path / "small-disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], check=True)
    try:
        await net.rendezvous()
        alice = await net.webpeer("alice")
        bob = await net.webpeer("bob", disk / "bob")
        bob_id = await net.registered(bob)
        await net.registered(alice)
        await net.send(alice, bob_id, "hello")
        await wait_until(lambda: all_delivered(net, alice, bob_id, 1), WAIT, "the first message")
        filler = disk / "filler"
        with filler.open("wb") as out:
            try:
                while True:
                    out.write(b"\0" * 65536)
                    out.flush()
            except OSError:
                pass  # the disk is full
        for n in range(150):
            await net.send(alice, bob_id, f"to a full disk {n} " + "x" * 200)
        await asyncio.sleep(6)
        counts = await statuses(net, alice, bob_id)
        assert counts.get("delivered", 0) == 1, counts  # no receipt for what was not stored
        me = await net.get(bob, "/api/me")
        assert isinstance(me, dict) and me["storage_error"], me  # the page says why
        filler.unlink()
        # How soon (RECEIPT_WAIT_MAX) is for tests/unit/test_engine.py to say, in simulated time.
        await wait_until(
            lambda: all_delivered(net, alice, bob_id, 151), 3 * WAIT, "everything delivered once space returned"
        )
        received = [m for m in await net.conversation(bob, 1) if m["from"] == 1]
        assert len(received) == 151 and len({m["id"] for m in received}) == 151
        me = await net.get(bob, "/api/me")
        assert isinstance(me, dict) and me["storage_error"] is None
        assert_no_traceback(alice, bob)
        log = bob.log.read_text(errors="replace")
        assert log.count("cannot write the history") == 1, log[-3000:]
    finally:
        for process in net.processes:
            await process.stop()
        subprocess.run(["umount", "-l", str(disk)], check=False)
