"""A one-way delay line for the NAT lab: holds every packet that iptables
sends to an NFQUEUE for a fixed time, then lets it go, in arrival order.

Why this exists: the lab's kernel has no netem qdisc and loads no modules,
and nftables' own ``queue`` statement is not built in; iptables' ``-j NFQUEUE``
target and the nfnetlink_queue interface are.  This program speaks that
interface over a plain ``AF_NETLINK`` socket with the standard library only,
so nothing has to be compiled or installed (no libnetfilter_queue, no
netfilterqueue wheel to build).

Run it inside the namespace whose iptables rule queues the packets::

    ip netns exec NS python delay.py --queue 0 --delay-ms 50

It binds the queue, prints ``ready`` on stdout once the kernel has accepted
the binding (so the caller can install the rule only then), and runs until
SIGTERM or SIGINT.  It needs only the packet ids, so it asks for metadata
only (no payload copy).  Verdicts are batch verdicts (accept every id up to
N): the delay is constant, so packets are due in id order, and a batch
verdict also frees any packet whose notification was lost to a full socket
buffer.

The netlink message layouts come from ``linux/netfilter/nfnetlink_queue.h``.
"""

from __future__ import annotations

import argparse
import collections
import os
import select
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_CONFIG = 2
NFQNL_MSG_VERDICT_BATCH = 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQNL_COPY_META = 1
NF_ACCEPT = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid (host order)
NFGENMSG = struct.Struct("!BBH")  # family, version, res_id (queue number, big-endian)
NLATTR = struct.Struct("=HH")  # len, type (host order)

QUEUE_MAXLEN = 16384
RCVBUF = 8 * 1024 * 1024


class NetlinkError(Exception):
    """The kernel refused a request, or sent a message too short to parse."""


def _align(length: int) -> int:
    return (length + 3) & ~3


def _attr(kind: int, payload: bytes) -> bytes:
    length = NLATTR.size + len(payload)
    return NLATTR.pack(length, kind) + payload + b"\0" * (_align(length) - length)


def _message(msg_type: int, flags: int, seq: int, queue: int, attrs: bytes, family: int = socket.AF_UNSPEC) -> bytes:
    body = NFGENMSG.pack(family, 0, queue) + attrs
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg_type, flags, seq, 0) + body


def bind_request(queue: int, seq: int) -> bytes:
    """Config message: bind this socket to ``queue``."""
    cmd = struct.pack("!BxH", NFQNL_CFG_CMD_BIND, socket.AF_INET)
    return _message(NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, queue, _attr(NFQA_CFG_CMD, cmd))


def params_request(queue: int, seq: int) -> bytes:
    """Config message: metadata only, and a long queue (the delay keeps many packets in flight)."""
    params = struct.pack("!IB", 0, NFQNL_COPY_META)
    maxlen = struct.pack("!I", QUEUE_MAXLEN)
    attrs = _attr(NFQA_CFG_PARAMS, params) + _attr(NFQA_CFG_QUEUE_MAXLEN, maxlen)
    return _message(NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, queue, attrs)


def batch_verdict(queue: int, packet_id: int, seq: int) -> bytes:
    """Verdict message: accept every queued packet whose id is at most ``packet_id``."""
    verdict = struct.pack("!II", NF_ACCEPT, packet_id)
    return _message(NFQNL_MSG_VERDICT_BATCH, NLM_F_REQUEST, seq, queue, _attr(NFQA_VERDICT_HDR, verdict))


@dataclass(frozen=True)
class Ack:
    """The kernel's answer to a request: ``errno`` 0 is success."""

    seq: int
    errno: int


@dataclass(frozen=True)
class Packet:
    """A queued packet's notification: only its id matters here."""

    packet_id: int


def parse(data: bytes) -> list[Ack | Packet]:
    """Every message in one netlink datagram; unknown ones are skipped."""
    events: list[Ack | Packet] = []
    offset = 0
    while offset + NLMSGHDR.size <= len(data):
        length, msg_type, _flags, seq, _pid = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size or offset + length > len(data):
            raise NetlinkError(f"netlink message length {length} at offset {offset} does not fit {len(data)} bytes")
        body = data[offset + NLMSGHDR.size : offset + length]
        if msg_type == NLMSG_ERROR:
            if len(body) < 4:
                raise NetlinkError("netlink error message shorter than 4 bytes")
            (error,) = struct.unpack_from("=i", body)
            events.append(Ack(seq, -error))
        elif msg_type == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            packet_id = _packet_id(body)
            if packet_id is not None:
                events.append(Packet(packet_id))
        offset += _align(length)
    return events


