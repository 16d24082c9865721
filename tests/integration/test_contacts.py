"""add_contact, read receipts and nicknames on real nodes (webpeer/node.py)
over loopback UDP and QUIC, with a real rendezvous server."""

from __future__ import annotations

import pytest
from test_nodes import next_event, nodes, rendezvous, wait_for  # noqa: F401  (the fixtures)

from webpeer.api import ApiError


async def test_add_contact_asks_the_server_and_refuses_ids_never_given_out(nodes) -> None:  # noqa: F811
    alice, bob = await nodes("alice"), await nodes("bob")
    bob_id = bob.registration.peer_id
    peer = await alice.add_contact(bob_id)
    assert peer["id"] == bob_id
    assert bob_id in {p["id"] for p in alice.peers_json()}
    with pytest.raises(ApiError) as refused:
        await alice.add_contact(4000)
    assert (refused.value.status, refused.value.message) == (404, "unknown peer 4000")
    assert 4000 not in {p["id"] for p in alice.peers_json()}
    with pytest.raises(ApiError) as own:
        await alice.add_contact(alice.registration.peer_id)
    assert own.value.status == 400


async def test_reading_a_conversation_tells_the_sender(nodes) -> None:  # noqa: F811
    alice, bob = await nodes("alice"), await nodes("bob")
    events = alice.subscribe()
    sent = await alice.send_message(bob.registration.peer_id, "read me")
    await wait_for(lambda: bob.store.unread_counts().get(alice.registration.peer_id) == 1, 20, "bob to get it")
    # Found by bob's search (the real store's index), by a word's start.
    assert [m["text"] for m in bob.search(["rea"], alice.registration.peer_id, 10)] == ["read me"]
    bob.mark_read(alice.registration.peer_id)
    got = await next_event(events, "read-up-to", timeout=20)
    assert (got["peer"], got["id"]) == (bob.registration.peer_id, sent["id"])
    mark = next(p for p in alice.peers_json() if p["id"] == bob.registration.peer_id)["read_up_to"]
    assert mark["id"] == sent["id"]
