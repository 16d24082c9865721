"""`make demo`: a rendezvous server and two webpeers on this machine.

Prints each page's URL; Ctrl-C stops all three.  State lives in .demo/.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"
SERVER_PORT = int(os.environ.get("DEMO_SERVER_PORT", "3478"))
PEERS = [("alice", 8001), ("bob", 8002)]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)  # stop the children on SIGTERM too
    DEMO.mkdir(exist_ok=True)
    python = sys.executable
    processes = [
        subprocess.Popen(
            [
                python,
                "-m",
                "rendezvous",
                "--host",
                "127.0.0.1",
                "--port",
                str(SERVER_PORT),
                "--db",
                str(DEMO / "rendezvous.sqlite3"),
                "--legacy-text",
                # A second loopback address, so the peers can learn their NAT type (none here).
                "--other-address",
                f"127.0.0.2:{SERVER_PORT + 1}",
            ]
        )
    ]
    time.sleep(0.5)
    urls = []
    try:
        for name, port in PEERS:
            peer = subprocess.Popen(
                [
                    python,
                    "-m",
                    "webpeer",
                    "--server",
                    f"127.0.0.1:{SERVER_PORT}",
                    "--http-port",
                    str(port),
                    "--name",
                    name,
                    "--data-dir",
                    str(DEMO / name),
                    "--no-browser",
                    "--log-level",
                    "warning",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            processes.append(peer)
            assert peer.stdout is not None
            line = peer.stdout.readline().strip()
            if not line.startswith("Open "):
                print(f"demo: {name} did not start", file=sys.stderr)
                return 1
            urls.append((name, line.removeprefix("Open ")))
        print()
        print(f"rendezvous server: 127.0.0.1:{SERVER_PORT} (UDP)")
        for name, url in urls:
            print(f"{name:>6}'s page:   {url}")
        print("\nOpen both pages, pick the other peer, type, press Enter.  Ctrl-C stops everything.\n", flush=True)
        while all(p.poll() is None for p in processes):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        # Stopping: a second Ctrl-C or SIGTERM (make and the terminal both
        # pass one on) must not cut the children's clean shutdown short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    sys.exit(main())
