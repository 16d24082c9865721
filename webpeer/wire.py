"""Peer-to-peer frames on a QUIC stream (pure).

Each frame is a 4-byte big-endian length followed by that many bytes of UTF-8
JSON (an object with a string "t").  Frames are length-checked before they
are buffered, so a peer cannot make us hold more than MAX_FRAME bytes of one.
docs/PROTOCOL.md, "Peer to peer", lists every frame type.
"""

from __future__ import annotations

import json
import struct
from typing import Any, TypeVar

MAX_FRAME = 96 * 1024  # a 64 KiB text, JSON-escaped, fits
LENGTH = struct.Struct("!I")

# Decoded JSON from the other peer: only "t" is known to be there (a str).
Frame = dict[str, Any]

_T = TypeVar("_T")


class FrameError(Exception):
    """The other peer sent bytes that are not a valid frame."""


# Built once: json.dumps with non-default options builds an encoder per call,
# which costs about a third of encoding a small frame (one per message).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
MAX_INT_DIGITS = 20  # any integer a frame carries (ids, ports) fits in 64 bits


def _refuse_constant(name: str) -> object:
    raise FrameError(f"{name} is not a number a frame may carry")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise FrameError(f"an integer of {len(text)} digits")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):  # 1e400 reads as inf
        raise FrameError(f"number {text[:40]!r} is not finite")
    return value


# Frames come from other peers: NaN, Infinity, numbers too large to be
# anything but an attack (int() of 5,000 digits raises; 1e400 is inf) are
# refused as they are read, so nothing downstream ever sees them.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_int=_bounded_int, parse_float=_finite_float)


def encode_frame(frame: Frame) -> bytes:
    body = _ENCODER.encode(frame).encode()
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
                    frame = _DECODER.decode(body.decode("utf-8"))
                except (ValueError, RecursionError) as error:  # UnicodeDecodeError and JSONDecodeError too
                    # RecursionError: nesting deeper than the interpreter's stack.
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
