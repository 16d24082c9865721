"""wire.py: length-prefixed JSON frames on a QUIC stream."""

from __future__ import annotations

import pytest

from webpeer.wire import LENGTH, MAX_FRAME, FrameDecoder, FrameError, encode_frame


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
