"""A thin non-blocking UDP endpoint on the event loop's reader callback.

Why not ``loop.create_datagram_endpoint``: on Python 3.11 the default loop's
datagram transport reads every datagram into a fresh 256 KiB buffer, which
costs ~30 us per packet here.  Reading with a small size, and draining
several datagrams per wake-up, makes the default loop about as fast as
uvloop's transport (bench/README.md has the numbers).  Works on uvloop too.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import struct
from collections import Counter
from collections.abc import Callable

from . import mmsg
from .fastpath import FastPath, OnAnswered
from .stun import Address

logger = logging.getLogger(__name__)

RECEIVE_SIZE = 2048  # larger than any valid datagram of ours (MAX_MESSAGE_LENGTH)
BATCH = 64  # datagrams handled per wake-up before yielding to other callbacks

# Errors with which the kernel refuses a datagram at once because of its
# destination (no route, an address or family this socket cannot send to):
# the owner may try another address of that host now.  Not ECONNREFUSED or
# the like: on an unconnected socket (without IP_RECVERR) Linux reports no
# ICMP errors at all, and where a pending one did surface on a send it would
# be about an earlier datagram, perhaps to another destination.
REFUSED_DESTINATION = frozenset(
    {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT, errno.EINVAL, errno.EPERM}
)

OnRefused = Callable[[Address, int], None]


def normalise(address: tuple[object, ...]) -> Address:
    """(host, port) with IPv4-mapped IPv6 addresses shown as plain IPv4."""
    host, port = str(address[0]), int(address[1])  # type: ignore[call-overload]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, port


class UdpEndpoint:
    """Owns one bound UDP socket; hands datagrams to ``on_datagram`` and calls
    ``on_batch_end`` once per wake-up so the owner can flush its replies
    (with the compiled fast path, once per wake-up that gave Python a datagram)."""

    def __init__(
        self,
        sock: socket.socket,
        on_datagram: Callable[[bytes, Address], None],
        on_batch_end: Callable[[], None],
        stats: Counter[str] | None = None,
        *,
        batched: bool = True,
        on_refused: OnRefused | None = None,
    ) -> None:
        """``on_refused(address, errno)``: a datagram to ``address`` was
        refused at once with one of :data:`REFUSED_DESTINATION` (called from
        the send, or from the end-of-turn flush of a batched send)."""
        sock.setblocking(False)
        self._sock = sock
        self._on_datagram = on_datagram
        self._on_batch_end = on_batch_end
        self._v6 = sock.family == socket.AF_INET6
        self._on_refused = on_refused
        self.stats: Counter[str] = stats if stats is not None else Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        libc = mmsg.available() if batched and os.environ.get("PEERLINK_NO_MMSG") != "1" else None
        self._batch = mmsg.BatchedSocket(sock, libc) if libc is not None else None
        self._flush_scheduled = False
        self._fast: FastPath | None = None
        self._answered: OnAnswered | None = None

    @classmethod
    def bind(
        cls,
        host: str,
        port: int,
        on_datagram: Callable[[bytes, Address], None],
        on_batch_end: Callable[[], None],
        stats: Counter[str] | None = None,
        *,
        batched: bool = True,
        buffer_size: int | None = 4 * 1024 * 1024,
        reuse_port: bool = False,
        on_refused: OnRefused | None = None,
    ) -> UdpEndpoint:
        """``batched=False`` and ``buffer_size=None`` (the kernel's default)
        for sockets that carry a few datagrams: the batch buffers cost about
        1.5 ms and 256 KiB per socket to set up.  ``reuse_port``: several
        processes bind the same port (``rendezvous --workers``) and the kernel
        spreads clients over them by a hash of their address, so each client
        keeps talking to the same one."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                # "::" then serves IPv4 too, as IPv4-mapped addresses.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if buffer_size is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_size)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer_size)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        return cls(sock, on_datagram, on_batch_end, stats, batched=batched, on_refused=on_refused)

    @property
    def address(self) -> Address:
        return normalise(self._sock.getsockname())

    def use_fast_path(self, fast: FastPath, answered: OnAnswered) -> bool:
        """Read through the compiled fast path: it answers what it can in C
        (``answered`` hears of those first) and hands the rest to
        ``on_datagram``.  False (and nothing changes) where this endpoint
        does not batch (no recvmmsg, or PEERLINK_NO_MMSG=1): the fast path
        batches the same way."""
        if self._batch is None:
            return False
        fast.attach(self._sock)
        self._fast = fast
        self._answered = answered
        return True

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._sock.fileno(), self._read_ready)

    def close(self) -> None:
        if self._sock.fileno() >= 0:
            self._flush_sends()  # what was queued in this wake-up still goes out
            if self._loop is not None:
                self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        if self._fast is not None:
            self._fast.close()
            self._fast = None

    def _read_ready(self) -> None:
        if self._fast is not None and self._answered is not None:
            fast = self._fast
            errors = fast.send_errors
            fast.delivered = 0
            answered = self._answered
            self._receive_batches(lambda: fast.receive(self._on_datagram, answered))
            if fast.send_errors != errors:
                self.stats["send_errors"] += fast.send_errors - errors
            if fast.delivered:
                # Only what Python handled can have left replies, events or
                # timers behind; the C side's answers are sent already.
                self._on_batch_end()
                self._flush_sends()
            return
        if self._batch is not None:
            batch = self._batch
            self._receive_batches(lambda: batch.receive(self._on_datagram))
            self._on_batch_end()
            self._flush_sends()
            return
        recvfrom = self._sock.recvfrom
        for _ in range(BATCH):
            try:
                data, address = recvfrom(RECEIVE_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as error:
                # ICMP errors from earlier sends surface here (ECONNREFUSED ...): not fatal.
                self.stats["receive_errors"] += 1
                logger.debug("recvfrom failed: %s", error)
                continue
            self._on_datagram(data, normalise(address))
        self._on_batch_end()

    def _receive_batches(self, receive: Callable[[], int]) -> None:
        """Up to 4 x 64 datagrams per wake-up: ``receive`` reads one batch
        (recvmmsg) and says how many it read; a short one means the socket
        is drained."""
        for _ in range(4):
            try:
                if receive() < mmsg.BATCH:
                    break
            except OSError as error:
                self.stats["receive_errors"] += 1
                logger.debug("recvmmsg failed: %s", error)
                break

    def sendto(self, data: bytes, address: Address) -> None:
        if self._batch is not None and len(data) <= mmsg.SLOT:
            try:
                self._batch.queue(data, address)
            except ValueError:
                self.stats["send_errors"] += 1
                return
            except struct.error:
                self.stats["send_errors"] += 1  # a port out of range
                self._refused(address, errno.EINVAL)
                return
            except OSError as error:
                # No sockaddr of this socket's family for it (an IPv6 address
                # on an IPv4 socket): refused before the kernel sees it.
                self.stats["send_errors"] += 1
                self._refused(address, error.errno or errno.EAFNOSUPPORT)
                return
            # Sent at the end of this wake-up (one sendmmsg for the lot).
            if not self._flush_scheduled and self._loop is not None:
                self._flush_scheduled = True
                self._loop.call_soon(self._flush_sends)
            return
        target: tuple[str, int] = address
        if self._v6 and "." in address[0]:
            target = ("::ffff:" + address[0], address[1])
        try:
            self._sock.sendto(data, target)
        except (BlockingIOError, InterruptedError):
            # The kernel buffer is full: UDP may drop, and so do we (counted).
            self.stats["send_dropped"] += 1
        except socket.gaierror:
            # Not an address of this socket's family (IPv6 on an IPv4
            # socket): Python's own lookup refuses it, never the kernel.
            self.stats["send_errors"] += 1
            self._refused(address, errno.EAFNOSUPPORT)
        except OverflowError:
            self.stats["send_errors"] += 1  # a port out of range
            self._refused(address, errno.EINVAL)
        except OSError as error:
            if error.errno != errno.ECONNREFUSED and error.errno not in REFUSED_DESTINATION:
                logger.warning("sendto %s failed: %s", address, error)
            self.stats["send_errors"] += 1
            self._refused(address, error.errno or errno.EAFNOSUPPORT)

    def _refused(self, address: Address, code: int) -> None:
        if self._on_refused is not None and code in REFUSED_DESTINATION:
            self._on_refused(address, code)

    def send_many(self, items: list[tuple[bytes, Address]]) -> None:
        """Send several datagrams (one sendmmsg where available)."""
        if self._batch is None:
            for data, address in items:
                self.sendto(data, address)
            return
        # What the batch cannot take (too large, an address this socket
        # cannot encode) goes the plain way, which sends or refuses it.
        for data, address in self._batch.queue_many(items):
            self.sendto(data, address)
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_sends)

    def _flush_sends(self) -> None:
        self._flush_scheduled = False
        if self._batch is not None and self._sock.fileno() >= 0:
            before = self._batch.send_errors
            self._batch.flush()
            self.stats["send_errors"] += self._batch.send_errors - before
            if self._batch.failed:
                failed, self._batch.failed = self._batch.failed, []
                for address, code in failed:
                    self._refused(address, code)
