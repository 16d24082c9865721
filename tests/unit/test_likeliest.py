"""Which candidate the early QUIC Initial goes to (pathfinder.likeliest): a
pure choice over the introduction and our own observed address."""

from __future__ import annotations

from rendezvous.client import PeerInfo
from rendezvous.stun import Candidate, CandidateKind
from webpeer.pathfinder import likeliest as choose

OBSERVED = CandidateKind.OBSERVED
LOCAL = CandidateKind.LOCAL


def likeliest(mine, *candidates):
    info = PeerInfo(2, b"k" * 32, "bob", tuple(Candidate(kind, address) for kind, address in candidates), b"p" * 16)
    return choose(info, mine)


def test_another_network_gets_the_observed_address() -> None:
    assert likeliest(("198.51.100.11", 4000), (OBSERVED, ("198.51.100.12", 5000)), (LOCAL, ("10.0.2.5", 5000))) == (
        "198.51.100.12",
        5000,
    )


def test_behind_the_same_public_address_the_local_one() -> None:
    # Same NAT (or the same host): its local address avoids relying on hairpinning.
    assert likeliest(("198.51.100.11", 4000), (OBSERVED, ("198.51.100.11", 5000)), (LOCAL, ("10.0.1.7", 5000))) == (
        "10.0.1.7",
        5000,
    )


def test_without_a_local_candidate_or_our_own_address_the_observed_one() -> None:
    assert likeliest(("198.51.100.11", 4000), (OBSERVED, ("198.51.100.11", 5000))) == ("198.51.100.11", 5000)
    assert likeliest(None, (OBSERVED, ("198.51.100.12", 5000)), (LOCAL, ("10.0.2.5", 5000))) == ("198.51.100.12", 5000)
    assert likeliest(None, (LOCAL, ("10.0.2.5", 5000))) == ("10.0.2.5", 5000)
