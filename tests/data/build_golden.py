"""Turn the annotated hex dumps of golden.txt into the .bin files beside it.

Run from anywhere: ``python tests/data/build_golden.py``.  A section starts
with ``== <file name>``; ``#`` starts a comment; whitespace between hex digits
is ignored.  ``@fingerprint`` stands for the four FINGERPRINT bytes (CRC-32 of
everything before the FINGERPRINT attribute, XOR 0x5354554E), computed here
with binascii so that hand-assembled messages need no hand-computed CRC.
Every datagram's STUN length field is checked against its real length.
"""

from __future__ import annotations

import binascii
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FINGERPRINT_HEADER = bytes.fromhex("80280004")


def parse(text: str) -> dict[str, bytes]:
    """Map each section's file name to its bytes."""
    sections: dict[str, bytearray] = {}
    current: bytearray | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("=="):
            name = line[2:].split()[0]
            current = sections.setdefault(name, bytearray())
            continue
        code = line.split("#", 1)[0].strip()
        if not code:
            continue
        if current is None:
            raise SystemExit(f"line {number}: bytes outside any section")
        if code == "@fingerprint":
            if current[-4:] != FINGERPRINT_HEADER:
                raise SystemExit(f"line {number}: @fingerprint must follow the 8028 0004 header")
            crc = binascii.crc32(bytes(current[:-4])) ^ 0x5354554E
            current += struct.pack("!I", crc)
            continue
        current += bytes.fromhex("".join(code.split()))
    return {name: bytes(data) for name, data in sections.items()}


def check(name: str, data: bytes) -> None:
    """Refuse a datagram whose length field disagrees with its size."""
    (length,) = struct.unpack_from("!H", data, 2)
    if length != len(data) - 20 or length % 4:
        raise SystemExit(f"{name}: length field {length}, but {len(data) - 20} bytes follow the header")


def main() -> None:
    for name, data in parse((HERE / "golden.txt").read_text(encoding="utf-8")).items():
        check(name, data)
        (HERE / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
