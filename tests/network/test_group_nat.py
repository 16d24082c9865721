"""A group of three across the NAT lab (issue 12): alice and bob behind
symmetric NATs (their link can only be relayed through the rendezvous),
carol behind a full cone.  Every member gets every message; the pair that
cannot open a direct path still carries the group over the relay."""

from __future__ import annotations

from pathlib import Path

import pytest
from netlab import Lab, NatType, unavailable_reason
from test_nat_traversal import START, Peer, start_rendezvous

pytestmark = [pytest.mark.network]

PER_MEMBER = 5


@pytest.fixture(autouse=True)
def _need_lab() -> None:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


def test_a_group_of_three_with_a_relayed_pair_delivers_everything(tmp_path: Path) -> None:
    with Lab() as lab:
        sites = {"alice": ("a", NatType.SYMMETRIC), "bob": ("b", NatType.SYMMETRIC), "carol": ("c", NatType.FULL_CONE)}
        server = start_rendezvous(lab, tmp_path)
        peers = {
            name: Peer(lab, lab.site(site, nat), name, tmp_path / name, server) for name, (site, nat) in sites.items()
        }
        ids = {
            name: peer.wait(lambda p=peer: (m := p.api("me")) and m["id"], START, "registered")
            for name, peer in peers.items()
        }
        carol, alice, bob = peers["carol"], peers["alice"], peers["bob"]
        others = {ids["alice"], ids["bob"]}
        carol.wait(lambda: others <= {p["id"] for p in carol.api("peers") if p["online"]}, 20, "alice and bob online")
        group = carol.api("group-create", "across", f"{ids['alice']},{ids['bob']}")["id"]
        for peer in (alice, bob):
            peer.wait(lambda p=peer: p.api("group-messages", group) == [], 30, "the group")
        for name, peer in peers.items():
            peer.api("group-burst", group, str(PER_MEMBER), name)
        total = PER_MEMBER * len(peers)
        for name, peer in peers.items():
            got = peer.wait(lambda p=peer: len(m := p.api("group-messages", group)) >= total and m, 60, f"all {total}")
            assert len({m["id"] for m in got}) == total
            for writer in peers:
                texts = [m["text"] for m in got if m["from"] == ids[writer]]
                assert texts == [f"{writer} {i}" for i in range(PER_MEMBER)], (name, writer, texts)
        # Alice and bob wrote to each other directly, and could only do it relayed.
        link = next(p for p in alice.api("peers") if p["id"] == ids["bob"])["connection"]
        assert link is not None and link["state"] == "relayed", link
