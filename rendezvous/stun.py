"""STUN message codec (RFC 8489), pure: bytes in, typed messages out and back.

Table-driven: every attribute the project understands is one row of
``ATTRIBUTES`` (code, name, packer, unpacker, length bounds).  Every length is
checked before a slice is taken, and every malformed input raises
:class:`MalformedMessage` with a message precise enough for tests to assert.
The wire format of each attribute is written down in docs/PROTOCOL.md.
"""

from __future__ import annotations

import binascii
import enum
import hashlib
import hmac
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

MAGIC_COOKIE = 0x2112A442
MAGIC_COOKIE_BYTES = struct.pack("!I", MAGIC_COOKIE)
FINGERPRINT_XOR = 0x5354554E
HEADER = struct.Struct("!HHI12s")
HEADER_LENGTH = 20
ATTRIBUTE_HEADER = struct.Struct("!HH")
# Nothing legitimate on this protocol is larger: the relay payload is capped at
# 1200 bytes and every STUN reply fits in 1200.  Bigger datagrams are dropped early.
MAX_MESSAGE_LENGTH = 1500
MAX_RELAY_PAYLOAD = 1200
MAX_NICKNAME_BYTES = 64
PUBLIC_KEY_LENGTH = 32
SIGNATURE_LENGTH = 64
SESSION_LENGTH = 20  # 4-byte peer id + 16-byte HMAC tag
MAX_CURSOR_LENGTH = 32
PUNCH_KEY_LENGTH = 16
# Offline mailbox (docs/PROTOCOL.md 5.11): one sealed message per datagram;
# a FETCH success carrying the largest stays within the 1200-byte reply limit.
MAX_SEALED = 1024
MAIL_ID_LENGTH = 16


class StunProtocolError(Exception):
    """Base of every error raised for bytes that break the wire format."""


class MalformedMessage(StunProtocolError):
    """The datagram is not a well-formed STUN message."""


class IntegrityError(StunProtocolError):
    """FINGERPRINT or MESSAGE-INTEGRITY does not match the message."""


class MessageClass(enum.IntEnum):
    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS = 0b10
    ERROR = 0b11


class Method(enum.IntEnum):
    """STUN methods.  0x001 is RFC 8489 Binding; the rest are peerlink's own,
    taken from the unassigned 0x800-0xFFF range (see docs/PROTOCOL.md)."""

    BINDING = 0x001
    REGISTER = 0x801
    REFRESH = 0x802
    UNREGISTER = 0x803
    LIST = 0x804
    CONNECT = 0x805
    INTRODUCE = 0x806
    SEND = 0x807
    DATA = 0x808
    WATCH = 0x809  # a peer names the ids whose presence it wants to hear of
    PRESENCE = 0x80A  # server to peer: those ids' presence changed (a request, retransmitted)
    DEPOSIT = 0x80B  # leave a sealed message in an offline peer's mailbox
    FETCH = 0x80C  # take one's own mailbox messages, one at a time


class Attr(enum.IntEnum):
    MAPPED_ADDRESS = 0x0001
    CHANGE_REQUEST = 0x0003  # RFC 5780
    USERNAME = 0x0006
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    REALM = 0x0014
    NONCE = 0x0015
    DATA = 0x0013
    XOR_MAPPED_ADDRESS = 0x0020
    PRIORITY = 0x0024
    USE_CANDIDATE = 0x0025
    # peerlink, comprehension-required (0x4000-0x7FFF: designated-expert range)
    PUBLIC_KEY = 0x4001
    CANDIDATE = 0x4002
    TTL = 0x4003
    PEER_ID = 0x4004
    CHALLENGE = 0x4005
    SIGNATURE = 0x4006
    SESSION = 0x4007
    LIMIT = 0x4008
    CURSOR = 0x4009
    PEER_ENTRY = 0x400A
    PUNCH_KEY = 0x400B
    WATCH_IDS = 0x400C
    OFFLINE_IDS = 0x400D
    MAIL_ID = 0x400E
    SEALED = 0x400F
    MAIL_ITEM = 0x4010
    MAIL_COUNT = 0x4011
    UNWATCH_IDS = 0x4012
    # comprehension-optional
    SOFTWARE = 0x8022
    RESPONSE_ORIGIN = 0x802B  # RFC 5780
    OTHER_ADDRESS = 0x802C  # RFC 5780
    FINGERPRINT = 0x8028
    ICE_CONTROLLED = 0x8029
    ICE_CONTROLLING = 0x802A
    NICKNAME = 0xC001
    ONLINE_SINCE = 0xC002


