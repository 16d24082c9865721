"""webpeer/mailbox_seal.py: what a sealed message proves, and what breaks it."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given
from hypothesis import strategies as st

from rendezvous.stun import MAX_SEALED
from webpeer.mailbox_seal import OVERHEAD, Letter, SealError, mail_id, open_sealed, seal, x25519_private, x25519_public

ALICE = Ed25519PrivateKey.from_private_bytes(b"a" * 32)
BOB = Ed25519PrivateKey.from_private_bytes(b"b" * 32)
MALLORY = Ed25519PrivateKey.from_private_bytes(b"m" * 32)


def raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@given(st.binary(min_size=32, max_size=32))
def test_both_sides_derive_the_same_x25519_key(seed: bytes) -> None:
    key = Ed25519PrivateKey.from_private_bytes(seed)
    derived = x25519_private(key).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert x25519_public(raw(key)) == derived


def test_the_recipient_opens_what_the_sender_sealed() -> None:
    sealed = seal(ALICE, 1, 2, raw(BOB), "m1", "hello bob ✓", 1234.5)
    assert b"hello" not in sealed
    letter = open_sealed(BOB, 2, 1, mail_id(1, "m1"), sealed)
    assert letter == Letter(1, 2, raw(ALICE), "m1", "hello bob ✓", 1234.5)


def test_only_the_recipient_can_open_it() -> None:
    sealed = seal(ALICE, 1, 2, raw(BOB), "m1", "for bob", 1.0)
    with pytest.raises(SealError, match="does not open"):
        open_sealed(MALLORY, 2, 1, mail_id(1, "m1"), sealed)


@pytest.mark.parametrize("position", [0, 31, 32, 60, -1])
def test_any_changed_byte_is_refused(position: int) -> None:
    sealed = bytearray(seal(ALICE, 1, 2, raw(BOB), "m1", "text", 1.0))
    sealed[position] ^= 1
    with pytest.raises(SealError):
        open_sealed(BOB, 2, 1, mail_id(1, "m1"), bytes(sealed))


def test_the_server_cannot_refile_it_under_other_ids() -> None:
    sealed = seal(ALICE, 1, 2, raw(BOB), "m1", "text", 1.0)
    with pytest.raises(SealError, match="does not open"):
        open_sealed(BOB, 2, 1, mail_id(1, "m2"), sealed)  # another MAIL-ID: the AAD differs
    with pytest.raises(SealError, match="names other ids"):
        open_sealed(BOB, 2, 3, mail_id(1, "m1"), sealed)  # said to come from 3


def test_the_letter_names_the_key_that_signed_it() -> None:
    # Mallory seals for Bob in Alice's name with her own key in the body: it
    # opens, but the key it names is Mallory's; the receiver compares it with
    # the one it holds for Alice (the engine's job).  Here: signing with one
    # key while naming another fails.
    sealed = seal(MALLORY, 1, 2, raw(BOB), "m1", "text", 1.0)
    letter = open_sealed(BOB, 2, 1, mail_id(1, "m1"), sealed)
    assert letter.sender_key == raw(MALLORY) != raw(ALICE)


def test_the_size_limit_is_the_mailbox_limit() -> None:
    room = MAX_SEALED - OVERHEAD - len("m1")
    assert len(seal(ALICE, 1, 2, raw(BOB), "m1", "x" * room, 1.0)) == MAX_SEALED
    with pytest.raises(SealError, match="too long"):
        seal(ALICE, 1, 2, raw(BOB), "m1", "x" * (room + 1), 1.0)
    with pytest.raises(SealError, match="ASCII"):
        seal(ALICE, 1, 2, raw(BOB), "é", "x", 1.0)
