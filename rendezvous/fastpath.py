"""The optional compiled fast path (``rendezvous/_fastpath.c``), through ctypes.

Per wake-up of the server's socket, one C call reads a batch of datagrams
(recvmmsg), answers the bare Binding requests and the REFRESHes whose SESSION
Python already checked for that address, sends those replies (sendmmsg), and
leaves everything else to the Python path, unchanged.  The replies are the
bytes :meth:`rendezvous.core.ServerCore.answer_hot` makes (the tests compare
the two).  Python keeps the C side's table of checked sessions current
(:class:`rendezvous.core.SessionCache`) and applies the refreshed TTLs to its
directory once per batch.

Order within one batch: the C side answers its datagrams before Python sees
the others of the same batch, so a REFRESH that arrived a few microseconds
after an UNREGISTER of the same session, in one batch, is answered (the
peer then simply goes offline); the network may reorder two such datagrams
anyway, and no answer depends on another datagram of the batch otherwise.

The library is built at install time by ``hatch_build.py`` with the system's
``cc``; without it (no compiler, not Linux) :func:`load` returns None and the
server runs the pure-Python path, which answers the same requests with the
same bytes (``rendezvous --no-fastpath`` or ``RENDEZVOUS_NO_FASTPATH=1``
chooses that path where the library is built).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path

from . import mmsg
from .events import ServerConfig
from .stun import Address, Attr, encode_attribute

logger = logging.getLogger(__name__)

LIBRARY = Path(__file__).with_name("libfastpath.so")
ABI_VERSION = 1  # FP_ABI_VERSION in _fastpath.c
# counts[] written by fp_serve (FP_COUNT_* in _fastpath.c).
COUNT_OTHERS, COUNT_BINDINGS, COUNT_REFRESHES, COUNT_SEND_ERRORS, COUNTS = range(5)

OnAnswered = Callable[[int, memoryview], None]
"""``(bindings, refreshed)``: after each batch, how many Binding requests the
C side answered and the (peer id, granted TTL) pairs of its REFRESHes, flat."""


class Library:
    """The loaded shared library with its functions' signatures."""

    def __init__(self, dll: ctypes.CDLL) -> None:
        p, u32, size, i = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_size_t, ctypes.c_int
        self.new = dll.fp_new
        self.new.argtypes = [ctypes.c_char_p, size, u32, u32, u32, i, i]
        self.new.restype = p
        self.free = dll.fp_free
        self.free.argtypes = [p]
        self.free.restype = None
        self.set_buffers = dll.fp_set_buffers
        self.set_buffers.argtypes = [p, p, p, ctypes.c_uint, p, p, p]
        self.set_buffers.restype = i
        self.add_session = dll.fp_add_session
        self.add_session.argtypes = [p, u32, ctypes.c_char_p, ctypes.c_char_p, u32]
        self.add_session.restype = i
        self.remove_session = dll.fp_remove_session
        self.remove_session.argtypes = [p, u32]
        self.remove_session.restype = i
        self.session_count = dll.fp_session_count
        self.session_count.argtypes = [p]
        self.session_count.restype = size
        self.clear_sessions = dll.fp_clear_sessions
        self.clear_sessions.argtypes = [p]
        self.clear_sessions.restype = None
        self.answer = dll.fp_answer
        self.answer.argtypes = [p, ctypes.c_char_p, size, ctypes.c_char_p, u32, p, size, p, p]
        self.answer.restype = size
        self.serve = dll.fp_serve
        self.serve.argtypes = [p, i]
        self.serve.restype = i


def load(path: Path = LIBRARY) -> Library | None:
    """The compiled fast path, or None (not built here, disabled, or not Linux)."""
    if mmsg.available() is None:
        logger.debug("fast path: no recvmmsg/sendmmsg here, Python path")
        return None
    if not path.exists():
        logger.debug("fast path: %s not built, Python path", path.name)
        return None
    try:
        dll = ctypes.CDLL(str(path), use_errno=True)
        if dll.fp_abi_version() != ABI_VERSION:
            logger.warning("fast path: %s is from another version (rebuild with pip install), Python path", path)
            return None
        return Library(dll)
    except (OSError, AttributeError) as error:
        logger.warning("fast path: cannot load %s (%s), Python path", path, error)
        return None


