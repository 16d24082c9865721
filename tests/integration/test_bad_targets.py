"""Bad targets with real processes on loopback (issue 9, finding 5): an id
the server never assigned, our own id, a send before registration, and
cancel.  The processes and helpers are tests/processes.py's."""

from __future__ import annotations

import pytest
from processes import WAIT, Net, WebPeer, all_delivered, assert_no_traceback, wait_until

pytestmark = pytest.mark.slow


async def post(net: Net, peer: WebPeer, path: str, body: object | None = None) -> tuple[int, dict[str, object]]:
    async with net.session.post(peer.base + path, json=body, headers=peer.headers) as response:
        return response.status, await response.json()


async def test_an_id_never_assigned_is_404_and_our_own_id_400(net: Net) -> None:
    await net.rendezvous()
    alice = await net.webpeer("alice")
    bob = await net.webpeer("bob")
    alice_id = await net.registered(alice)
    bob_id = await net.registered(bob)
    nobody = bob_id + 100
    assert await post(net, alice, "/api/messages", {"to": nobody, "text": "anyone?"}) == (
        404,
        {"error": f"unknown peer {nobody}"},
    )
    assert await net.conversation(alice, nobody) == []
    peers = await net.get(alice, "/api/peers")
    assert isinstance(peers, list) and nobody not in [p["id"] for p in peers]
    assert await post(net, alice, "/api/messages", {"to": alice_id, "text": "me"}) == (
        400,
        {"error": "cannot send a message to yourself"},
    )
    # An id that exists though its peer is gone (carol never saw bob): queued, and it goes.
    await bob.stop()
    carol = await net.webpeer("carol")
    await net.registered(carol)
    status, waiting = await post(net, carol, "/api/messages", {"to": bob_id, "text": "when you are back"})
    assert (status, waiting["status"]) == (201, "queued")
    # A queued message can be taken back; only once.
    status, dropped = await post(net, carol, "/api/messages", {"to": bob_id, "text": "never mind"})
    assert status == 201
    status, cancelled = await post(net, carol, f"/api/messages/{dropped['id']}/cancel")
    assert (status, cancelled["status"], cancelled["error"]) == (200, "failed", "cancelled")
    assert (await post(net, carol, f"/api/messages/{dropped['id']}/cancel"))[0] == 409
    await net.webpeer("bob")
    await wait_until(lambda: all_delivered(net, carol, bob_id, 1), 20, "the queued message")
    texts = [m["text"] for m in await net.conversation(carol, bob_id)]
    assert texts == ["when you are back", "never mind"]
    assert [m["status"] for m in await net.conversation(carol, bob_id)] == ["delivered", "failed"]
    assert_no_traceback(alice, carol)


async def test_a_restarted_peer_whose_server_is_down_queues_and_delivers_when_it_returns(net: Net) -> None:
    server = await net.rendezvous()
    alice = await net.webpeer("alice")
    bob = await net.webpeer("bob")
    alice_id = await net.registered(alice)
    bob_id = await net.registered(bob)
    await net.send(alice, bob_id, "hello")
    await wait_until(lambda: all_delivered(net, alice, bob_id, 1), WAIT, "the first message")
    await alice.stop()
    await server.stop()
    alice = await net.webpeer("alice")  # same data dir, no server to register with
    me = await net.get(alice, "/api/me")
    assert isinstance(me, dict) and (me["id"], me["registered"]) == (alice_id, False)
    sent = await net.send(alice, bob_id, "written while the server was down")
    assert (sent["status"], sent["from"]) == ("queued", alice_id)
    await net.rendezvous()
    await wait_until(lambda: all_delivered(net, alice, bob_id, 2), 40, "the message written during the outage")
    assert_no_traceback(alice, bob)


async def test_a_fresh_peer_that_never_registered_says_why_it_cannot_send(net: Net) -> None:
    alice = await net.webpeer("alice")  # no server at all
    status, answer = await post(net, alice, "/api/messages", {"to": 2, "text": "too early"})
    assert status == 503 and "never registered" in str(answer["error"])
