"""The original plain-text protocol's codec: exact bytes both ways."""

from __future__ import annotations

import ast
import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from rendezvous.legacy import (
    MAX_PEER_ID,
    MAX_REQUEST_BYTES,
    LegacyConnect,
    LegacyExit,
    LegacyList,
    LegacyProtocolError,
    LegacyRegister,
    LegacyRequest,
    format_connect_ack,
    format_error,
    format_exit_ack,
    format_list_ack,
    format_register_ack,
    looks_like_legacy,
    parse_request,
)

# How the original client read a LIST_ACK: one regex over the whole text.
ORIGINAL_CLIENT_LINE = re.compile(r"(\d+),\('([^']*)', (\d+)\)")


def client_parse_list(reply: bytes) -> list[tuple[int, tuple[str, int]]]:
    text = reply.decode()
    assert text.startswith("LIST_ACK:")
    return [
        (int(peer_id), (host, int(port)))
        for peer_id, host, port in ORIGINAL_CLIENT_LINE.findall(text[len("LIST_ACK:") :])
    ]


# --- requests ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"REGISTER", LegacyRegister()),
        (b"LIST", LegacyList()),
        (b"EXIT", LegacyExit()),
        (b"CONNECT:1", LegacyConnect(1)),
        (b"CONNECT:42", LegacyConnect(42)),
        (b"CONNECT:007", LegacyConnect(7)),
        (b"CONNECT:4294967295", LegacyConnect(MAX_PEER_ID)),
        (b"LIST\n", LegacyList()),
        (b"REGISTER\r\n", LegacyRegister()),
        (b"CONNECT:3\n", LegacyConnect(3)),
        (b"  EXIT \t\r\n", LegacyExit()),
        (b"\nLIST\n\n", LegacyList()),
    ],
)
def test_parse_valid_requests(data: bytes, expected: LegacyRequest) -> None:
    request = parse_request(data)
    assert request == expected
    assert type(request) is type(expected)


def test_requests_are_frozen() -> None:
    request = parse_request(b"CONNECT:5")
    assert isinstance(request, LegacyConnect)
    with pytest.raises(AttributeError):
        request.target_id = 6  # type: ignore[misc]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty request"),
        (b" \r\n", "empty request"),
        (b"list", "unknown command 'list'"),
        (b"Register", "unknown command 'Register'"),
        (b"REGISTER:", "unknown command 'REGISTER:'"),
        (b"LIST 2", "unknown command 'LIST 2'"),
        (b"EXIT\nEXIT", "unknown command 'EXIT\\nEXIT'"),
        (b"REGISTER\x00", "unknown command 'REGISTER\\x00'"),
        (b"CONNECT", "unknown command 'CONNECT'"),
        (b"HELLO_THERE_THIS_IS_A_LONG_ONE", "unknown command 'HELLO_THERE_THIS_IS_'..."),
        (b"CONNECT:", "CONNECT needs a peer id"),
        (b"CONNECT:abc", "peer id must be ASCII decimal digits, got 'abc'"),
        (b"CONNECT:-1", "peer id must be ASCII decimal digits, got '-1'"),
        (b"CONNECT:+1", "peer id must be ASCII decimal digits, got '+1'"),
        (b"CONNECT:1e3", "peer id must be ASCII decimal digits, got '1e3'"),
        (b"CONNECT:1_000", "peer id must be ASCII decimal digits, got '1_000'"),
        (b"CONNECT: 3", "peer id must be ASCII decimal digits, got ' 3'"),
        (b"CONNECT:3 4", "peer id must be ASCII decimal digits, got '3 4'"),
        (b"CONNECT:0x10", "peer id must be ASCII decimal digits, got '0x10'"),
        ("CONNECT:٣".encode(), "peer id must be ASCII decimal digits, got '٣'"),
        ("CONNECT:１２".encode(), "peer id must be ASCII decimal digits, got '１２'"),
        (b"CONNECT:0", "peer id must be positive, got 0"),
        (b"CONNECT:0000", "peer id must be positive, got 0"),
        (b"CONNECT:4294967296", "peer id out of range, got '4294967296'"),
        (b"CONNECT:" + b"9" * 40, "peer id out of range, got '99999999999999999999'..."),
        (b"\xff\xfeLIST", "request is not UTF-8 (bad byte at 0)"),
        (b"CONNECT:\xc3", "request is not UTF-8 (bad byte at 8)"),
        (b"LIST\xed\xa0\x80", "request is not UTF-8 (bad byte at 4)"),  # a surrogate
        (b"X" * (MAX_REQUEST_BYTES + 1), "request too long: 65 bytes (max 64)"),
        (b"LIST" + b" " * 61, "request too long: 65 bytes (max 64)"),
        (b"\xff" * 2000, "request too long: 2000 bytes (max 64)"),
    ],
)
def test_parse_rejects(data: bytes, message: str) -> None:
    with pytest.raises(LegacyProtocolError) as info:
        parse_request(data)
    assert str(info.value) == message
    assert info.value.reason == message
    assert info.value.reply == b"ERROR:" + message.encode()