class ErrorCode(enum.IntEnum):
    BAD_REQUEST = 400
    UNAUTHORIZED = 401
    UNKNOWN_PEER = 404  # the id was assigned, but its peer is not online (or is a legacy-text peer)
    NO_SUCH_PEER = 410  # the server never assigned the id (docs/PROTOCOL.md 5.6)
    UNKNOWN_ATTRIBUTE = 420
    RATE_LIMITED = 429
    MAILBOX_FULL = 486  # a DEPOSIT past a mailbox quota (TURN's "Allocation Quota Reached")
    SERVER_ERROR = 500
    TRY_AGAIN_LATER = 503


REASONS = {
    ErrorCode.BAD_REQUEST: "Bad Request",
    ErrorCode.UNAUTHORIZED: "Unauthorized",
    ErrorCode.UNKNOWN_PEER: "Unknown Peer",
    ErrorCode.NO_SUCH_PEER: "No Such Peer",
    ErrorCode.UNKNOWN_ATTRIBUTE: "Unknown Attribute",
    ErrorCode.RATE_LIMITED: "Rate Limited",
    ErrorCode.MAILBOX_FULL: "Mailbox Full",
    ErrorCode.SERVER_ERROR: "Server Error",
    ErrorCode.TRY_AGAIN_LATER: "Try Again Later",
}

Address = tuple[str, int]


class CandidateKind(enum.IntEnum):
    OBSERVED = 0  # the address the server saw the peer's datagrams come from
    LOCAL = 1  # an address of one of the peer's own interfaces


class Candidate(NamedTuple):
    kind: CandidateKind
    address: Address


class ErrorValue(NamedTuple):
    code: int
    reason: str


class PeerEntry(NamedTuple):
    """One row of a LIST reply: no IP address, on purpose (privacy)."""

    peer_id: int
    online_since: int
    public_key: bytes
    nickname: str


# --------------------------------------------------------------------------
# Type field: the method and class bits are interleaved (RFC 8489 section 5).


def pack_type(method: int, message_class: int) -> int:
    return (
        ((method & 0xF80) << 2)
        | ((method & 0x070) << 1)
        | (method & 0x00F)
        | ((message_class & 0b10) << 7)
        | ((message_class & 0b01) << 4)
    )


def unpack_type(message_type: int) -> tuple[int, int]:
    method = ((message_type & 0x3E00) >> 2) | ((message_type & 0x00E0) >> 1) | (message_type & 0x000F)
    message_class = ((message_type & 0x0100) >> 7) | ((message_type & 0x0010) >> 4)
    return method, message_class


# --------------------------------------------------------------------------
# Attribute value packers.  Each unpacker gets exactly the value bytes (the
# length field was already checked against the table's bounds).


def _xor_mask(transaction_id: bytes) -> bytes:
    return MAGIC_COOKIE_BYTES + transaction_id


def _xor_bytes(raw: bytes, mask: bytes) -> bytes:
    size = len(raw)
    return (int.from_bytes(raw, "big") ^ int.from_bytes(mask[:size], "big")).to_bytes(size, "big")


def _pack_address_body(address: Address, first_byte: int, xor_with: bytes | None) -> bytes:
    host, port = address
    # socket.inet_pton is ~20x faster than the ipaddress module on this hot path.
    try:
        if ":" in host:
            family, raw = 0x02, socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
        else:
            family, raw = 0x01, socket.inet_pton(socket.AF_INET, host)
    except OSError:
        raise ValueError(f"not an IP address: {host!r}") from None
    if xor_with is not None:
        port ^= MAGIC_COOKIE >> 16
        raw = _xor_bytes(raw, xor_with)
    return _ADDRESS_HEAD.pack(first_byte, family, port) + raw


