"""The peer's key file and certificate."""

from __future__ import annotations

import stat

import pytest

from webpeer.identity import Identity, IdentityError, auth_payload, fingerprint, raw_public_key, verify


def test_key_is_made_once_private_and_kept(tmp_path) -> None:
    first = Identity.load_or_create(tmp_path / "peer")
    mode = stat.S_IMODE((tmp_path / "peer" / "identity.key").stat().st_mode)
    assert mode == 0o600
    again = Identity.load_or_create(tmp_path / "peer")
    assert again.public_key == first.public_key
    assert len(first.public_key) == 32


def test_a_damaged_key_file_is_a_clear_error(tmp_path) -> None:
    (tmp_path / "identity.key").write_bytes(b"short")
    with pytest.raises(IdentityError, match="32-byte Ed25519 key, it holds 5 bytes"):
        Identity.load_or_create(tmp_path)


def test_certificate_carries_exactly_the_identity_key(tmp_path) -> None:
    identity = Identity.load_or_create(tmp_path)
    certificate = identity.certificate()
    assert raw_public_key(certificate.public_key()) == identity.public_key


def test_fingerprint_is_short_and_stable() -> None:
    assert fingerprint(b"\x01" * 32) == fingerprint(b"\x01" * 32)
    assert fingerprint(b"\x01" * 32) != fingerprint(b"\x02" * 32)
    text = fingerprint(b"\x01" * 32)
    assert len(text) == 19 and text.count("-") == 3


def test_auth_signature_binds_nonce_and_both_keys(tmp_path) -> None:
    me = Identity.load_or_create(tmp_path / "a")
    other = Identity.load_or_create(tmp_path / "b")
    nonce = b"n" * 32
    signature = me.sign(auth_payload(nonce, other.public_key, me.public_key))
    assert verify(me.public_key, signature, auth_payload(nonce, other.public_key, me.public_key))
    assert not verify(me.public_key, signature, auth_payload(b"m" * 32, other.public_key, me.public_key))
    assert not verify(me.public_key, signature, auth_payload(nonce, me.public_key, me.public_key))
    assert not verify(other.public_key, signature, auth_payload(nonce, other.public_key, me.public_key))
