"""Small UDP programs for probing the NAT lab from inside its namespaces.

Standard library only; run as ``python udptool.py COMMAND ...`` through
``Lab.popen``/``Lab.run``.  Every command prints JSON lines on stdout and
stops by itself (a lifetime or a count bounds each loop).

- ``echo --bind IP:PORT ...``: answer each datagram with the sender's
  address as seen here: ``{"seen": "ip:port", "data": ...}``.  A datagram
  ``later:SECONDS`` gets a second, unsolicited-looking answer ``"last"``
  after that many seconds, from the same socket (a filtering control).
- ``probe --to IP:PORT ...``: from one socket, ask each echo in turn and
  print what each saw: ``{"local": ..., "seen": {"ip:port": "ip:port"}}``;
  with ``--listen S`` then print every datagram received
  (``{"from": ..., "data": ...}``) until ``last`` arrives or S seconds pass;
  with ``--then TEXT``, first wait for a line on stdin, then send TEXT to the
  first echo (its direct answer is not printed) and listen from then on.
- ``send --to IP:PORT --data TEXT``: send a few copies from one socket.
- ``sink --bind IP:PORT``: count datagrams until idle; print ``{"count": n}``.
- ``blast --to IP:PORT --count N``: send N numbered datagrams, paced.
- ``ping --to IP:PORT --count N``: round trips to an echo, in ms.
"""

from __future__ import annotations

import argparse
import heapq
import json
import select
import socket
import sys
import time


def endpoint(text: str) -> tuple[str, int]:
    """``"ip:port"`` as an address tuple."""
    host, _, port = text.rpartition(":")
    return host, int(port)


def show(address: tuple[str, int]) -> str:
    """An address tuple as ``"ip:port"``."""
    return f"{address[0]}:{address[1]}"


def emit(record: dict[str, object]) -> None:
    """One JSON line on stdout, flushed at once (the caller reads as we go)."""
    print(json.dumps(record), flush=True)


def echo(binds: list[str], lifetime: float) -> None:
    socks = []
    for bind in binds:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(endpoint(bind))
        socks.append(sock)
    emit({"ready": binds})
    later: list[tuple[float, int, tuple[str, int]]] = []  # (due, socket index, peer)
    deadline = time.monotonic() + lifetime
    while time.monotonic() < deadline:
        timeout = 0.2 if not later else max(0.0, min(0.2, later[0][0] - time.monotonic()))
        ready, _, _ = select.select(socks, [], [], timeout)
        for sock in ready:
            data, peer = sock.recvfrom(2048)
            text = data.decode(errors="replace")
            sock.sendto(json.dumps({"seen": show(peer), "data": text}).encode(), peer)
            if text.startswith("later:"):
                heapq.heappush(later, (time.monotonic() + float(text[6:]), socks.index(sock), peer))
        while later and later[0][0] <= time.monotonic():
            _, index, peer = heapq.heappop(later)
            socks[index].sendto(json.dumps({"seen": show(peer), "data": "last"}).encode(), peer)


def probe(targets: list[str], payload: str, listen: float, port: int, then: str | None = None) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    seen: dict[str, str] = {}
    for target in targets:
        address = endpoint(target)
        for _attempt in range(5):
            sock.sendto(payload.encode(), address)
            ready, _, _ = select.select([sock], [], [], 0.5)
            if ready:
                data, peer = sock.recvfrom(2048)
                if peer == address:
                    seen[target] = json.loads(data)["seen"]
                    break
    emit({"local": show(sock.getsockname()), "seen": seen})
    if then is not None:
        sys.stdin.readline()  # the caller's go: whatever it sent meanwhile has been sent
        sock.sendto(then.encode(), endpoint(targets[0]))
    deadline = time.monotonic() + listen
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        data, peer = sock.recvfrom(2048)
        text = data.decode(errors="replace")
        if text.startswith("{"):
            text = json.loads(text).get("data", text)
        if then is not None and text == then:
            continue  # the echo's direct answer to it
        emit({"from": show(peer), "data": text})
        if text == "last":
            break


def send(target: str, data: str, copies: int, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    for _ in range(copies):
        sock.sendto(data.encode(), endpoint(target))
        time.sleep(0.01)
    emit({"sent": copies, "local": show(sock.getsockname())})


def sink(bind: str, lifetime: float, idle: float) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind(endpoint(bind))
    emit({"ready": bind})
    count = 0
    deadline = time.monotonic() + lifetime
    last = None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], 0.1)
        if ready:
            sock.recvfrom(2048)
            count += 1
            last = time.monotonic()
        elif last is not None and time.monotonic() - last > idle:
            break
    emit({"count": count})


def blast(target: str, count: int, interval: float) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for number in range(count):
        sock.sendto(str(number).encode(), endpoint(target))
        time.sleep(interval)
    emit({"sent": count})


def ping(target: str, count: int, timeout: float) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    address = endpoint(target)
    rtts: list[float] = []
    for number in range(count):
        started = time.monotonic()
        sock.sendto(f"ping {number}".encode(), address)
        while True:
            ready, _, _ = select.select([sock], [], [], max(0.0, started + timeout - time.monotonic()))
            if not ready:
                break
            data, peer = sock.recvfrom(2048)
            if peer == address and json.loads(data)["data"] == f"ping {number}":
                rtts.append((time.monotonic() - started) * 1000)
                break
    emit({"rtts_ms": rtts})


def main(argv: list[str] | None = None) -> int:
    """Command line entry; see the module docstring."""
    parser = argparse.ArgumentParser(description="UDP probes for the NAT lab")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("echo")
    p.add_argument("--bind", action="append", required=True)
    p.add_argument("--lifetime", type=float, default=300.0)
    p = commands.add_parser("probe")
    p.add_argument("--to", action="append", required=True)
    p.add_argument("--data", default="probe")
    p.add_argument("--listen", type=float, default=0.0)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--then")
    p = commands.add_parser("send")
    p.add_argument("--to", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--copies", type=int, default=3)
    p.add_argument("--port", type=int, default=0)
    p = commands.add_parser("sink")
    p.add_argument("--bind", required=True)
    p.add_argument("--lifetime", type=float, default=30.0)
    p.add_argument("--idle", type=float, default=1.0)
    p = commands.add_parser("blast")
    p.add_argument("--to", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--interval", type=float, default=0.001)
    p = commands.add_parser("ping")
    p.add_argument("--to", required=True)
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--timeout", type=float, default=1.0)
    args = parser.parse_args(argv)
    if args.command == "echo":
        echo(args.bind, args.lifetime)
    elif args.command == "probe":
        probe(args.to, args.data, args.listen, args.port, args.then)
    elif args.command == "send":
        send(args.to, args.data, args.copies, args.port)
    elif args.command == "sink":
        sink(args.bind, args.lifetime, args.idle)
    elif args.command == "blast":
        blast(args.to, args.count, args.interval)
    else:
        ping(args.to, args.count, args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
