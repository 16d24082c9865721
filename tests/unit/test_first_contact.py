"""First contact with the rendezvous: how the server is named (parse_server,
the node's resolver), what the peer says while it does not answer, and one
process per data dir (the lock)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
from pathlib import Path

import pytest
from peer_net import SERVER, PeerNet

from rendezvous.tool import parse_server
from webpeer.datadir import DataDirBusy, DataDirError, DataDirLock
from webpeer.events import MeChanged
from webpeer.node import NodeConfig, PeerNode, ServerNameError

# ------------------------------------------------------------ --server


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:3478", ("127.0.0.1", 3478)),
        ("[::1]:3478", ("::1", 3478)),
        ("[fe80::1%eth0]:9", ("fe80::1%eth0", 9)),
        ("rendezvous.example.org:3478", ("rendezvous.example.org", 3478)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_server_addresses_are_ipv4_names_or_ipv6_in_brackets(text: str, address: tuple[str, int]) -> None:
    assert parse_server(text) == address


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("::1:3478", "in brackets"),
        ("[::1:3478", "in brackets"),
        ("[nope]:3478", "not an IPv6 address"),
        ("127.0.0.1", "expected HOST:PORT"),
        (":3478", "expected HOST:PORT"),
        ("host:0", "expected HOST:PORT"),
        ("host:65536", "expected HOST:PORT"),
        ("host:port", "expected HOST:PORT"),
    ],
)
def test_ambiguous_or_broken_server_addresses_are_refused(text: str, complaint: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=complaint):
        parse_server(text)


# ------------------------------------------------------------ the node's resolver


def fake_getaddrinfo(answers: dict[str, list[tuple[socket.AddressFamily, tuple]]]):
    async def getaddrinfo(host: str, port: int, **_: object):
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(family, socket.SOCK_DGRAM, 17, "", (addr[0], port, *addr[2:])) for family, addr in answers[host]]

    return getaddrinfo


NAMES = {
    "only6.test": [(socket.AF_INET6, ("::1", 0, 0, 0))],
    "both.test": [
        (socket.AF_INET6, ("2001:db8::7", 0, 0, 0)),
        (socket.AF_INET, ("192.0.2.7", 0)),
        (socket.AF_INET6, ("::ffff:192.0.2.8", 0, 0, 0)),  # written mapped: seen from as plain IPv4
        (socket.AF_INET, ("192.0.2.7", 0)),  # a repeat (one per socket type on some systems)
    ],
}


async def resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: str, udp_host: str = ""):
    node = PeerNode(NodeConfig(server=parse_server(server), data_dir=tmp_path, udp_host=udp_host))
    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", fake_getaddrinfo(NAMES))
    node._udp_host = udp_host or "::"
    return await node._resolve_server()


async def test_a_name_gives_every_address_in_order_as_the_socket_reports_senders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert await resolved(tmp_path, monkeypatch, "only6.test:3478") == (("::1", 3478),)
    assert await resolved(tmp_path, monkeypatch, "both.test:9") == (
        ("2001:db8::7", 9),
        ("192.0.2.7", 9),
        ("192.0.2.8", 9),
    )
    # A socket bound to an IPv4 address cannot reach IPv6 ones: they are skipped ...
    assert await resolved(tmp_path, monkeypatch, "both.test:9", "0.0.0.0") == (("192.0.2.7", 9), ("192.0.2.8", 9))
    # ... and a name with nothing it can reach, or none at all, is one clear error.
    with pytest.raises(ServerNameError, match=r"'only6.test' has no address the UDP socket on 0.0.0.0 can reach"):
        await resolved(tmp_path, monkeypatch, "only6.test:9", "0.0.0.0")
    with pytest.raises(ServerNameError, match=r"cannot resolve the rendezvous server 'nowhere.test'"):
        await resolved(tmp_path, monkeypatch, "nowhere.test:9")


# ------------------------------------------------------------ what the peer says while the server is silent


def test_the_engine_says_when_the_server_is_silent_and_when_it_answers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "webpeer")
    net = PeerNet(tmp_path)
    net._cut.add(frozenset(("198.51.100.1", SERVER[0])))  # the first peer's host cannot reach the server
    alice = net.add("alice")
    assert alice.engine.me()["server_state"] == "connecting"
    net.run(2.9)
    assert alice.engine.me()["server_state"] == "connecting"
    net.run(0.2)
    assert alice.engine.me()["server_state"] == "unreachable"
    assert [e.me["server_state"] for e in alice.events if isinstance(e, MeChanged)] == ["unreachable"]
    assert f"no answer from the rendezvous at {SERVER[0]}:{SERVER[1]} yet; still trying" in caplog.messages
    net.run(30.0)
    net._cut.clear()
    took = net.run_until(lambda: alice.engine.me()["server_state"] == "registered", 3.0)
    assert took <= 2.0
    assert f"the rendezvous at {SERVER[0]}:{SERVER[1]} answers" in caplog.messages
    states = [e.me["server_state"] for e in alice.events if isinstance(e, MeChanged)]
    assert states[-1] == "registered" and "connecting" in states


# ------------------------------------------------------------ one process per data dir


def test_a_second_lock_on_a_data_dir_names_the_holder(tmp_path: Path) -> None:
    first = DataDirLock.acquire(tmp_path / "peer")
    with pytest.raises(DataDirBusy, match=r"in use by another webpeer \(pid \d+\)") as busy:
        DataDirLock.acquire(tmp_path / "peer")
    assert busy.value.port is None
    first.record(8123)
    with pytest.raises(DataDirBusy, match=r"page http://127.0.0.1:8123/"):
        DataDirLock.acquire(tmp_path / "peer")
    first.release()
    DataDirLock.acquire(tmp_path / "peer").release()  # free again (the file stays)


def test_a_data_dir_that_is_a_file_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataDirError, match=r"cannot use the data dir .*file: it is not a directory"):
        DataDirLock.acquire(tmp_path / "file")
