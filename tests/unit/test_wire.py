"""wire.py: length-prefixed JSON frames on a QUIC stream."""

from __future__ import annotations

import pytest

from webpeer.wire import LENGTH, MAX_FRAME, FrameDecoder, FrameError, encode_frame, require


def test_frames_come_out_whole_however_the_bytes_are_cut() -> None:
    frames = [{"t": "msg", "id": f"m{n}", "text": "é" * n, "time": 1.5} for n in range(50)]
    data = b"".join(encode_frame(frame) for frame in frames)
    for cut in (1, 3, 7, 100, len(data)):
        decoder = FrameDecoder()
        out = []
        for start in range(0, len(data), cut):
            out += decoder.feed(data[start : start + cut])
        assert out == frames
        assert decoder.feed(b"") == []


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (LENGTH.pack(MAX_FRAME + 1), "exceeds"),
        (LENGTH.pack(3) + b"{]}", "not JSON"),
        (LENGTH.pack(2) + b"\xff\xfe", "not JSON"),
        (LENGTH.pack(2) + b"[]", "string 't'"),
        (LENGTH.pack(8) + b'{"t": 1}', "string 't'"),
    ],
)
def test_bad_frames_raise_frame_error(data: bytes, words: str) -> None:
    decoder = FrameDecoder()
    good = encode_frame({"t": "ack", "id": "m1"})
    with pytest.raises(FrameError, match=words):
        decoder.feed(good + data)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"t": "msg", "time": NaN}', "unexpected character"),
        (b'{"t": "msg", "time": Infinity}', "unexpected character"),
        (b'{"t": "msg", "time": -Infinity}', "no digit after sign"),
        (b'{"t": "msg", "time": 1e400}', "infinity"),
        (b'{"t": "hello", "id": ' + b"9" * 5000 + b"}", "infinity"),
        (b"[" * 40_000 + b"]" * 40_000, "depth limit"),
        (b'{"t": "msg", "text": "\\ud800"}', "surrogate"),  # a lone surrogate, escaped
        (b'{"t": "msg", "text": "\xed\xa0\x80"}', "not JSON"),  # one encoded: not UTF-8
    ],
)
def test_poison_values_from_a_peer_are_a_frame_error_not_a_crash(body: bytes, why: str) -> None:
    # Each of these once raised out of the datagram handler, or reached the
    # store as a time it could not hold (issue 16, finding 4).
    with pytest.raises(FrameError, match=why):
        FrameDecoder().feed(LENGTH.pack(len(body)) + body)


def test_an_integer_beyond_64_bits_is_not_an_int() -> None:
    # It reads as a float, so a field that must be an int refuses it.
    body = b'{"t": "hello", "id": ' + b"9" * 25 + b"}"
    [frame] = FrameDecoder().feed(LENGTH.pack(len(body)) + body)
    with pytest.raises(FrameError, match="'id' must be int"):
        require(frame, "id", int)


def test_ordinary_numbers_still_read() -> None:
    body = b'{"t": "msg", "time": 1764350000.25, "id": "m1", "n": -3, "big": 18446744073709551615}'
    assert FrameDecoder().feed(LENGTH.pack(len(body)) + body) == [
        {"t": "msg", "time": 1764350000.25, "id": "m1", "n": -3, "big": 18446744073709551615}
    ]