def sockaddr(address: Address, family: socket.AddressFamily) -> bytes:
    """``address`` as the raw sockaddr a socket of ``family`` would receive it
    from (an IPv6 address only comes as sockaddr_in6)."""
    host, port = address
    if family == socket.AF_INET6 or ":" in host:
        if "." in host:
            host = "::ffff:" + host
        packed = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
        return struct.pack("<H", socket.AF_INET6) + struct.pack("!HI", port, 0) + packed + bytes(4)
    return (
        struct.pack("<H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_pton(socket.AF_INET, host) + bytes(8)
    )


class FastPath:
    """One C context: the session table, the configuration of the answers
    (SOFTWARE, TTL bounds) and, once :meth:`attach` is called, the batch
    buffers of one socket."""

    def __init__(
        self,
        library: Library,
        *,
        software_tlv: bytes,
        min_ttl: int,
        max_ttl: int,
        default_ttl: int,
        binding: bool = True,
        refresh: bool = True,
    ) -> None:
        self._lib = library
        self._context: int | None = None
        for ttl in (min_ttl, max_ttl, default_ttl):
            if not 0 <= ttl <= 0xFFFFFFFF:
                raise ValueError(f"TTL {ttl} out of range")
        context = library.new(
            software_tlv, len(software_tlv), min_ttl, max_ttl, default_ttl, int(binding), int(refresh)
        )
        if not context:
            raise ValueError("the fast path refused its configuration (SOFTWARE too long, or TTL bounds reversed)")
        self._context = context
        # The family of the socket served: how sources arrive (sockaddr_in, or sockaddr_in6 with IPv4 mapped).
        self.family = socket.AF_INET
        self._fd = -1
        self._in: mmsg._Region | None = None
        self._out: mmsg._Region | None = None
        self._others = (ctypes.c_uint16 * mmsg.BATCH)()
        self._refreshed = (ctypes.c_uint32 * (2 * mmsg.BATCH))()
        self._counts = (ctypes.c_uint32 * COUNTS)()
        self._refreshed_view = memoryview(self._refreshed).cast("B").cast("I")
        self._decoded: dict[bytes, Address] = {}
        self._reply = ctypes.create_string_buffer(mmsg.SLOT)
        self._answer_id = ctypes.c_uint32()
        self._answer_ttl = ctypes.c_uint32()
        self.send_errors = 0
        # Datagrams handed to Python by receive() since the caller last reset it.
        self.delivered = 0

    @classmethod
    def for_config(cls, library: Library, config: ServerConfig) -> FastPath:
        """Answers as a :class:`~rendezvous.core.ServerCore` with ``config``
        does.  Binding is left to Python when the server has an RFC 5780 other
        address: those answers carry OTHER-ADDRESS, which only the generic path adds."""
        return cls(
            library,
            software_tlv=encode_attribute(Attr.SOFTWARE, config.software),
            min_ttl=config.min_ttl,
            max_ttl=config.max_ttl,
            default_ttl=config.default_ttl,
            binding=config.other_address is None,
        )

    def close(self) -> None:
        if self._context is not None:
            self._lib.free(self._context)
            self._context = None

    def __del__(self) -> None:
        self.close()

    # ------------------------------------------------------------ sessions (core.SessionCache)

    def add(self, peer_id: int, address: Address, token: bytes) -> None:
        """``token`` was checked for ``peer_id`` at ``address``."""
        if self._context is None or len(token) != 20 or not 0 < peer_id <= 0xFFFFFFFF:
            return
        try:
            name = sockaddr(address, self.family)
        except (OSError, ValueError, UnicodeError):
            return
        self._lib.add_session(self._context, peer_id, token, name, len(name))

    def discard(self, peer_id: int) -> None:
        if self._context is not None and 0 < peer_id <= 0xFFFFFFFF:
            self._lib.remove_session(self._context, peer_id)

    def clear(self) -> None:
        if self._context is not None:
            self._lib.clear_sessions(self._context)

    def __len__(self) -> int:
        return 0 if self._context is None else int(self._lib.session_count(self._context))

    # ------------------------------------------------------------ pure answers (for the tests)

    def answer(self, data: bytes, address: Address) -> tuple[bytes, int, int] | None:
        """The C side's reply to ``data`` from ``address`` with its refreshed
        (peer id, TTL), 0s for a Binding; None: not ours, Python answers it."""
        assert self._context is not None
        name = sockaddr(address, self.family)
        self._answer_id.value = 0
        length = self._lib.answer(
            self._context,
            data,
            len(data),
            name,
            len(name),
            self._reply,
            mmsg.SLOT,
            ctypes.byref(self._answer_id),
            ctypes.byref(self._answer_ttl),
        )
        if not length:
            return None
        return self._reply.raw[:length], self._answer_id.value, self._answer_ttl.value

    # ------------------------------------------------------------ the socket

    def attach(self, sock: socket.socket) -> None:
        """Serve ``sock`` (bound, non-blocking; kept open by its owner)."""
        assert self._context is not None
        self.family = sock.family
        self._fd = sock.fileno()
        self._in = mmsg._Region()
        self._out = mmsg._Region()
        if self._lib.set_buffers(
            self._context,
            ctypes.addressof(self._in.headers),
            ctypes.addressof(self._out.headers),
            mmsg.BATCH,
            ctypes.addressof(self._others),
            ctypes.addressof(self._refreshed),
            ctypes.addressof(self._counts),
        ):
            raise ValueError("the fast path refused the batch buffers")

    def receive(self, deliver: Callable[[bytes, Address], None], answered: OnAnswered) -> int:
        """One batch: the C side answers what it can and sends; ``answered``
        hears of that first, then ``deliver`` gets each datagram left for
        Python.  Returns how many were read (0: none waiting)."""
        assert self._context is not None and self._in is not None
        count: int = self._lib.serve(self._context, self._fd)
        if count <= 0:
            if count < 0 and -count not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                raise OSError(-count, os.strerror(-count))
            return 0
        counts = self._counts
        self.send_errors += counts[COUNT_SEND_ERRORS]
        bindings, refreshes, others = counts[COUNT_BINDINGS], counts[COUNT_REFRESHES], counts[COUNT_OTHERS]
        if bindings or refreshes:
            answered(bindings, self._refreshed_view[: 2 * refreshes])
        if others:
            self.delivered += others
            region = self._in
            names, data, headers = region.names_view, region.data_view, region.headers_view
            decoded = self._decoded
            unpack = mmsg._NAMELEN_AND_LEN.unpack_from
            for k in range(others):
                i = self._others[k]
                namelen, length = unpack(headers, i * mmsg.MMSGHDR.size)
                start = i * mmsg.NAME_SIZE
                raw_name = names[start : start + namelen].tobytes()
                address = decoded.get(raw_name)
                if address is None:
                    address = mmsg.decode_name(raw_name)
                    if len(decoded) > 65_536:
                        decoded.clear()
                    decoded[raw_name] = address
                start = i * mmsg.SLOT
                deliver(data[start : start + min(length, mmsg.SLOT)].tobytes(), address)
        return count
