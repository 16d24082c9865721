"""A stream of 500 messages across the move from the relay to a direct path
(issue 15), in the NAT lab: port-restricted against symmetric starts
relayed (the first packets go through the rendezvous at once) and turns
direct when many-port probing finds the symmetric side's port.  Messages
without a receipt when the direct link takes over go again on it; the
receiver keeps each id once, so the stream arrives whole, once and in order.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from netlab import Lab, NatType, unavailable_reason
from test_nat_traversal import all_delivered, start_pair

pytestmark = [pytest.mark.network]

COUNT = 500
HOLD_AT = 400  # the last 100 wait for the direct path, so the stream spans the move


@pytest.fixture(autouse=True)
def _need_lab() -> None:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


def test_a_500_message_stream_crosses_the_move_from_relayed_to_direct_once_and_in_order(tmp_path: Path) -> None:
    with Lab() as lab:
        lab.set_link(delay_ms=20)
        alice, bob, id_a, id_b = start_pair(lab, tmp_path, NatType.PORT_RESTRICTED, NatType.SYMMETRIC)
        sent = alice.api("stream", str(id_b), str(COUNT), "move", str(HOLD_AT))
        assert isinstance(sent, list) and len(sent) == COUNT
        paths = [entry["path"] for entry in sent]
        # Both sides of the move carried part of the stream.
        assert "relayed" in paths[:HOLD_AT], paths[:HOLD_AT]
        assert all(path == "direct" for path in paths[HOLD_AT:]), paths[HOLD_AT:]
        ids = [entry["id"] for entry in sent]
        alice.wait(lambda: all_delivered(alice, id_b, ids), 60, "the 500 delivered")
        at_bob = [m["text"] for m in bob.api("messages", str(id_a), "1000") if m["from"] == id_a]
        assert at_bob == [f"move {i}" for i in range(COUNT)]
        connection = next(p for p in alice.api("peers") if p["id"] == id_b)["connection"]
        assert connection["state"] == "direct", connection