def test_exactly_max_length_is_accepted() -> None:
    data = b"LIST" + b" " * (MAX_REQUEST_BYTES - 4)
    assert len(data) == MAX_REQUEST_BYTES
    assert parse_request(data) == LegacyList()


@given(st.binary(max_size=200))
@example(b"CONNECT:\x00")
@example(b"\xc0\x80")  # overlong NUL, invalid in strict UTF-8
def test_parse_arbitrary_bytes_never_crashes(data: bytes) -> None:
    try:
        request = parse_request(data)
    except LegacyProtocolError as exc:
        reply = exc.reply
        assert reply.startswith(b"ERROR:")
        assert b"\n" not in reply and b"\r" not in reply
        assert len(reply) <= 6 + 4 * 120
    else:
        assert isinstance(request, LegacyRequest)


@given(st.text(max_size=60))
def test_parse_arbitrary_connect_argument(argument: str) -> None:
    data = ("CONNECT:" + argument).encode()
    try:
        request = parse_request(data)
    except LegacyProtocolError:
        return
    assert isinstance(request, LegacyConnect)
    stripped = argument.rstrip(" \t\r\n")
    assert stripped.isascii() and stripped.isdigit()
    assert request.target_id == int(stripped)
    assert 1 <= request.target_id <= MAX_PEER_ID


@given(st.integers(min_value=1, max_value=MAX_PEER_ID))
def test_connect_round_trip(peer_id: int) -> None:
    assert parse_request(f"CONNECT:{peer_id}".encode()) == LegacyConnect(peer_id)


# --- replies ----------------------------------------------------------------


def test_format_register_ack() -> None:
    assert format_register_ack(3) == b"REGISTER_ACK:3"
    assert format_register_ack(MAX_PEER_ID) == b"REGISTER_ACK:4294967295"


@pytest.mark.parametrize("bad", [0, -1, MAX_PEER_ID + 1])
def test_format_register_ack_rejects_bad_ids(bad: int) -> None:
    with pytest.raises(ValueError, match="peer id out of range"):
        format_register_ack(bad)


def test_format_list_ack_examples() -> None:
    assert format_list_ack([]) == b"LIST_ACK:"
    assert (
        format_list_ack([(1, ("127.0.0.1", 35213)), (2, ("127.0.0.1", 40000))])
        == b"LIST_ACK:1,('127.0.0.1', 35213)\n2,('127.0.0.1', 40000)"
    )
    assert format_list_ack([(5, ("::1", 4000))]) == b"LIST_ACK:5,('::1', 4000)"
    assert format_list_ack([(6, ("fe80::1%eth0", 1))]) == b"LIST_ACK:6,('fe80::1%eth0', 1)"


def test_format_list_ack_matches_python_tuple_printing() -> None:
    """The original printed ``f"{id},{addr}"`` with addr a tuple."""
    entries = [(1, ("10.0.0.1", 1)), (22, ("2001:db8::7", 65535))]
    expected = "\n".join(f"{peer_id},{address}" for peer_id, address in entries)
    assert format_list_ack(entries) == ("LIST_ACK:" + expected).encode()


def test_format_list_ack_stops_at_max_bytes() -> None:
    entries = [(n, ("127.0.0.1", 10000 + n)) for n in range(1, 200)]
    line = len(b"1,('127.0.0.1', 10001)")  # 22; ids 1-9 only
    assert format_list_ack(entries[:1], max_bytes=9 + line) == b"LIST_ACK:1,('127.0.0.1', 10001)"
    assert format_list_ack(entries, max_bytes=9 + line) == b"LIST_ACK:1,('127.0.0.1', 10001)"
    # The second line needs its separator too: one byte short keeps one line.
    assert format_list_ack(entries, max_bytes=9 + 2 * line) == b"LIST_ACK:1,('127.0.0.1', 10001)"
    assert format_list_ack(entries, max_bytes=9 + 2 * line + 1) == (
        b"LIST_ACK:1,('127.0.0.1', 10001)\n2,('127.0.0.1', 10002)"
    )
    assert format_list_ack(entries, max_bytes=9) == b"LIST_ACK:"
    big = format_list_ack(entries)
    assert len(big) <= 1400
    assert 1400 - len(big) < len(b"\n199,('127.0.0.1', 10199)")
    assert client_parse_list(big) == entries[: len(client_parse_list(big))]


def test_format_list_ack_stops_at_first_line_that_does_not_fit() -> None:
    """No reordering: a later short line is not squeezed in after a long one."""
    entries = [
        (1, ("1.1.1.1", 1)),
        (2, ("2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff", 2)),
        (3, ("3.3.3.3", 3)),
    ]
    # 9 + 16 + 1 + 16 = 42 bytes would hold lines 1 and 3, but not line 2.
    reply = format_list_ack(entries, max_bytes=42)
    assert reply == b"LIST_ACK:1,('1.1.1.1', 1)"


def test_format_list_ack_rejects_tiny_max_bytes() -> None:
    with pytest.raises(ValueError, match="max_bytes too small: 8"):
        format_list_ack([], max_bytes=8)


