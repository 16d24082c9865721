"""Per-sender quotas on the receiving peer (issue 16, finding 5), through
the pure engines on the in-memory network (tests/unit/peer_net.py): a
message over quota is refused back to its sender, whose page shows it
failed with the reason; nothing is lost silently."""

from __future__ import annotations

import logging

import pytest
from peer_net import Peer, PeerNet

from webpeer.events import StatusChanged
from webpeer.quota import QuotaConfig


def pair(net: PeerNet, quota: QuotaConfig) -> tuple[Peer, Peer]:
    """Alice, and Bob who keeps ``quota`` for each sender."""
    alice = net.add("alice")
    bob = net.add("bob", quota=quota)
    net.run_until(lambda: alice.engine.my_id is not None and bob.engine.my_id is not None, 2)
    net.run_until(lambda: alice.engine.session(bob.peer_id).online and bob.engine.session(alice.peer_id).online, 3)
    return alice, bob


def settled(peer: Peer, ids: list[str]) -> bool:
    return all(peer.status(i) in ("delivered", "failed") for i in ids)


def failure(peer: Peer, message_id: str) -> str | None:
    message = peer.store.get_message(message_id)
    assert message is not None
    return message["error"] if message["status"] == "failed" else None


def test_past_the_rate_messages_fail_with_the_reason_and_a_retry_later_goes(
    net: PeerNet, caplog: pytest.LogCaptureFixture
) -> None:
    alice, bob = pair(net, QuotaConfig(messages_per_minute=3))
    caplog.set_level(logging.INFO, logger="webpeer")
    first = alice.send(bob, "hello")
    net.run_until(lambda: alice.status(first) == "delivered", 3)  # the link is up
    ids = [alice.send(bob, f"burst {n}") for n in range(5)]
    net.run_until(lambda: settled(alice, ids), 5)
    statuses = [alice.status(i) for i in ids]
    assert statuses == ["delivered", "delivered", "failed", "failed", "failed"]
    for refused in ids[2:]:
        reason = failure(alice, refused)
        assert reason is not None and "too many messages per minute" in reason
        # The page was told, with the reason.
        assert StatusChanged(refused, "failed", reason) in alice.events
    assert [m["text"] for m in bob.store.conversation(alice.peer_id)] == ["hello", "burst 0", "burst 1"]
    assert bob.engine.stats["messages_refused_rate"] == 3
    assert alice.engine.stats["messages_refused_by_peer"] == 3
    over = [r for r in caplog.records if "over its rate quota" in r.getMessage()]
    assert len(over) == 1  # once per streak, not per message
    # A refused message is not sent again by itself...
    net.run(30)
    assert [alice.status(i) for i in ids[2:]] == ["failed"] * 3
    # ...and the user's retry after the minute goes through.
    net.run(30)
    alice.engine.retry(ids[2], net.now)
    alice.flush()
    net.run_until(lambda: alice.status(ids[2]) == "delivered", 3)
    assert failure(alice, ids[2]) is None
    assert bob.store.conversation(alice.peer_id)[-1]["text"] == "burst 2"


def test_past_the_stored_bytes_messages_fail_and_other_senders_are_not_affected(net: PeerNet) -> None:
    alice, bob = pair(net, QuotaConfig(stored_bytes=12))
    carol = net.add("carol")
    net.run_until(lambda: carol.engine.my_id is not None and carol.engine.session(bob.peer_id).online, 3)
    ids = [alice.send(bob, text) for text in ("héllo", "world!", "x")]  # 6 + 6 bytes, then 1 more
    net.run_until(lambda: settled(alice, ids), 5)
    assert [alice.status(i) for i in ids] == ["delivered", "delivered", "failed"]
    reason = failure(alice, ids[2])
    assert reason is not None and "quota" in reason
    assert bob.engine.stats["messages_refused_storage"] == 1
    # Carol's quota is her own.
    from_carol = carol.send(bob, "twelve bytes")
    net.run_until(lambda: carol.status(from_carol) == "delivered", 5)
    # Restarted, bob reads what he holds from the history: still full for alice.
    bob_id = bob.peer_id
    bob = net.start_again(bob, quota=QuotaConfig(stored_bytes=12))
    net.run_until(lambda: bob.engine.my_id == bob_id, 3)
    later = alice.send(bob, "y")
    net.run_until(lambda: settled(alice, [later]), 10)
    assert alice.status(later) == "failed"
    assert len(bob.store.conversation(alice.peer_id)) == 2


def test_a_repeat_of_a_stored_message_is_acknowledged_even_over_quota(net: PeerNet) -> None:
    alice, bob = pair(net, QuotaConfig(messages_per_minute=1))
    first = alice.send(bob, "once")
    net.run_until(lambda: alice.status(first) == "delivered", 3)
    # Its ack was lost: the same message comes again, with no token left.
    link = bob.engine.session(alice.peer_id).ready_link
    assert link is not None
    local_id = first
    frames = bob.engine.flow
    assert frames.on_frame(link, {"t": "msg", "id": local_id, "text": "once", "time": net.now}, net.now)
    assert frames._acks[link] == [{"t": "ack", "id": local_id}]
    assert bob.engine.stats["messages_refused_rate"] == 0
