"""Stateless challenges and session tokens (pure: the clock comes in as ``now``).

A first REGISTER gets a CHALLENGE bound to the source address and the key
(like a QUIC Retry token or a WireGuard cookie): the server keeps no state for
it.  The peer signs it with its Ed25519 key; the server checks the MAC, the
age and the signature.  A successful REGISTER returns a SESSION token bound to
(peer id, key, address) that authorises REFRESH, LIST, CONNECT, SEND and
UNREGISTER from that address.  Both are HMAC-SHA256 under the server secret,
which the registry keeps, so they survive a server restart.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .stun import Address

CHALLENGE_LIFETIME = 60.0
CLOCK_SKEW = 5.0
MAC_LENGTH = 16
CHALLENGE_LENGTH = 4 + MAC_LENGTH
SIGNATURE_CONTEXT = b"peerlink-register-v1\x00"


def address_bytes(address: Address) -> bytes:
    host, port = address
    return f"{host}|{port}".encode()


def registration_details(nickname: str, local: Iterable[Address], ttl: int | None) -> bytes:
    """A digest of what a REGISTER asks for besides the key (nickname, local
    addresses, TTL), so that the signature covers them too: nobody on the
    path can rename a peer or point its introductions elsewhere.  Empty when
    the request asks for none of them."""
    local = tuple(local)
    if not nickname and not local and ttl is None:
        return b""
    parts = [nickname.encode(), *(address_bytes(a) for a in local), str(ttl if ttl is not None else "").encode()]
    return hashlib.sha256(b"\x00".join(struct.pack("!H", len(p)) + p for p in parts)).digest()


def registration_payload(challenge: bytes, public_key: bytes, details: bytes = b"") -> bytes:
    """What a peer signs to prove it holds ``public_key`` (and to vouch for the
    request's ``details``, see :func:`registration_details`)."""
    return SIGNATURE_CONTEXT + challenge + public_key + details


class Tokens:
    """Mints and checks challenges and session tokens under one secret."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the server secret must be at least 16 bytes")
        self._secret = secret

    def _mac(self, *parts: bytes) -> bytes:
        # Length-prefixed parts, so no two different tuples hash alike;
        # hmac.digest is the one-shot C path (several times faster than hmac.new).
        framed = b"".join(struct.pack("!H", len(part)) + part for part in parts)
        return hmac.digest(self._secret, framed, "sha256")[:MAC_LENGTH]

    def challenge(self, address: Address, public_key: bytes, now: float) -> bytes:
        stamp = struct.pack("!I", int(now) & 0xFFFFFFFF)
        return stamp + self._mac(b"challenge", stamp, address_bytes(address), public_key)

    def check_challenge(self, challenge: bytes, address: Address, public_key: bytes, now: float) -> bool:
        if len(challenge) != CHALLENGE_LENGTH:
            return False
        stamp = challenge[:4]
        issued = struct.unpack("!I", stamp)[0]
        age = now - issued
        if age > CHALLENGE_LIFETIME or age < -CLOCK_SKEW:
            return False
        expected = self._mac(b"challenge", stamp, address_bytes(address), public_key)
        return hmac.compare_digest(expected, challenge[4:])

    def session(self, peer_id: int, identity: bytes, address: Address) -> bytes:
        id_bytes = struct.pack("!I", peer_id)
        return id_bytes + self._mac(b"session", id_bytes, identity, address_bytes(address))

    def check_session(self, token: bytes, identity: bytes, address: Address) -> bool:
        peer_id = session_peer_id(token)
        expected = self.session(peer_id, identity, address)
        return hmac.compare_digest(expected, token)


def session_peer_id(token: bytes) -> int:
    return int(struct.unpack_from("!I", token)[0])


def verify_signature(public_key: bytes, signature: bytes, payload: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, payload)
    except (InvalidSignature, ValueError):
        return False
    return True