@pytest.mark.parametrize(
    ("address", "message"),
    [
        (("localhost", 1), "not an IP address: 'localhost'"),
        (("1.2.3.4\n5,('6.6.6.6', 6)", 1), "not an IP address"),
        (("fe80::1%a'b", 1), "bad scope id"),
        (("fe80::1%a\nb", 1), "bad scope id"),
        (("fe80::1%a b", 1), "bad scope id"),
        (("fe80::1%a]", 1), "bad scope id"),
        (("fe80::1%a\\", 1), "bad scope id"),
        (("1.2.3.4", 65536), "port out of range: 65536"),
        (("1.2.3.4", -1), "port out of range: -1"),
    ],
)
def test_formatters_reject_bad_addresses(address: tuple[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        format_list_ack([(1, address)])
    with pytest.raises(ValueError, match=re.escape(message)):
        format_connect_ack(address)


ipv4_hosts = st.ip_addresses(v=4).map(str)
ipv6_hosts = st.ip_addresses(v=6).map(str)
list_entries = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=MAX_PEER_ID),
        st.tuples(ipv4_hosts | ipv6_hosts, st.integers(min_value=0, max_value=65535)),
    ),
    max_size=80,
)


@given(list_entries, st.integers(min_value=9, max_value=3000))
def test_list_round_trip_through_original_client_regex(
    entries: list[tuple[int, tuple[str, int]]], max_bytes: int
) -> None:
    reply = format_list_ack(entries, max_bytes=max_bytes)
    assert len(reply) <= max_bytes
    parsed = client_parse_list(reply)
    # What fits is a prefix of the entries, in order, and exactly as sent.
    assert parsed == entries[: len(parsed)]
    if len(parsed) < len(entries):
        peer_id, (host, port) = entries[len(parsed)]
        next_line = f"{peer_id},{(host, port)}".encode()
        assert len(reply) + (1 if parsed else 0) + len(next_line) > max_bytes
    # Each line is also a literal Python tuple, as the original printed it.
    for line, (peer_id, address) in zip(reply[9:].decode().split("\n"), parsed, strict=False):
        head, _, tail = line.partition(",")
        assert int(head) == peer_id and ast.literal_eval(tail) == address


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (("127.0.0.1", 35213), b"CONNECT_ACK:127.0.0.1:35213"),
        (("10.1.2.3", 0), b"CONNECT_ACK:10.1.2.3:0"),
        (("::1", 4000), b"CONNECT_ACK:[::1]:4000"),
        (("2001:db8::1", 65535), b"CONNECT_ACK:[2001:db8::1]:65535"),
        (("fe80::1%eth0", 9), b"CONNECT_ACK:[fe80::1%eth0]:9"),
        (("fe80::1%br-lan.100", 9), b"CONNECT_ACK:[fe80::1%br-lan.100]:9"),
        (("fe80::1%7", 9), b"CONNECT_ACK:[fe80::1%7]:9"),
        (("::ffff:127.0.0.1", 5), b"CONNECT_ACK:[::ffff:127.0.0.1]:5"),
    ],
)
def test_format_connect_ack(address: tuple[str, int], expected: bytes) -> None:
    assert format_connect_ack(address) == expected


@given(ipv4_hosts | ipv6_hosts, st.integers(min_value=0, max_value=65535))
def test_connect_ack_splits_at_last_colon(host: str, port: int) -> None:
    """A client splitting host from port at the last colon gets both back."""
    text = format_connect_ack((host, port)).decode()
    assert text.startswith("CONNECT_ACK:")
    shown, _, port_text = text[len("CONNECT_ACK:") :].rpartition(":")
    assert int(port_text) == port
    assert shown.strip("[]") == host
    assert shown.startswith("[") == (":" in host)


def test_format_exit_ack() -> None:
    assert format_exit_ack() == b"EXIT_ACK"


def test_format_error() -> None:
    assert format_error("unknown peer 99") == b"ERROR:unknown peer 99"
    assert format_error("two\nlines\r\x00") == b"ERROR:two?lines??"
    assert format_error("x" * 500) == b"ERROR:" + b"x" * 120
    assert format_error("pair ü") == "ERROR:pair ü".encode()


# --- demultiplexing -----------------------------------------------------------


@pytest.mark.parametrize("data", [b"REGISTER", b"LIST", b"CONNECT:1", b"EXIT", b"A", b"Zzz"])
def test_looks_like_legacy_accepts_commands(data: bytes) -> None:
    assert looks_like_legacy(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"list",
        b" LIST",
        b"@",
        b"[",
        # A STUN Binding request header: type 0x0001, length 0, magic cookie.
        bytes.fromhex("000100002112a442") + bytes(12),
        # A STUN success response (0x0101) and a peerlink method request (0x0801).
        bytes.fromhex("010100002112a442") + bytes(12),
        bytes.fromhex("080100002112a442") + bytes(12),
    ],
)
def test_looks_like_legacy_rejects_others(data: bytes) -> None:
    assert not looks_like_legacy(data)


@given(st.binary(min_size=1))
def test_every_stun_first_byte_is_not_legacy(data: bytes) -> None:
    stun_like = bytes([data[0] & 0x3F]) + data[1:]
    assert not looks_like_legacy(stun_like)
