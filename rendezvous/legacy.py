"""Codec for the original course project's plain-text protocol, pure (no I/O).

The server speaks it on the STUN port when started with ``--legacy-text``, so
that the old command-line clients keep working.  One UDP datagram per message,
UTF-8 text, no framing and no pagination::

    -> REGISTER          <- REGISTER_ACK:<id>
    -> LIST              <- LIST_ACK:<id>,('<ip>', <port>)\\n<id>,('<ip>', <port>)...
    -> CONNECT:<id>      <- CONNECT_ACK:<ip>:<port>     (IPv6: CONNECT_ACK:[<ip>]:<port>)
    -> EXIT              <- EXIT_ACK
                         <- ERROR:<reason>              (ours; the original crashed)

Choices made where the original left things open:

* Commands are case-sensitive, as the original compared whole strings
  (``list`` is unknown).  Surrounding ASCII whitespace (the newline a
  line-reading client leaves on) is ignored.
* The ``CONNECT`` id is ASCII digits only (``int()`` also took ``+3``, ``1_0``
  and non-ASCII digits), value 1 .. 2**32-1; leading zeros are accepted.
* ``CONNECT_ACK`` brackets IPv6 hosts (RFC 3986 style) so a client can still
  split host from port at the last colon; ``LIST_ACK`` prints every address
  as a Python tuple, as the original's ``str((ip, port))`` did.
* The protocol has no pagination, so :func:`format_list_ack` stops adding
  lines at ``max_bytes`` to keep the reply in one datagram.

Replies can be far larger than requests and nothing here proves the sender's
address: limiting what unproven addresses receive is the server's job.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .stun import Address

MAX_REQUEST_BYTES = 64
DEFAULT_LIST_MAX_BYTES = 1400  # stays under a typical 1500-byte MTU with headers
MAX_PEER_ID = 2**32 - 1
MAX_ERROR_REASON_CHARS = 120
_ECHO_CHARS = 20  # how much of a bad input an error message quotes back
_WHITESPACE = " \t\r\n"
# [0-9], not \d: \d matches every Unicode decimal digit, e.g. "٣".
_DIGITS = re.compile(r"[0-9]+")
# Interface names: printable ASCII, minus what would break a reply line.
_SCOPE_ID = re.compile(r"[!#$&*-Z^-~]{1,64}")


class LegacyProtocolError(Exception):
    """A datagram that is not a valid legacy request.

    ``reason`` is a short one-line description; ``reply`` is the ``ERROR:``
    datagram the server may send back for it.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    @property
    def reply(self) -> bytes:
        return format_error(self.reason)


@dataclass(frozen=True, slots=True)
class LegacyRequest:
    """Base of every request a legacy client can send."""


@dataclass(frozen=True, slots=True)
class LegacyRegister(LegacyRequest):
    """``REGISTER``: give me an id (the same one again for the same address)."""


@dataclass(frozen=True, slots=True)
class LegacyList(LegacyRequest):
    """``LIST``: who else is registered."""


@dataclass(frozen=True, slots=True)
class LegacyConnect(LegacyRequest):
    """``CONNECT:<id>``: the address of peer ``target_id``."""

    target_id: int


@dataclass(frozen=True, slots=True)
class LegacyExit(LegacyRequest):
    """``EXIT``: forget me."""


_SIMPLE_COMMANDS: dict[str, LegacyRequest] = {
    "REGISTER": LegacyRegister(),
    "LIST": LegacyList(),
    "EXIT": LegacyExit(),
}
_CONNECT_PREFIX = "CONNECT:"


def _quote(text: str) -> str:
    """Quote untrusted text for an error message: short, one line."""
    if len(text) > _ECHO_CHARS:
        return repr(text[:_ECHO_CHARS]) + "..."
    return repr(text)


def looks_like_legacy(data: bytes) -> bool:
    """True if a datagram on the shared port should go to this codec.

    Every legacy command starts with an ASCII capital letter; a STUN message
    always starts with a byte below 0x40 (its first two bits are zero), and so
    does leading whitespace, which is why such datagrams are not routed here.
    QUIC short headers (0x41-0x5A possible) run peer to peer, not to the server.
    """
    return bool(data) and 0x41 <= data[0] <= 0x5A


