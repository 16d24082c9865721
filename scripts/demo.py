"""`make demo`: a rendezvous server and two webpeers on this machine.

Prints each page's URL; Ctrl-C stops all three.  State lives in .demo/, and
so do the logs (rendezvous.log, alice.log, bob.log), so the terminal shows
the URLs and what happens to the processes, not every request.

When one of them stops (say bob is killed, to see alice's page say bob is
offline), the others keep running, and the demo prints the command that
starts it again (in another terminal, with the same data dir: same key,
same id, same history).

    scripts/demo.py [--server-port 3478] [--http-ports 8001,8002] [--dir .demo]
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("alice", "bob")
POLL_SECONDS = 0.2


@dataclass
class Child:
    name: str
    command: list[str]
    process: subprocess.Popen[str]
    log: Path
    reported: bool = False  # its stop was reported


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A rendezvous server and two webpeers on this machine.")
    parser.add_argument("--server-port", type=int, default=int(os.environ.get("DEMO_SERVER_PORT", "3478")))
    parser.add_argument("--http-ports", default="8001,8002", help="the pages' ports, alice's then bob's")
    parser.add_argument("--dir", type=Path, default=ROOT / ".demo", help="data dirs and logs")
    args = parser.parse_args()
    ports = args.http_ports.split(",")
    if len(ports) != len(NAMES) or not all(port.isdigit() for port in ports):
        parser.error(f"--http-ports: {len(NAMES)} port numbers, comma-separated")
    args.ports = [int(port) for port in ports]
    return args


def _start(name: str, command: list[str], log: Path, stdout: int | None = None) -> Child:
    with log.open("a") as sink:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(command, stdout=stdout, stderr=sink, text=True, cwd=ROOT)
    return Child(name, command, process, log)


def _server_command(args: argparse.Namespace) -> list[str]:
    return [
        sys.executable,
        "-m",
        "rendezvous",
        "--host",
        "127.0.0.1",
        "--port",
        str(args.server_port),
        "--db",
        str((args.dir / "rendezvous.sqlite3").resolve()),
        "--legacy-text",
        # A second loopback address, so the peers can learn their NAT type (none here).
        "--other-address",
        f"127.0.0.2:{args.server_port + 1}",
    ]


def _peer_command(args: argparse.Namespace, name: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "webpeer",
        "--server",
        f"127.0.0.1:{args.server_port}",
        "--http-port",
        str(port),
        "--name",
        name,
        "--data-dir",
        str((args.dir / name).resolve()),
        "--no-browser",
    ]


def _first_line(stdout: IO[str] | None) -> str:
    assert stdout is not None
    return stdout.readline().strip()


def _report_stops(children: list[Child]) -> None:
    for child in children:
        if child.reported or child.process.poll() is None:
            continue
        child.reported = True
        print(f"\ndemo: {child.name} stopped (exit code {child.process.returncode}); the others keep running.")
        print(f"  its log: {child.log}")
        print(
            f"  to start it again (same data: same key, id and history), in another terminal:\n    {shlex.join(child.command)}"
        )
        print("  (then Ctrl-C in that terminal stops it)\n", flush=True)


def main() -> int:
    args = _arguments()
    signal.signal(signal.SIGTERM, _interrupt)  # stop the children on SIGTERM too
    args.dir.mkdir(parents=True, exist_ok=True)
    children = [_start("the rendezvous server", _server_command(args), args.dir / "rendezvous.log")]
    time.sleep(0.5)
    urls = []
    try:
        peers = [
            _start(name, _peer_command(args, name, port), args.dir / f"{name}.log", subprocess.PIPE)
            for name, port in zip(NAMES, args.ports, strict=True)
        ]
        children.extend(peers)  # started together: each takes a second or more to come up
        for name, child in zip(NAMES, peers, strict=True):
            line = _first_line(child.process.stdout)
            if not line.startswith("Open "):
                print(f"demo: {name} did not start; see {child.log}", file=sys.stderr)
                return 1
            urls.append((name, line.removeprefix("Open "), child.process.pid))
        print()
        print(f"rendezvous server: 127.0.0.1:{args.server_port} (UDP)  pid {children[0].process.pid}")
        for name, url, pid in urls:
            print(f"{name:>6}'s page:   {url}  pid {pid}")
        print(f"\nLogs: {args.dir}/*.log.  Open both pages, pick the other peer, type, press Enter.")
        print("Stop one peer (kill its pid) to see the other page notice; Ctrl-C stops everything.\n", flush=True)
        while any(child.process.poll() is None for child in children):
            _report_stops(children)
            time.sleep(POLL_SECONDS)
        _report_stops(children)
        print("demo: everything stopped.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        # Stopping: a second Ctrl-C or SIGTERM (make and the terminal both
        # pass one on) must not cut the children's clean shutdown short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for child in reversed(children):
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.process.kill()


if __name__ == "__main__":
    sys.exit(main())
