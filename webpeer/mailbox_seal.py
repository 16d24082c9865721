"""Sealing a message for the offline mailbox, and opening it (pure; the
layout is docs/PROTOCOL.md 11.9).

The sender signs the message with its Ed25519 identity key and encrypts it
to the recipient's X25519 key, which both sides derive from the recipient's
Ed25519 key (RFC 7748's birational map), so no new key is published
anywhere.  An ephemeral X25519 key per message makes the encryption key
unique (hence the zero nonce), and the AAD binds the ciphertext to the
recipient id and MAIL-ID the server files it under.  The server sees only
the sealed bytes.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from rendezvous.stun import MAIL_ID_LENGTH, MAX_SEALED

LABEL = b"peerlink-mail-v1"
_BODY = struct.Struct("!II32sQB")  # sender, recipient, sender key, time (ms), id length
_NONCE = bytes(12)
_P = 2**255 - 19
# E, the AEAD tag, the signature and the body's fixed part around id and text.
OVERHEAD = 32 + 16 + 64 + _BODY.size


class SealError(Exception):
    """A sealed message that cannot be opened or does not check out; the
    message says which rule failed (counted as the drop's reason)."""


@dataclass(frozen=True, slots=True)
class Letter:
    """What a sealed message says, once opened and its signature checked."""

    sender: int
    recipient: int
    sender_key: bytes  # the Ed25519 key that signed it
    message_id: str
    text: str
    time: float  # the sender's clock, seconds


def mail_id(sender: int, message_id: str) -> bytes:
    """The MAIL-ID the server files a message under."""
    digest = hashlib.sha256(b"peerlink-mail-id\x00" + struct.pack("!I", sender) + message_id.encode("ascii"))
    return digest.digest()[:MAIL_ID_LENGTH]


def x25519_public(ed25519_public: bytes) -> bytes:
    """The X25519 public key of an Ed25519 public key: u = (1 + y) / (1 - y) mod p."""
    if len(ed25519_public) != 32:
        raise SealError("an Ed25519 key is 32 bytes")
    y = int.from_bytes(ed25519_public, "little") & ((1 << 255) - 1)
    if y >= _P or y == 1:
        raise SealError("not an Ed25519 public key")
    u = (1 + y) * pow(1 - y, _P - 2, _P) % _P
    return u.to_bytes(32, "little")


def x25519_private(ed25519_private: Ed25519PrivateKey) -> X25519PrivateKey:
    """The X25519 private key of an Ed25519 one: SHA-512 of its seed, first half (X25519 clamps it)."""
    seed = ed25519_private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return X25519PrivateKey.from_private_bytes(hashlib.sha512(seed).digest()[:32])


def _key(shared: bytes, ephemeral: bytes, recipient_x: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, None, LABEL + ephemeral + recipient_x).derive(shared)


def _aad(recipient: int, mail: bytes) -> bytes:
    return struct.pack("!I", recipient) + mail


def seal(
    sender_key: Ed25519PrivateKey,
    sender: int,
    recipient: int,
    recipient_key: bytes,
    message_id: str,
    text: str,
    time: float,
    *,
    ephemeral: X25519PrivateKey | None = None,
) -> bytes:
    """The SEALED bytes of one message; SealError if it would be longer
    than the mailbox takes (MAX_SEALED) or the id is not 1-64 ASCII."""
    if not (0 < len(message_id) <= 64 and message_id.isascii()):
        raise SealError("a mailbox message id is 1 to 64 ASCII characters")
    encoded = text.encode("utf-8")
    if OVERHEAD + len(message_id) + len(encoded) > MAX_SEALED:
        raise SealError(f"too long for the mailbox ({len(encoded)} bytes of text)")
    public = sender_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    body = (
        _BODY.pack(sender, recipient, public, max(0, int(time * 1000)), len(message_id))
        + message_id.encode("ascii")
        + encoded
    )
    signature = sender_key.sign(LABEL + b"\x00" + body)
    ephemeral = ephemeral or X25519PrivateKey.generate()
    e_public = ephemeral.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    recipient_x = x25519_public(recipient_key)
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient_x))
    cipher = ChaCha20Poly1305(_key(shared, e_public, recipient_x))
    return e_public + cipher.encrypt(_NONCE, signature + body, _aad(recipient, mail_id(sender, message_id)))


def open_sealed(
    my_key: Ed25519PrivateKey,
    my_id: int,
    sender: int,
    mail: bytes,
    sealed: bytes,
    *,
    x_private: X25519PrivateKey | None = None,
) -> Letter:
    """Open what FETCH handed out (``sender`` and ``mail`` as the server
    filed it) and check it all: SealError names the first rule it breaks."""
    if len(sealed) < 32 + 16 + 64 + _BODY.size + 1:
        raise SealError("too short")
    x_private = x_private or x25519_private(my_key)
    recipient_x = x_private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    e_public = sealed[:32]
    try:
        shared = x_private.exchange(X25519PublicKey.from_public_bytes(e_public))
        inner = ChaCha20Poly1305(_key(shared, e_public, recipient_x)).decrypt(_NONCE, sealed[32:], _aad(my_id, mail))
    except (InvalidTag, ValueError):
        raise SealError("does not open") from None
    signature, body = inner[:64], inner[64:]
    from_id, to_id, sender_key, time_ms, id_length = _BODY.unpack_from(body)
    if to_id != my_id or from_id != sender:
        raise SealError("names other ids")
    raw_id = body[_BODY.size : _BODY.size + id_length]
    if len(raw_id) != id_length or id_length == 0 or id_length > 64 or not raw_id.isascii():
        raise SealError("bad message id")
    message_id = raw_id.decode("ascii")
    if mail_id(sender, message_id) != mail:
        raise SealError("MAIL-ID does not match")
    try:
        text = body[_BODY.size + id_length :].decode("utf-8")
    except UnicodeDecodeError:
        raise SealError("text is not UTF-8") from None
    try:
        Ed25519PublicKey.from_public_bytes(sender_key).verify(signature, LABEL + b"\x00" + body)
    except Exception:
        raise SealError("bad signature") from None
    return Letter(sender, to_id, bytes(sender_key), message_id, text, time_ms / 1000)
