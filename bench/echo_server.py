"""Bare asyncio UDP echo server: the Python floor/ceiling reference for the bench.

Whatever a Python STUN server does per datagram, it cannot beat an echo on the
same event loop, so this bounds what the rendezvous server can reach.  Three
flavours matter on Python 3.11:

* ``--loop asyncio``: the default selector loop.  Its datagram transport calls
  ``recvfrom(256 KiB)`` for every datagram (``_SelectorTransport.max_size``),
  allocating and then shrinking a 256 KiB bytes object each time; that alone
  costs tens of microseconds per packet.
* ``--loop asyncio --recv-size 2048``: the same loop with the transport's
  receive size cut to what a STUN datagram can be, the workaround a server on
  the default loop can use.
* ``--loop uvloop``: libuv's loop, which receives into a small reusable buffer.

Only loopback addresses are accepted; runs until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import signal
from collections.abc import Callable
from typing import Any, cast


class EchoProtocol(asyncio.DatagramProtocol):
    """Sends every datagram straight back to its sender."""

    def __init__(self, recv_size: int | None) -> None:
        self._recv_size = recv_size
        self._sendto: Callable[[bytes, Any], None] = _not_connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: 3.11's selector datagram transport does not
        # subclass asyncio.DatagramTransport.  The bound method is kept so the
        # per-datagram path is one call.
        self._sendto = cast(asyncio.DatagramTransport, transport).sendto
        if self._recv_size is not None:
            # The selector transport reads self.max_size per recvfrom(); an
            # instance attribute overrides the 256 KiB class default.  uvloop's
            # transport has no such knob (and does not need it).
            setattr(transport, "max_size", self._recv_size)  # noqa: B010 (not a typed attribute)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._sendto(data, addr)


def _not_connected(data: bytes, addr: Any) -> None:
    raise RuntimeError("datagram before connection_made")


async def serve(host: str, port: int, recv_size: int | None) -> None:
    """Serve until cancelled by a signal."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: EchoProtocol(recv_size), local_addr=(host, port))
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        transport.close()


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and run the server on the chosen event loop."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument(
        "--recv-size",
        type=int,
        default=None,
        help="bytes per recvfrom() on the default loop (default: asyncio's 256 KiB)",
    )
    args = parser.parse_args(argv)
    if not ipaddress.ip_address(args.host).is_loopback:
        parser.error("--host must be a loopback address")
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(serve(args.host, args.port, args.recv_size))
    else:
        asyncio.run(serve(args.host, args.port, args.recv_size))


if __name__ == "__main__":
    main()
