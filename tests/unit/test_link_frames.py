"""PeerLink.send_frames: several frames in one stream write (the busy path)."""

from __future__ import annotations

import pytest
from test_link import identity, make_pair, pump

from webpeer.link import FrameReceived, LinkState


def test_frames_sent_together_arrive_in_order() -> None:
    alice, bob = identity(), identity()
    a, b, _, _ = make_pair(alice, bob, bob.public_key, alice.public_key)
    frames = [{"t": "msg", "id": f"m{n}", "text": f"text {n}", "time": 1.5} for n in range(300)]
    a.send_frames(frames, now=1000.1)
    assert a.last_sent == 1000.1
    _, _, events = pump(a, b, 1000.1)
    assert [e.frame for e in events if isinstance(e, FrameReceived)] == frames


def test_send_frames_needs_a_ready_link() -> None:
    alice, bob = identity(), identity()
    a, _, _, _ = make_pair(alice, bob, bob.public_key, alice.public_key)
    a.close("done")
    assert a.state is LinkState.CLOSED
    with pytest.raises(RuntimeError, match="cannot send 1 frames"):
        a.send_frames([{"t": "ack", "id": "m1"}])
