"""Fixtures of the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from peer_net import PeerNet


@pytest.fixture
def net(tmp_path: Path) -> PeerNet:
    """The in-memory network of engines (peer_net.py), its data dirs under tmp_path."""
    return PeerNet(tmp_path)
