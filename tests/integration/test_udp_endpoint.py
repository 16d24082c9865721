"""The UDP adapter on real loopback sockets: batched (recvmmsg/sendmmsg) and
plain endpoints carry the same datagrams, in order, and a send to a closed
port breaks neither."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter

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
