"""A peer's identity: its Ed25519 key pair, kept in the data dir.

The same key signs the rendezvous challenge (so the server keeps giving it
the same id) and makes the self-signed certificate that the peer presents on
QUIC (so the other side can check it holds exactly the key the registry
gave for its id).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from cryptography.x509.oid import NameOID

KEY_FILE = "identity.key"
SIGNATURE_CONTEXT = b"peerlink-quic-auth-v1\x00"


class IdentityError(Exception):
    """The key file exists but cannot be used."""


def fingerprint(public_key: bytes) -> str:
    """Short, human-comparable: 16 base32 characters of SHA-256, in groups of 4."""
    digest = base64.b32encode(hashlib.sha256(public_key).digest()).decode()[:16]
    return "-".join(digest[i : i + 4] for i in range(0, 16, 4))


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def auth_payload(nonce: bytes, acceptor_key: bytes, connector_key: bytes) -> bytes:
    """What the connecting peer signs to prove its key on a QUIC connection:
    the acceptor's fresh nonce and both keys, so a signature cannot be
    replayed on another connection or toward another peer."""
    return SIGNATURE_CONTEXT + nonce + acceptor_key + connector_key


def verify(public_key: bytes, signature: bytes, payload: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, payload)
    except Exception:  # InvalidSignature, or a malformed key/signature
        return False
    return True


@dataclass(frozen=True)
class Identity:
    private_key: Ed25519PrivateKey

    @property
    def public_key(self) -> bytes:
        return raw_public_key(self.private_key.public_key())

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)

    def sign(self, payload: bytes) -> bytes:
        return self.private_key.sign(payload)

    @classmethod
    def load_or_create(cls, data_dir: Path) -> Identity:
        """The key in ``data_dir``, made on first run (file mode 0600)."""
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = data_dir / KEY_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            key = Ed25519PrivateKey.generate()
            raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())
            return cls(key)
        if len(raw) != 32:
            raise IdentityError(f"{path} should hold a 32-byte Ed25519 key, it holds {len(raw)} bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    def certificate(self, now: datetime.datetime | None = None) -> x509.Certificate:
        """Self-signed, made from the identity key; only the key inside matters."""
        now = now or datetime.datetime.now(datetime.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "peerlink " + self.fingerprint)])
        return (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.private_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .sign(self.private_key, None)
        )
