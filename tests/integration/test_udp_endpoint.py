"""The UDP adapter on real loopback sockets: batched (recvmmsg/sendmmsg) and
plain endpoints carry the same datagrams, in order, and a send to a closed
port breaks neither; a destination the kernel refuses at once is reported."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections import Counter
from collections.abc import Callable

import pytest

from rendezvous.udp import UdpEndpoint


def closed_port() -> tuple[str, int]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "plain"])
async def test_datagrams_cross_in_order_and_a_closed_port_is_harmless(batched: bool) -> None:
    received: list[tuple[bytes, tuple[str, int]]] = []
    batch_ends = 0
    done = asyncio.Event()
    count = 300  # more than a batch (64), so several wake-ups

    def on_datagram(data: bytes, address: tuple[str, int]) -> None:
        received.append((data, address))
        if len(received) == count:
            done.set()

    def on_batch_end() -> None:
        nonlocal batch_ends
        batch_ends += 1

    options = {} if batched else {"batched": False, "buffer_size": None}
    stats: Counter[str] = Counter()
    server = UdpEndpoint.bind("127.0.0.1", 0, on_datagram, on_batch_end, stats, **options)
    client = UdpEndpoint.bind("127.0.0.1", 0, lambda d, a: None, lambda: None, stats, **options)
    server.start()
    client.start()
    try:
        if not batched:
            assert server._batch is None and client._batch is None
        client.sendto(b"into the void", closed_port())  # ICMP port unreachable comes back
        for i in range(count):
            client.sendto(f"datagram {i}".encode(), server.address)
            if i % 50 == 49:
                # Let the receiver read: a plain socket keeps the kernel's
                # default buffer (~200 KiB), which 300 queued datagrams overflow.
                await asyncio.sleep(0.01)
        await asyncio.wait_for(done.wait(), 5)
        assert [data for data, _ in received] == [f"datagram {i}".encode() for i in range(count)]
        assert {address for _, address in received} == {client.address}
        assert batch_ends >= 1
        # Still working after the ICMP error.
        client.sendto(b"after", server.address)
        await asyncio.sleep(0.05)
        assert received[-1] == (b"after", client.address)
    finally:
        client.close()
        server.close()


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "plain"])
async def test_a_destination_the_kernel_refuses_is_reported_with_its_address(batched: bool) -> None:
    """Port 0 is refused by the kernel before anything is sent (and ::1 is
    loopback anyway); the datagrams around it, to a real receiver, still go
    out, and only the refused one is reported, with its own address."""
    refused: list[tuple[tuple[str, int], int]] = []
    received: list[bytes] = []
    options = {} if batched else {"batched": False, "buffer_size": None}
    receiver = UdpEndpoint.bind("::1", 0, lambda d, a: received.append(d), lambda: None, **options)
    sender = UdpEndpoint.bind(
        "::", 0, lambda d, a: None, lambda: None, on_refused=lambda a, c: refused.append((a, c)), **options
    )
    receiver.start()
    sender.start()
    try:
        good = ("::1", receiver.address[1])
        sender.send_many([(b"one", good), (b"refused", ("::1", 0)), (b"two", good)])
        await wait_for(lambda: len(received) == 2)
        assert sorted(received) == [b"one", b"two"]
        assert refused == [(("::1", 0), errno.EINVAL)]
        assert sender.stats["send_errors"] == 1
    finally:
        sender.close()
        receiver.close()


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "plain"])
async def test_an_ipv6_address_on_an_ipv4_socket_is_reported_refused(batched: bool) -> None:
    refused: list[tuple[tuple[str, int], int]] = []
    sender = UdpEndpoint.bind(
        "127.0.0.1",
        0,
        lambda d, a: None,
        lambda: None,
        batched=batched,
        on_refused=lambda a, c: refused.append((a, c)),
    )
    sender.start()
    try:
        sender.sendto(b"x", ("::1", 9))
        # Refused by the address's encoding (batched) or Python's lookup
        # (plain), at once: nothing reached the kernel.
        assert refused == [(("::1", 9), errno.EAFNOSUPPORT)]
        assert sender.stats["send_errors"] == 1
    finally:
        sender.close()


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "plain"])
async def test_a_batch_with_unsendable_items_sends_each_other_datagram_once(batched: bool) -> None:
    """An address the socket cannot encode and a port out of range, amid
    good datagrams: the good ones arrive once each (none sent twice by a
    fall-back), the bad ones are refused, and nothing escapes."""
    refused: list[tuple[tuple[str, int], int]] = []
    received: list[bytes] = []
    options = {} if batched else {"batched": False, "buffer_size": None}
    receiver = UdpEndpoint.bind("127.0.0.1", 0, lambda d, a: received.append(d), lambda: None, **options)
    sender = UdpEndpoint.bind(
        "127.0.0.1", 0, lambda d, a: None, lambda: None, on_refused=lambda a, c: refused.append((a, c)), **options
    )
    receiver.start()
    sender.start()
    try:
        good = receiver.address
        items = [(b"one", good), (b"v6", ("::1", 9)), (b"two", good), (b"port", ("127.0.0.1", 70_000))]
        sender.send_many([*items, (b"three", good)])
        await wait_for(lambda: len(received) >= 3)
        sender.sendto(b"last", good)  # after everything before it, on the same socket
        await wait_for(lambda: b"last" in received)
        assert sorted(received) == [b"last", b"one", b"three", b"two"]
        assert refused == [(("::1", 9), errno.EAFNOSUPPORT), (("127.0.0.1", 70_000), errno.EINVAL)]
    finally:
        sender.close()
        receiver.close()


async def wait_for(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)
