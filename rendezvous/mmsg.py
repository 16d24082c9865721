"""Batched UDP I/O with Linux's recvmmsg(2)/sendmmsg(2), through ctypes.

Python's socket module reads and writes one datagram per system call, and on
loopback the system calls are most of a STUN server's cost.  These two calls
move up to BATCH datagrams each, so one wake-up of the event loop costs two
system calls instead of two per datagram (bench/README.md has the numbers).

All buffers are allocated once; per datagram the Python work is one slice
and a dict look-up for the address.  Only IPv4 and IPv6 sockets are handled.
Where the calls are missing (not Linux, no glibc), :func:`available` is
False and the caller reads one datagram at a time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import struct
from collections.abc import Callable

from .stun import Address

BATCH = 64
SLOT = 2048  # receive size per datagram: more than any valid message
NAME_SIZE = 28  # sizeof(struct sockaddr_in6); sockaddr_in (16) fits too

# struct iovec { void *base; size_t len; }                         16 bytes
# struct msghdr { void *name; socklen_t namelen; <pad 4>; struct iovec *iov;
#                 size_t iovlen; void *control; size_t controllen; int flags; <pad 4> }   56 bytes
# struct mmsghdr { struct msghdr hdr; unsigned int len; <pad 4> }  64 bytes
IOVEC = struct.Struct("PN")
MMSGHDR = struct.Struct("PI4xPNPNi4xI4x")
assert IOVEC.size == 16 and MMSGHDR.size == 64, "unexpected ABI: only LP64 Linux is supported"
LEN_OFFSET = 56
_IOV_LEN = struct.Struct("N")
# From one mmsghdr: msg_namelen (offset 8) and msg_len (offset 56).
_NAMELEN_AND_LEN = struct.Struct("8xI44xI4x")
assert _NAMELEN_AND_LEN.size == 64
NAMELEN_OFFSET = 8
IOVLEN_OFFSET = struct.calcsize("PI4xP")


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        libc.recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
        libc.sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    except (OSError, AttributeError):
        return None
    return libc


def decode_name(raw: bytes) -> Address:
    """A received sockaddr as (host, port); IPv4-mapped IPv6 as plain IPv4."""
    family = int.from_bytes(raw[:2], "little")
    port = int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    host = socket.inet_ntop(socket.AF_INET6, raw[8:24])
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, port


class _Region:
    """One array of mmsghdr/iovec/name/data slots, wired together once."""

    def __init__(self) -> None:
        self.headers = ctypes.create_string_buffer(MMSGHDR.size * BATCH)
        self.iovecs = ctypes.create_string_buffer(IOVEC.size * BATCH)
        self.names = ctypes.create_string_buffer(NAME_SIZE * BATCH)
        self.data = ctypes.create_string_buffer(SLOT * BATCH)
        data_base = ctypes.addressof(self.data)
        names_base = ctypes.addressof(self.names)
        iov_base = ctypes.addressof(self.iovecs)
        for i in range(BATCH):
            IOVEC.pack_into(self.iovecs, i * IOVEC.size, data_base + i * SLOT, SLOT)
            MMSGHDR.pack_into(
                self.headers,
                i * MMSGHDR.size,
                names_base + i * NAME_SIZE,
                NAME_SIZE,
                iov_base + i * IOVEC.size,
                1,
                0,
                0,
                0,
                0,
            )
        self.pristine = self.headers.raw  # namelen reset before every receive
        self.headers_view = memoryview(self.headers).cast("B")
        self.iovecs_view = memoryview(self.iovecs).cast("B")
        self.names_view = memoryview(self.names).cast("B")
        self.data_view = memoryview(self.data).cast("B")


class BatchedSocket:
    """recvmmsg/sendmmsg on one bound, non-blocking UDP socket."""

    def __init__(self, sock: socket.socket, libc: ctypes.CDLL) -> None:
        self._fd = sock.fileno()
        self._family = sock.family
        self._libc = libc
        self._in = _Region()
        self._out = _Region()
        # Every destination of this socket has the same sockaddr size.
        out_namelen = NAME_SIZE if sock.family == socket.AF_INET6 else 16
        self._out_namelen = out_namelen
        for i in range(BATCH):
            struct.pack_into("I", self._out.headers_view, i * MMSGHDR.size + NAMELEN_OFFSET, out_namelen)
        self._pending = 0
        self._decoded: dict[bytes, Address] = {}  # raw sockaddr -> (host, port)
        self._encoded: dict[Address, bytes] = {}  # and back
        self.send_errors = 0
        # (destination, errno) of datagrams the kernel refused, for the owner
        # to take after a flush (at most BATCH kept: the rest only counted).
        self.failed: list[tuple[Address, int]] = []

    # ------------------------------------------------------------ receive

    def receive(self, deliver: Callable[[bytes, Address], None]) -> int:
        """Read what is queued (up to BATCH datagrams) and hand each to ``deliver``.
        Returns how many were read; 0 when none were waiting."""
        region = self._in
        ctypes.memmove(region.headers, region.pristine, len(region.pristine))
        count = self._libc.recvmmsg(self._fd, region.headers, BATCH, socket.MSG_DONTWAIT, None)
        if count <= 0:
            code = ctypes.get_errno()
            if count < 0 and code not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                raise OSError(code, os.strerror(code))
            return 0
        names, data = region.names_view, region.data_view
        decoded = self._decoded
        name_start = 0
        data_start = 0
        # One C-level pass over the headers yields each (namelen, length).
        for namelen, length in _NAMELEN_AND_LEN.iter_unpack(region.headers_view[: count * MMSGHDR.size]):
            raw_name = names[name_start : name_start + namelen].tobytes()
            address = decoded.get(raw_name)
            if address is None:
                address = decode_name(raw_name)
                if len(decoded) > 65_536:
                    decoded.clear()
                decoded[raw_name] = address
            deliver(data[data_start : data_start + min(length, SLOT)].tobytes(), address)
            name_start += NAME_SIZE
            data_start += SLOT
        return int(count)

    # ------------------------------------------------------------ send

    def queue(self, data: bytes, address: Address) -> None:
        """Add a datagram to the outgoing batch (sent by :meth:`flush`, or now
        if the batch is full)."""
        if len(data) > SLOT:
            raise ValueError(f"datagram of {len(data)} bytes is larger than {SLOT}")
        if self._pending == BATCH:
            self.flush()
        i = self._pending
        region = self._out
        raw_name = self._encoded.get(address)
        if raw_name is None:
            raw_name = self._encode_name(address)
            if len(self._encoded) > 65_536:
                self._encoded.clear()
            self._encoded[address] = raw_name
        # msg_namelen is fixed per socket family (set once in __init__).
        region.names_view[i * NAME_SIZE : i * NAME_SIZE + len(raw_name)] = raw_name
        region.data_view[i * SLOT : i * SLOT + len(data)] = data
        _IOV_LEN.pack_into(region.iovecs_view, i * IOVEC.size + 8, len(data))
        self._pending = i + 1

    def queue_many(self, items: list[tuple[bytes, Address]]) -> list[tuple[bytes, Address]]:
        """:meth:`queue` for a list, with the per-call overhead paid once.
        Returns the items it could not queue (larger than a slot, or an
        address this socket cannot encode), for the caller to send another
        way; all others are queued once each."""
        region = self._out
        names, data_view, iovecs = region.names_view, region.data_view, region.iovecs_view
        encoded = self._encoded
        pack_len = _IOV_LEN.pack_into
        rejected: list[tuple[bytes, Address]] = []
        for data, address in items:
            if len(data) > SLOT:
                rejected.append((data, address))
                continue
            if self._pending == BATCH:
                self.flush()
            i = self._pending
            raw_name = encoded.get(address)
            if raw_name is None:
                try:
                    raw_name = self._encode_name(address)
                except (OSError, ValueError, struct.error):
                    rejected.append((data, address))
                    continue
                if len(encoded) > 65_536:
                    encoded.clear()
                encoded[address] = raw_name
            names[i * NAME_SIZE : i * NAME_SIZE + len(raw_name)] = raw_name
            data_view[i * SLOT : i * SLOT + len(data)] = data
            pack_len(iovecs, i * IOVEC.size + 8, len(data))
            self._pending = i + 1
        return rejected

    def _encode_name(self, address: Address) -> bytes:
        host, port = address
        if self._family == socket.AF_INET6:
            if "." in host:
                host = "::ffff:" + host
            packed = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
            return struct.pack("<H", socket.AF_INET6) + struct.pack("!HI", port, 0) + packed + bytes(4)
        return (
            struct.pack("<H", socket.AF_INET)
            + struct.pack("!H", port)
            + socket.inet_pton(socket.AF_INET, host)
            + bytes(8)
        )

    def flush(self) -> None:
        """Send the queued datagrams: one system call for the whole batch."""
        sent_from = 0
        region = self._out
        base = ctypes.addressof(region.headers)
        while sent_from < self._pending:
            count = self._libc.sendmmsg(
                self._fd, base + sent_from * MMSGHDR.size, self._pending - sent_from, socket.MSG_DONTWAIT
            )
            if count <= 0:
                code = ctypes.get_errno()
                if code == errno.EINTR:
                    continue
                # EAGAIN (buffer full) or a per-destination error (ECONNREFUSED
                # from an earlier ICMP): drop that datagram, keep the rest.
                # sendmmsg reports an error only for the first datagram of the
                # call (the ones before it count as sent), so it is this one's.
                self.send_errors += 1
                if len(self.failed) < BATCH:
                    start = sent_from * NAME_SIZE
                    raw_name = region.names_view[start : start + self._out_namelen].tobytes()
                    self.failed.append((decode_name(raw_name), code))
                sent_from += 1
                continue
            sent_from += count
        self._pending = 0


def available() -> ctypes.CDLL | None:
    """The C library with recvmmsg/sendmmsg, or None where they are missing."""
    if not hasattr(socket, "AF_INET6") or os.uname().sysname != "Linux":
        return None
    return _libc()