def parse_request(data: bytes) -> LegacyRequest:
    """Decode one datagram into a request, or raise :class:`LegacyProtocolError`."""
    if len(data) > MAX_REQUEST_BYTES:
        raise LegacyProtocolError(f"request too long: {len(data)} bytes (max {MAX_REQUEST_BYTES})")
    try:
        text = data.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise LegacyProtocolError(f"request is not UTF-8 (bad byte at {exc.start})") from None
    text = text.strip(_WHITESPACE)
    if not text:
        raise LegacyProtocolError("empty request")
    simple = _SIMPLE_COMMANDS.get(text)
    if simple is not None:
        return simple
    if text.startswith(_CONNECT_PREFIX):
        return LegacyConnect(_parse_peer_id(text[len(_CONNECT_PREFIX) :]))
    raise LegacyProtocolError(f"unknown command {_quote(text)}")


def _parse_peer_id(text: str) -> int:
    if not text:
        raise LegacyProtocolError("CONNECT needs a peer id")
    if _DIGITS.fullmatch(text) is None:
        raise LegacyProtocolError(f"peer id must be ASCII decimal digits, got {_quote(text)}")
    value = int(text)
    if value == 0:
        raise LegacyProtocolError("peer id must be positive, got 0")
    if value > MAX_PEER_ID:
        raise LegacyProtocolError(f"peer id out of range, got {_quote(text)}")
    return value


def _check_peer_id(peer_id: int) -> None:
    # Formatters take values from our own server, so a bad one is a bug here:
    # ValueError, not LegacyProtocolError (which is about what peers send).
    if not 1 <= peer_id <= MAX_PEER_ID:
        raise ValueError(f"peer id out of range: {peer_id}")


def _check_address(address: Address) -> tuple[str, int, bool]:
    """Validate an (ip, port) pair; returns (host, port, is_ipv6)."""
    host, port = address
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port out of range: {port}")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"not an IP address: {host!r}") from None
    # ipaddress takes any text as a scope id ("fe80::1%eth0"); a quote or a
    # newline in it would break the reply's line format.
    if "%" in host and _SCOPE_ID.fullmatch(host.split("%", 1)[1]) is None:
        raise ValueError(f"bad scope id in {host!r}")
    return host, port, ip.version == 6


def format_register_ack(peer_id: int) -> bytes:
    """``REGISTER_ACK:<id>``."""
    _check_peer_id(peer_id)
    return f"REGISTER_ACK:{peer_id}".encode()


def format_list_ack(entries: Iterable[tuple[int, Address]], max_bytes: int = DEFAULT_LIST_MAX_BYTES) -> bytes:
    """``LIST_ACK:`` and one ``<id>,('<ip>', <port>)`` line per entry.

    The caller leaves the requester out.  Lines are added in the given order
    until the next one would make the datagram longer than ``max_bytes``; the
    rest are dropped, because the original protocol has no pagination.
    """
    out = bytearray(b"LIST_ACK:")
    if max_bytes < len(out):
        raise ValueError(f"max_bytes too small: {max_bytes}")
    separator = b""
    for peer_id, address in entries:
        _check_peer_id(peer_id)
        host, port, _ = _check_address(address)
        # repr(host) is exactly how str((host, port)) printed the host.
        line = f"{peer_id},({host!r}, {port})".encode()
        if len(out) + len(separator) + len(line) > max_bytes:
            break
        out += separator + line
        separator = b"\n"
    return bytes(out)


def format_connect_ack(address: Address) -> bytes:
    """``CONNECT_ACK:<ip>:<port>``, with IPv6 hosts in brackets."""
    host, port, is_ipv6 = _check_address(address)
    shown = f"[{host}]" if is_ipv6 else host
    return f"CONNECT_ACK:{shown}:{port}".encode()


def format_exit_ack() -> bytes:
    """``EXIT_ACK``."""
    return b"EXIT_ACK"


def format_error(reason: str) -> bytes:
    """``ERROR:<reason>``: one printable line, at most 120 characters of reason."""
    line = "".join(c if c.isprintable() else "?" for c in reason)
    return f"ERROR:{line[:MAX_ERROR_REASON_CHARS]}".encode()
