"""Peer-to-peer frames on a QUIC stream (pure).

Each frame is a 4-byte big-endian length followed by that many bytes of UTF-8
JSON (an object with a string "t").  Frames are length-checked before they
are buffered, so a peer cannot make us hold more than MAX_FRAME bytes of one.
docs/PROTOCOL.md, "Peer to peer", lists every frame type.
"""

from __future__ import annotations

import struct
from typing import Any, TypeVar

import orjson

MAX_FRAME = 96 * 1024  # a 64 KiB text, JSON-escaped, fits
LENGTH = struct.Struct("!I")

# Decoded JSON from the other peer: only "t" is known to be there (a str).
Frame = dict[str, Any]

_T = TypeVar("_T")


class FrameError(Exception):
    """The other peer sent bytes that are not a valid frame."""


# orjson, not the stdlib's json: encoding and decoding a frame is a few
# microseconds with json and a tenth of that with orjson, once per message on
# each side (bench/WEBPEER.md, 2026-11-28 evening). orjson is strict where a
# peer could hurt us: NaN and Infinity are refused, a number that overflows a
# double (1e400) too, integers beyond 64 bits come back as floats (so a field
# that must be an int refuses them), nesting stops at 1024 levels, invalid
# UTF-8 and lone surrogates are refused.


def encode_frame(frame: Frame) -> bytes:
    body = orjson.dumps(frame)
    if len(body) > MAX_FRAME:
        raise ValueError(f"frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return LENGTH.pack(len(body)) + body


class FrameDecoder:
    """Accumulates stream bytes and yields whole frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        buffer = self._buffer
        buffer += data
        frames: list[Frame] = []
        start = 0  # consumed bytes are cut off once, at the end (a datagram holds many frames)
        try:
            while len(buffer) - start >= LENGTH.size:
                (length,) = LENGTH.unpack_from(buffer, start)
                if length > MAX_FRAME:
                    raise FrameError(f"frame length {length} exceeds {MAX_FRAME}")
                end = start + LENGTH.size + length
                if len(buffer) < end:
                    break
                body = buffer[start + LENGTH.size : end]
                start = end
                try:
                    frame = orjson.loads(body)
                except orjson.JSONDecodeError as error:  # bad UTF-8, NaN, 1e400, too deep ...
                    raise FrameError(f"frame is not JSON we accept: {str(error)[:100]}") from None
                if not isinstance(frame, dict) or not isinstance(frame.get("t"), str):
                    raise FrameError("frame is not an object with a string 't'")
                frames.append(frame)
        finally:
            del buffer[:start]
        return frames


def require(frame: Frame, key: str, kind: type[_T]) -> _T:
    """A field of an untrusted frame, type-checked (bool is not an int here)."""
    value = frame.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise FrameError(f"frame {frame.get('t')!r}: field {key!r} must be {kind.__name__}")
    return value