_ADDRESS_HEAD = struct.Struct("!BBH")


def _unpack_address_body(value: bytes, xor_with: bytes | None) -> tuple[int, Address]:
    first_byte, family, port = struct.unpack_from("!BBH", value)
    raw = value[4:]
    if family == 0x01:
        if len(raw) != 4:
            raise MalformedMessage(f"IPv4 address must be 4 bytes, got {len(raw)}")
    elif family == 0x02:
        if len(raw) != 16:
            raise MalformedMessage(f"IPv6 address must be 16 bytes, got {len(raw)}")
    else:
        raise MalformedMessage(f"unknown address family 0x{family:02x}")
    if xor_with is not None:
        port ^= MAGIC_COOKIE >> 16
        raw = _xor_bytes(raw, xor_with)
    host = socket.inet_ntop(socket.AF_INET if family == 0x01 else socket.AF_INET6, raw)
    return first_byte, (host, port)


def pack_address(value: Address, tid: bytes) -> bytes:
    return _pack_address_body(value, 0, None)


def unpack_address(value: bytes, tid: bytes) -> Address:
    return _unpack_address_body(value, None)[1]


def pack_xor_address(value: Address, tid: bytes) -> bytes:
    return _pack_address_body(value, 0, _xor_mask(tid))


def unpack_xor_address(value: bytes, tid: bytes) -> Address:
    return _unpack_address_body(value, _xor_mask(tid))[1]


def pack_candidate(value: Candidate, tid: bytes) -> bytes:
    return _pack_address_body(value.address, int(value.kind), _xor_mask(tid))


def unpack_candidate(value: bytes, tid: bytes) -> Candidate:
    kind, address = _unpack_address_body(value, _xor_mask(tid))
    try:
        return Candidate(CandidateKind(kind), address)
    except ValueError:
        raise MalformedMessage(f"unknown candidate kind {kind}") from None


def pack_u32(value: int, tid: bytes) -> bytes:
    return struct.pack("!I", value)


def unpack_u32(value: bytes, tid: bytes) -> int:
    return int(struct.unpack("!I", value)[0])


def pack_u64(value: int, tid: bytes) -> bytes:
    return struct.pack("!Q", value)


def unpack_u64(value: bytes, tid: bytes) -> int:
    return int(struct.unpack("!Q", value)[0])


def pack_bytes(value: bytes, tid: bytes) -> bytes:
    return bytes(value)


def unpack_bytes(value: bytes, tid: bytes) -> bytes:
    return bytes(value)


def pack_text(value: str, tid: bytes) -> bytes:
    return value.encode("utf-8")


