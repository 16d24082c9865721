"""The offline mailbox with real processes (docs/PROTOCOL.md 5.11, 11.9):
alice writes to bob while he is offline, she stops, he starts and gets it
from the server's mailbox, and when she is back she sees it delivered.  The
server's mailbox holds one message at most here, so her second is refused
with the reason while the first stays; its SQLite file never holds the text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from processes import Net, assert_no_traceback, start_rendezvous, wait_until

WAIT = 20.0
FIRST = "first note while you are away"
SECOND = "second note while you are away"


async def message(net: Net, peer: Any, other: int, message_id: str) -> dict[str, Any] | None:
    return next((m for m in await net.conversation(peer, other) if m["id"] == message_id), None)


async def status_is(net: Net, peer: Any, other: int, message_id: str, status: str) -> bool:
    found = await message(net, peer, other, message_id)
    return found is not None and found["status"] == status


async def test_a_message_waits_in_the_mailbox_for_a_peer_never_online_with_its_sender(net: Net, tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    server = net._started(
        await start_rendezvous(net.port, db, "--mailbox-max-messages", "1", log=tmp_path / "rendezvous.log")
    )
    quick = ("--mailbox-after", "0")
    alice = await net.webpeer("alice", None, *quick)
    bob = await net.webpeer("bob", None, *quick)
    alice_id, bob_id = await net.registered(alice), await net.registered(bob)
    # They have met: each holds the other's key.
    hello = await net.send(alice, bob_id, "hello")
    await wait_until(lambda: status_is(net, alice, bob_id, hello["id"], "delivered"), WAIT, "the first message")
    assert await bob.stop() == 0

    async def bob_offline() -> bool:
        return any(p["id"] == bob_id and not p["online"] for p in await net.get(alice, "/api/peers"))

    await wait_until(bob_offline, WAIT, "alice to see bob offline")
    # (Queued, or sent into the link bob just closed: either way it is left in his mailbox.)
    first = await net.send(alice, bob_id, FIRST)
    await wait_until(lambda: status_is(net, alice, bob_id, first["id"], "stored"), WAIT, "stored on server")
    second = await net.send(alice, bob_id, SECOND)
    await wait_until(lambda: status_is(net, alice, bob_id, second["id"], "failed"), WAIT, "the mailbox full")
    refused = await message(net, alice, bob_id, second["id"])
    assert refused is not None and refused["error"] == "the peer's mailbox on the server is full"
    assert await status_is(net, alice, bob_id, first["id"], "stored")  # nothing stored is lost
    # The server's store has the sealed message, never its text.
    stored = b"".join(path.read_bytes() for path in tmp_path.glob("r.db*"))
    assert FIRST.encode() not in stored and b"away" not in stored
    assert await alice.stop() == 0

    bob = await net.webpeer("bob", None, *quick)
    await net.registered(bob)

    async def bob_has_it() -> bool:
        return any(m["text"] == FIRST for m in await net.conversation(bob, alice_id))

    await wait_until(bob_has_it, WAIT, "bob to fetch the message")
    alice = await net.webpeer("alice", None, *quick)
    await wait_until(lambda: status_is(net, alice, bob_id, first["id"], "delivered"), WAIT, "delivered")
    texts = [m["text"] for m in await net.conversation(bob, alice_id)]
    assert texts.count(FIRST) == 1 and SECOND not in texts
    assert_no_traceback(server, alice, bob)