def _packet_id(body: bytes) -> int | None:
    offset = NFGENMSG.size
    while offset + NLATTR.size <= len(body):
        length, kind = NLATTR.unpack_from(body, offset)
        if length < NLATTR.size or offset + length > len(body):
            raise NetlinkError(f"netlink attribute length {length} at offset {offset} does not fit {len(body)} bytes")
        if kind & 0x3FFF == NFQA_PACKET_HDR:
            if length < NLATTR.size + 4:
                raise NetlinkError("packet header attribute shorter than 4 bytes")
            (packet_id,) = struct.unpack_from("!I", body, offset + NLATTR.size)
            return int(packet_id)
        offset += _align(length)
    return None


class DelayLine:
    """Owns the netlink socket and the FIFO of (due time, packet id)."""

    def __init__(self, queue: int, delay: float) -> None:
        self.queue = queue
        self.delay = delay
        self.seq = 0
        self.pending: collections.deque[tuple[float, int]] = collections.deque()
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        # SO_RCVBUFFORCE (root) lifts the rmem_max cap: a burst of
        # notifications must not overflow the socket.
        self.sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)
        self.sock.bind((0, 0))

    def configure(self) -> None:
        """Bind the queue and set its parameters; raise if the kernel says no."""
        for build in (bind_request, params_request):
            self.seq += 1
            self.sock.send(build(self.queue, self.seq))
            self._wait_ack(self.seq)

    def _wait_ack(self, seq: int) -> None:
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.sock], [], [], 0.5)
            if not ready:
                continue
            for event in parse(self.sock.recv(65536)):
                if isinstance(event, Ack) and event.seq == seq:
                    if event.errno:
                        raise NetlinkError(f"nfqueue config request {seq} refused: {os.strerror(event.errno)}")
                    return
        raise NetlinkError(f"no answer to nfqueue config request {seq}")

    def run(self, stop: list[bool]) -> None:
        """Queue packets as they come, release them when due, until ``stop[0]``."""
        while not stop[0]:
            timeout = 0.2
            if self.pending:
                timeout = max(0.0, min(timeout, self.pending[0][0] - time.monotonic()))
            try:
                ready, _, _ = select.select([self.sock], [], [], timeout)
            except InterruptedError:
                continue
            if ready:
                self._receive()
            self._release(time.monotonic())

    def _receive(self) -> None:
        try:
            data = self.sock.recv(1 << 20)
        except OSError as exc:
            # ENOBUFS: notifications were lost; the packets stay queued in
            # the kernel and the next batch verdict frees them.
            print(f"delay: recv: {exc}", file=sys.stderr, flush=True)
            return
        now = time.monotonic()
        for event in parse(data):
            if isinstance(event, Packet):
                self.pending.append((now + self.delay, event.packet_id))

    def _release(self, now: float) -> None:
        last: int | None = None
        while self.pending and self.pending[0][0] <= now:
            last = self.pending.popleft()[1]
        if last is not None:
            self.seq += 1
            self.sock.send(batch_verdict(self.queue, last, self.seq))

    def close(self) -> None:
        """Accept whatever is still held, then let the socket go (which unbinds)."""
        if self.pending:
            self.seq += 1
            try:
                self.sock.send(batch_verdict(self.queue, self.pending[-1][1], self.seq))
            except OSError:
                pass
        self.sock.close()


def main(argv: list[str] | None = None) -> int:
    """Command line entry: ``--queue N --delay-ms MS``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queue", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, required=True)
    args = parser.parse_args(argv)
    stop = [False]

    def request_stop(_signum: int, _frame: object) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    line = DelayLine(args.queue, args.delay_ms / 1000.0)
    try:
        line.configure()
        print("ready", flush=True)
        line.run(stop)
    finally:
        line.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