def unpack_text(value: bytes, tid: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedMessage("text attribute is not valid UTF-8") from None


def pack_error(value: ErrorValue, tid: bytes) -> bytes:
    code, reason = value
    return struct.pack("!HBB", 0, code // 100, code % 100) + reason.encode("utf-8")


def unpack_error(value: bytes, tid: bytes) -> ErrorValue:
    _, hundreds, units = struct.unpack_from("!HBB", value)
    hundreds &= 0x07
    if not 3 <= hundreds <= 6 or units > 99:
        raise MalformedMessage(f"ERROR-CODE class {hundreds} number {units} out of range")
    return ErrorValue(hundreds * 100 + units, unpack_text(value[4:], tid))


def pack_attribute_list(value: tuple[int, ...], tid: bytes) -> bytes:
    return b"".join(struct.pack("!H", code) for code in value)


def unpack_attribute_list(value: bytes, tid: bytes) -> tuple[int, ...]:
    if len(value) % 2:
        raise MalformedMessage("UNKNOWN-ATTRIBUTES length is odd")
    return tuple(struct.unpack(f"!{len(value) // 2}H", value))


PEER_ENTRY_FIXED = struct.Struct("!IQ32s")


def pack_peer_entry(value: PeerEntry, tid: bytes) -> bytes:
    return PEER_ENTRY_FIXED.pack(value.peer_id, value.online_since, value.public_key) + value.nickname.encode("utf-8")


def unpack_peer_entry(value: bytes, tid: bytes) -> PeerEntry:
    peer_id, online_since, public_key = PEER_ENTRY_FIXED.unpack_from(value)
    return PeerEntry(peer_id, online_since, public_key, unpack_text(value[PEER_ENTRY_FIXED.size :], tid))


# WATCH-IDS, UNWATCH-IDS and OFFLINE-IDS: u32 peer ids back to back (at most
# MAX_IDS_PER_ATTRIBUTE: UNWATCH-IDS adds nothing to the answer).  A WATCH carries at
# most MAX_WATCH_IDS: its answer has a PEER-ENTRY (up to 112 bytes with the
# TLV header) for each one online, and ten of those fit in MAX_REPLY_BYTES.
MAX_WATCH_IDS = 10
MAX_IDS_PER_ATTRIBUTE = 64


def pack_id_list(value: tuple[int, ...], tid: bytes) -> bytes:
    return struct.pack(f"!{len(value)}I", *value)


def unpack_id_list(value: bytes, tid: bytes) -> tuple[int, ...]:
    if len(value) % 4:
        raise MalformedMessage("id list length is not a multiple of 4")
    return struct.unpack(f"!{len(value) // 4}I", value)


class MailItem(NamedTuple):
    """One mailbox message as FETCH hands it out (docs/PROTOCOL.md 5.12)."""

    sender: int
    deposited_at: int  # Unix seconds, server clock
    mail_id: bytes  # MAIL_ID_LENGTH bytes
    sealed: bytes  # 1..MAX_SEALED bytes


MAIL_ITEM_FIXED = struct.Struct(f"!IQ{MAIL_ID_LENGTH}s")


def pack_mail_item(value: MailItem, tid: bytes) -> bytes:
    return MAIL_ITEM_FIXED.pack(value.sender, value.deposited_at, value.mail_id) + value.sealed


def unpack_mail_item(value: bytes, tid: bytes) -> MailItem:
    sender, deposited_at, mail_id = MAIL_ITEM_FIXED.unpack_from(value)
    return MailItem(sender, deposited_at, mail_id, bytes(value[MAIL_ITEM_FIXED.size :]))


class AttributeSpec(NamedTuple):
    name: str
    pack: Callable[[Any, bytes], bytes]
    unpack: Callable[[bytes, bytes], Any]
    min_length: int
    max_length: int


ATTRIBUTES: dict[int, AttributeSpec] = {
    Attr.MAPPED_ADDRESS: AttributeSpec("MAPPED-ADDRESS", pack_address, unpack_address, 8, 20),
    Attr.CHANGE_REQUEST: AttributeSpec("CHANGE-REQUEST", pack_u32, unpack_u32, 4, 4),
    Attr.USERNAME: AttributeSpec("USERNAME", pack_text, unpack_text, 0, 513),
    Attr.MESSAGE_INTEGRITY: AttributeSpec("MESSAGE-INTEGRITY", pack_bytes, unpack_bytes, 20, 20),
    Attr.ERROR_CODE: AttributeSpec("ERROR-CODE", pack_error, unpack_error, 4, 4 + 763),
    Attr.UNKNOWN_ATTRIBUTES: AttributeSpec("UNKNOWN-ATTRIBUTES", pack_attribute_list, unpack_attribute_list, 0, 64),
    Attr.REALM: AttributeSpec("REALM", pack_text, unpack_text, 0, 763),
    Attr.NONCE: AttributeSpec("NONCE", pack_text, unpack_text, 0, 763),
    Attr.DATA: AttributeSpec("DATA", pack_bytes, unpack_bytes, 0, MAX_RELAY_PAYLOAD),
    Attr.XOR_MAPPED_ADDRESS: AttributeSpec("XOR-MAPPED-ADDRESS", pack_xor_address, unpack_xor_address, 8, 20),
    Attr.PRIORITY: AttributeSpec("PRIORITY", pack_u32, unpack_u32, 4, 4),
    Attr.USE_CANDIDATE: AttributeSpec("USE-CANDIDATE", pack_bytes, unpack_bytes, 0, 0),
    Attr.PUBLIC_KEY: AttributeSpec("PUBLIC-KEY", pack_bytes, unpack_bytes, PUBLIC_KEY_LENGTH, PUBLIC_KEY_LENGTH),
    Attr.CANDIDATE: AttributeSpec("CANDIDATE", pack_candidate, unpack_candidate, 8, 20),
    Attr.TTL: AttributeSpec("TTL", pack_u32, unpack_u32, 4, 4),
    Attr.PEER_ID: AttributeSpec("PEER-ID", pack_u32, unpack_u32, 4, 4),
    Attr.CHALLENGE: AttributeSpec("CHALLENGE", pack_bytes, unpack_bytes, 8, 64),
    Attr.SIGNATURE: AttributeSpec("SIGNATURE", pack_bytes, unpack_bytes, SIGNATURE_LENGTH, SIGNATURE_LENGTH),
    Attr.SESSION: AttributeSpec("SESSION", pack_bytes, unpack_bytes, SESSION_LENGTH, SESSION_LENGTH),
    Attr.LIMIT: AttributeSpec("LIMIT", pack_u32, unpack_u32, 4, 4),
    Attr.CURSOR: AttributeSpec("CURSOR", pack_bytes, unpack_bytes, 1, MAX_CURSOR_LENGTH),
    Attr.PEER_ENTRY: AttributeSpec(
        "PEER-ENTRY",
        pack_peer_entry,
        unpack_peer_entry,
        PEER_ENTRY_FIXED.size,
        PEER_ENTRY_FIXED.size + MAX_NICKNAME_BYTES,
    ),
    Attr.PUNCH_KEY: AttributeSpec("PUNCH-KEY", pack_bytes, unpack_bytes, PUNCH_KEY_LENGTH, PUNCH_KEY_LENGTH),
    Attr.WATCH_IDS: AttributeSpec("WATCH-IDS", pack_id_list, unpack_id_list, 4, 4 * MAX_IDS_PER_ATTRIBUTE),
    Attr.OFFLINE_IDS: AttributeSpec("OFFLINE-IDS", pack_id_list, unpack_id_list, 4, 4 * MAX_IDS_PER_ATTRIBUTE),
    Attr.MAIL_ID: AttributeSpec("MAIL-ID", pack_bytes, unpack_bytes, MAIL_ID_LENGTH, MAIL_ID_LENGTH),
    Attr.SEALED: AttributeSpec("SEALED", pack_bytes, unpack_bytes, 1, MAX_SEALED),
    Attr.MAIL_ITEM: AttributeSpec(
        "MAIL-ITEM", pack_mail_item, unpack_mail_item, MAIL_ITEM_FIXED.size + 1, MAIL_ITEM_FIXED.size + MAX_SEALED
    ),
    Attr.MAIL_COUNT: AttributeSpec("MAIL-COUNT", pack_u32, unpack_u32, 4, 4),
    Attr.UNWATCH_IDS: AttributeSpec("UNWATCH-IDS", pack_id_list, unpack_id_list, 4, 4 * MAX_IDS_PER_ATTRIBUTE),
    Attr.SOFTWARE: AttributeSpec("SOFTWARE", pack_text, unpack_text, 0, 763),
    Attr.RESPONSE_ORIGIN: AttributeSpec("RESPONSE-ORIGIN", pack_address, unpack_address, 8, 20),
    Attr.OTHER_ADDRESS: AttributeSpec("OTHER-ADDRESS", pack_address, unpack_address, 8, 20),
    Attr.FINGERPRINT: AttributeSpec("FINGERPRINT", pack_u32, unpack_u32, 4, 4),
    Attr.ICE_CONTROLLED: AttributeSpec("ICE-CONTROLLED", pack_u64, unpack_u64, 8, 8),
    Attr.ICE_CONTROLLING: AttributeSpec("ICE-CONTROLLING", pack_u64, unpack_u64, 8, 8),
    Attr.NICKNAME: AttributeSpec("NICKNAME", pack_text, unpack_text, 0, MAX_NICKNAME_BYTES),
    Attr.ONLINE_SINCE: AttributeSpec("ONLINE-SINCE", pack_u64, unpack_u64, 8, 8),
}


def is_comprehension_required(code: int) -> bool:
    return code < 0x8000


# --------------------------------------------------------------------------


@dataclass
class Message:
    """A decoded (or to-be-encoded) STUN message.

    ``attributes`` keeps wire order, and repeats where the wire repeats (as
    CANDIDATE and PEER-ENTRY do).  ``classic`` marks an RFC 3489 message
    without the magic cookie: its transaction id is then 16 bytes long.
    ``unknown_required`` lists comprehension-required attribute types that
    this codec does not know; the server answers those with 420.
    """

    method: int
    message_class: MessageClass
    transaction_id: bytes
    attributes: list[tuple[int, Any]] = field(default_factory=list)
    classic: bool = False
    unknown_required: tuple[int, ...] = ()
    # Offset of MESSAGE-INTEGRITY in the raw bytes, for verify_integrity().
    raw: bytes = b""
    integrity_offset: int | None = None

    def get(self, code: int, default: Any = None) -> Any:
        for attr_code, value in self.attributes:
            if attr_code == code:
                return value
        return default

    def get_all(self, code: int) -> list[Any]:
        return [value for attr_code, value in self.attributes if attr_code == code]

    def add(self, code: int, value: Any) -> Message:
        self.attributes.append((code, value))
        return self

    def verify_integrity(self, key: bytes) -> bool:
        """Check MESSAGE-INTEGRITY (HMAC-SHA1) against ``key``."""
        if self.integrity_offset is None:
            return False
        offset = self.integrity_offset
        # The length field covers everything up to and including MESSAGE-INTEGRITY.
        header = self.raw[:2] + struct.pack("!H", offset + 24 - HEADER_LENGTH) + self.raw[4:HEADER_LENGTH]
        expected = hmac.new(key, header + self.raw[HEADER_LENGTH:offset], hashlib.sha1).digest()
        return hmac.compare_digest(expected, self.get(Attr.MESSAGE_INTEGRITY))


def new_transaction_id(random_bytes: Callable[[int], bytes]) -> bytes:
    return random_bytes(12)


def encode(
    message: Message,
    *,
    integrity_key: bytes | None = None,
    fingerprint: bool = True,
) -> bytes:
    """Serialise ``message``; optionally append MESSAGE-INTEGRITY and FINGERPRINT."""
    tid = message.transaction_id
    if message.classic:
        if len(tid) != 16:
            raise ValueError("classic (RFC 3489) transaction id must be 16 bytes")
        cookie_and_tid = tid
        xor_tid = tid[4:]
    else:
        if len(tid) != 12:
            raise ValueError("transaction id must be 12 bytes")
        cookie_and_tid = MAGIC_COOKIE_BYTES + tid
        xor_tid = tid
    parts = []
    attribute_header = ATTRIBUTE_HEADER.pack
    for code, value in message.attributes:
        spec = ATTRIBUTES.get(code)
        raw = value if spec is None else spec.pack(value, xor_tid)
        if spec is not None and not spec.min_length <= len(raw) <= spec.max_length:
            raise ValueError(f"{spec.name} value of {len(raw)} bytes is out of bounds")
        parts.append(attribute_header(code, len(raw)))
        parts.append(raw)
        if len(raw) % 4:
            parts.append(_PADDING[len(raw) % 4])
    body = b"".join(parts)
    message_type = pack_type(message.method, message.message_class)
    if integrity_key is not None:
        header = _TYPE_LENGTH.pack(message_type, len(body) + 24) + cookie_and_tid
        mac = hmac.new(integrity_key, header + body, hashlib.sha1).digest()
        body += attribute_header(Attr.MESSAGE_INTEGRITY, 20) + mac
    if fingerprint:
        header = _TYPE_LENGTH.pack(message_type, len(body) + 8) + cookie_and_tid
        crc = binascii.crc32(body, binascii.crc32(header)) ^ FINGERPRINT_XOR
        return header + body + _FINGERPRINT_HEAD + _U32.pack(crc)
    return _TYPE_LENGTH.pack(message_type, len(body)) + cookie_and_tid + body


_PADDING = {1: bytes(3), 2: bytes(2), 3: bytes(1)}
_TYPE_LENGTH = struct.Struct("!HH")
_U32 = struct.Struct("!I")
_FINGERPRINT_HEAD = ATTRIBUTE_HEADER.pack(0x8028, 4)
_TTL_HEAD = ATTRIBUTE_HEADER.pack(0x4003, 4)
_REFRESH_SUCCESS = pack_type(0x802, 0b10)


def fast_binding_success(transaction_id: bytes, address: Address, software: bytes) -> bytes:
    """A Binding success response (XOR-MAPPED-ADDRESS, optional SOFTWARE
    attribute bytes, FINGERPRINT) without the generic encoder: the Binding
    path is the server's hottest.  ``software`` is a pre-encoded SOFTWARE
    TLV (with padding) or b""; byte-identical to :func:`encode`'s output."""
    mapped = pack_xor_address(address, transaction_id)
    body = ATTRIBUTE_HEADER.pack(0x0020, len(mapped)) + mapped + software
    header = _TYPE_LENGTH.pack(0x0101, len(body) + 8) + MAGIC_COOKIE_BYTES + transaction_id
    crc = binascii.crc32(body, binascii.crc32(header)) ^ FINGERPRINT_XOR
    return header + body + _FINGERPRINT_HEAD + _U32.pack(crc)


def binding_body(address: Address, software: bytes) -> bytes:
    """XOR-MAPPED-ADDRESS and SOFTWARE TLVs of a Binding success for an IPv4
    ``address``: for IPv4 the XOR mask is the magic cookie alone, so these
    bytes are the same for every transaction and can be cached."""
    if ":" in address[0]:
        raise ValueError("only IPv4 Binding bodies are independent of the transaction id")
    mapped = pack_xor_address(address, bytes(12))
    return ATTRIBUTE_HEADER.pack(0x0020, len(mapped)) + mapped + software


def binding_success_with_body(transaction_id: bytes, body: bytes) -> bytes:
    """Header + a pre-built :func:`binding_body` + FINGERPRINT."""
    header = _TYPE_LENGTH.pack(0x0101, len(body) + 8) + MAGIC_COOKIE_BYTES + transaction_id
    crc = binascii.crc32(body, binascii.crc32(header)) ^ FINGERPRINT_XOR
    return header + body + _FINGERPRINT_HEAD + _U32.pack(crc)


def refresh_success(transaction_id: bytes, ttl: int, body: bytes) -> bytes:
    """REFRESH success: TTL, then ``body`` (XOR-MAPPED-ADDRESS and SOFTWARE
    TLVs, as :func:`binding_body` makes them), then FINGERPRINT."""
    tlvs = _TTL_HEAD + _U32.pack(ttl) + body
    header = _TYPE_LENGTH.pack(_REFRESH_SUCCESS, len(tlvs) + 8) + MAGIC_COOKIE_BYTES + transaction_id
    crc = binascii.crc32(tlvs, binascii.crc32(header)) ^ FINGERPRINT_XOR
    return header + tlvs + _FINGERPRINT_HEAD + _U32.pack(crc)


def encode_attribute(code: int, value: Any, transaction_id: bytes = bytes(12)) -> bytes:
    """One attribute as TLV bytes with padding (for pre-encoded constants)."""
    spec = ATTRIBUTES[code]
    raw = spec.pack(value, transaction_id)
    return ATTRIBUTE_HEADER.pack(code, len(raw)) + raw + bytes(-len(raw) % 4)


def looks_like_stun(data: bytes) -> bool:
    """First-byte demultiplexing (RFC 7983): STUN starts with bits 00."""
    return len(data) >= HEADER_LENGTH and data[0] < 0x40


def decode(data: bytes, *, allow_classic: bool = False, require_fingerprint: bool = False) -> Message:
    """Parse and check one datagram.  Raises :class:`StunProtocolError`."""
    length_in = len(data)
    if length_in < HEADER_LENGTH:
        raise MalformedMessage(f"datagram of {length_in} bytes is shorter than the 20-byte header")
    if length_in > MAX_MESSAGE_LENGTH:
        raise MalformedMessage(f"datagram of {length_in} bytes exceeds {MAX_MESSAGE_LENGTH}")
    message_type, body_length, cookie, tid = HEADER.unpack_from(data)
    if message_type & 0xC000:
        raise MalformedMessage("the two most significant bits of a STUN message must be zero")
    if body_length % 4:
        raise MalformedMessage(f"message length {body_length} is not a multiple of 4")
    if body_length != length_in - HEADER_LENGTH:
        raise MalformedMessage(f"message length field says {body_length} but {length_in - HEADER_LENGTH} bytes follow")
    classic = cookie != MAGIC_COOKIE
    if classic and not allow_classic:
        raise MalformedMessage(f"wrong magic cookie 0x{cookie:08x}")
    transaction_id = data[4:HEADER_LENGTH] if classic else tid
    xor_tid = data[8:HEADER_LENGTH]
    method, message_class = unpack_type(message_type)
    message = Message(method, MessageClass(message_class), bytes(transaction_id), classic=classic, raw=bytes(data))

    unknown: list[int] = []
    offset = HEADER_LENGTH
    seen_integrity = False
    while offset < length_in:
        if length_in - offset < 4:
            raise MalformedMessage(f"truncated attribute header at offset {offset}")
        code, attr_length = ATTRIBUTE_HEADER.unpack_from(data, offset)
        value_start = offset + 4
        value_end = value_start + attr_length
        padded_end = value_start + attr_length + (-attr_length % 4)
        if padded_end > length_in:
            raise MalformedMessage(f"attribute 0x{code:04x} of {attr_length} bytes overruns the message")
        value = data[value_start:value_end]
        if code == Attr.FINGERPRINT:
            if padded_end != length_in:
                raise MalformedMessage("FINGERPRINT is not the last attribute")
            if attr_length != 4:
                raise MalformedMessage(f"FINGERPRINT must be 4 bytes, got {attr_length}")
            expected = binascii.crc32(data[:offset]) ^ FINGERPRINT_XOR
            if struct.unpack("!I", value)[0] != expected:
                raise IntegrityError("FINGERPRINT does not match the message")
            message.attributes.append((code, expected))
            message.unknown_required = tuple(unknown)
            return message
        if seen_integrity:
            # RFC 8489 14.5: anything after MESSAGE-INTEGRITY but FINGERPRINT is ignored.
            offset = padded_end
            continue
        spec = ATTRIBUTES.get(code)
        if spec is None:
            if is_comprehension_required(code):
                unknown.append(code)
            offset = padded_end
            continue
        if not spec.min_length <= attr_length <= spec.max_length:
            raise MalformedMessage(f"{spec.name} length {attr_length} outside {spec.min_length}..{spec.max_length}")
        message.attributes.append((code, spec.unpack(value, xor_tid)))
        if code == Attr.MESSAGE_INTEGRITY:
            seen_integrity = True
            message.integrity_offset = offset
        offset = padded_end
    if require_fingerprint:
        raise MalformedMessage("FINGERPRINT is missing")
    message.unknown_required = tuple(unknown)
    return message


def peek_transaction_id(data: bytes) -> bytes | None:
    """The transaction id of a datagram that may fail to decode, for error replies."""
    if len(data) < HEADER_LENGTH:
        return None
    return bytes(data[8:HEADER_LENGTH])


def attribute_names(codes: Iterable[int]) -> list[str]:
    return [ATTRIBUTES[c].name if c in ATTRIBUTES else f"0x{c:04x}" for c in codes]
