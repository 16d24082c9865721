"""File throughput between two webpeers on loopback, against bare aioquic
moving the same number of bytes on one stream, in the same run.

    .venv/bin/python bench/file_bench.py [--size-mib N] [--json PATH]

1. ``bare``: aioquic's asyncio client and server, two processes, one QUIC
   connection, one stream: the client hands aioquic all N MiB at once (held
   in memory: the floor, with no pacing of ours), the server counts them and
   answers one byte at the FIN.  MB/s from the first write to the answer.
2. ``webpeer``: one ``rendezvous`` and two ``webpeer`` processes on
   127.0.0.1.  The file (N MiB of random bytes) is uploaded to the sender
   (POST /api/files, not timed); the timer starts with the receiver's POST
   /api/files/ID/accept and stops when its GET /api/files says ``complete``
   (every byte written to files/ and the SHA-256 of the whole file checked).
   The peaks of both webpeers' resident memory (VmRSS from /proc, sampled
   every 0.1 s) during the transfer are recorded.

bench/FILES.md has the results.  Everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WRITE = 64 * 1024
WINDOW = 2 * 1024 * 1024  # the webpeer's limit of unacknowledged bytes per file
TOKEN = secrets.token_urlsafe(16)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# ---------------------------------------------------------------- bare aioquic


def batched_protocol() -> Any:
    """aioquic's QuicConnectionProtocol as a careful user would drive it for
    bulk data: one ``transmit()`` per batch of datagrams the loop delivers
    in one turn (as the webpeer flushes once per read batch), not one per
    datagram.  aioquic's own ``datagram_received`` transmits after every
    datagram, so the receiver sends an ACK-only packet for nearly every
    packet it gets (py-spy: a quarter of the bare receiver's time, and the
    receiver is the bottleneck); batching lets one ACK cover several."""
    from aioquic.asyncio import QuicConnectionProtocol

    class Batched(QuicConnectionProtocol):
        _transmit_soon = False

        def datagram_received(self, data: bytes | str, addr: Any) -> None:
            self._quic.receive_datagram(data, addr, now=self._loop.time())  # type: ignore[arg-type]
            self._process_events()
            if not self._transmit_soon:
                self._transmit_soon = True
                self._loop.call_soon(self._end_of_batch)

        def _end_of_batch(self) -> None:
            self._transmit_soon = False
            self.before_transmit()
            self.transmit()

        def before_transmit(self) -> None:
            pass

    return Batched


def run_loop(main: Any) -> None:
    """The bare pair runs on the loop the webpeer runs on (uvloop when it is
    installed), so the ratio is about our code, not about asyncio's default
    loop reading every datagram into a fresh 256 KiB buffer."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def _bare_server(port: int, certdir: str) -> None:
    from aioquic.asyncio import serve
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import StreamDataReceived

    from webpeer.identity import Identity

    class Counter(batched_protocol()):  # type: ignore[misc]
        received = 0

        def quic_event_received(self, event: Any) -> None:
            if isinstance(event, StreamDataReceived):
                self.received += len(event.data)
                if event.end_stream:
                    self._quic.send_stream_data(event.stream_id, b"k", end_stream=True)

    async def main() -> None:
        identity = Identity.load_or_create(Path(certdir))
        configuration = QuicConfiguration(is_client=False, alpn_protocols=["bench"])
        configuration.certificate = identity.certificate()
        configuration.private_key = identity.private_key
        await serve("127.0.0.1", port, configuration=configuration, create_protocol=Counter)
        print("ready", flush=True)
        await asyncio.Future()

    run_loop(main())


def _bare_client(port: int, size: int) -> None:
    from aioquic.asyncio import connect
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import StreamDataReceived

    done = asyncio.Event()

    class Sender(batched_protocol()):  # type: ignore[misc]
        """Tops the stream up as ACKs arrive, at most WINDOW unacknowledged.

        Handing aioquic all N MiB at once is not a floor: its send buffer is
        one bytearray and every ACK deletes from its front, so each ACK moves
        the rest of the file (quadratic; 8 MB/s for 64 MiB here).  The webpeer
        tops up the same way, so both sides pay the same pacing."""

        payload = b""
        queued = 0
        stream_id = 0

        def top_up(self) -> None:
            stream = self._quic._streams.get(self.stream_id)
            unacked = 0 if stream is None else len(stream.sender._buffer)
            while self.queued < len(self.payload) and unacked < WINDOW:
                chunk = self.payload[self.queued : self.queued + WRITE]
                self.queued += len(chunk)
                unacked += len(chunk)
                self._quic.send_stream_data(self.stream_id, chunk, end_stream=self.queued == len(self.payload))

        def before_transmit(self) -> None:
            if self.payload:
                self.top_up()  # once per batch of ACKs, as the webpeer's pump

        def quic_event_received(self, event: Any) -> None:
            if isinstance(event, StreamDataReceived) and event.end_stream:
                done.set()

    async def main() -> None:
        configuration = QuicConfiguration(is_client=True, alpn_protocols=["bench"], verify_mode=ssl.CERT_NONE)
        async with connect("127.0.0.1", port, configuration=configuration, create_protocol=Sender) as client:
            assert isinstance(client, Sender)
            client.stream_id = client._quic.get_next_available_stream_id()
            payload = memoryview(os.urandom(size))
            started = time.perf_counter()
            client.payload = payload  # type: ignore[assignment]
            client.top_up()
            client.transmit()
            await done.wait()
            print(json.dumps({"seconds": time.perf_counter() - started}), flush=True)

    run_loop(main())


def bare(size: int) -> dict[str, Any]:
    port = free_udp_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as certdir:
        server = subprocess.Popen(
            [sys.executable, __file__, "_bare_server", str(port), certdir], stdout=subprocess.PIPE, env=env
        )
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == b"ready"
            out = subprocess.run(
                [sys.executable, __file__, "_bare_client", str(port), str(size)],
                check=True,
                capture_output=True,
                env=env,
            ).stdout
        finally:
            server.kill()
            server.wait()
    seconds = json.loads(out.splitlines()[-1])["seconds"]
    return {"seconds": round(seconds, 3), "mb_per_s": round(size / seconds / 1e6, 2)}


# ---------------------------------------------------------------- webpeers


async def _spawn(log: Path, *args: str) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEBPEER_", "RENDEZVOUS_"))}
    env["PYTHONPATH"] = str(ROOT)
    with log.open("wb") as stderr:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=stderr
        )


async def webpeers(size: int, workdir: Path) -> dict[str, Any]:
    import aiohttp

    port = free_udp_port()
    children = [
        await _spawn(
            workdir / "rendezvous.log",
            "rendezvous",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--db",
            str(workdir / "registry.sqlite3"),
            "--log-level",
            "warning",
        )
    ]
    bases: list[str] = []
    try:
        for name in ("sender", "receiver"):
            process = await _spawn(
                workdir / f"{name}.log",
                "webpeer",
                "--server",
                f"127.0.0.1:{port}",
                "--http-port",
                "0",
                "--token",
                TOKEN,
                "--name",
                name,
                "--data-dir",
                str(workdir / name),
                "--no-browser",
                "--udp-host",
                "127.0.0.1",
                "--log-level",
                "warning",
            )
            children.append(process)
            assert process.stdout is not None
            line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
            match = re.match(r"Open (http://127\.0\.0\.1:\d+)/", line)
            assert match, line
            bases.append(match[1])
        sender, receiver = bases
        upload = workdir / "upload.bin"
        with upload.open("wb") as file:
            for _ in range(0, size, 1 << 20):
                file.write(os.urandom(1 << 20))
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            ids = []
            for base in bases:
                while True:
                    async with http.get(f"{base}/api/me") as response:
                        me = await response.json()
                    if me["registered"]:
                        ids.append(me["id"])
                        break
                    await asyncio.sleep(0.1)
            form = aiohttp.FormData()
            form.add_field("to", str(ids[1]))
            form.add_field("file", upload.open("rb"), filename="upload.bin")
            async with http.post(f"{sender}/api/files", data=form) as response:
                assert response.status == 201, await response.text()
                file_id = (await response.json())[0]["id"]
            while True:
                async with http.get(f"{receiver}/api/files?peer={ids[0]}") as response:
                    if any(f["id"] == file_id for f in await response.json()):
                        break
                await asyncio.sleep(0.05)
            pids = [children[1].pid, children[2].pid]
            peaks = [rss_mib(pid) for pid in pids]
            before = list(peaks)
            started = time.perf_counter()
            async with http.post(f"{receiver}/api/files/{file_id}/accept") as response:
                assert response.status == 200, await response.text()
            status = "accepted"
            while status == "accepted":
                await asyncio.sleep(0.1)
                peaks = [max(peak, rss_mib(pid)) for peak, pid in zip(peaks, pids, strict=True)]
                async with http.get(f"{receiver}/api/files?peer={ids[0]}") as response:
                    status = next(f["status"] for f in await response.json() if f["id"] == file_id)
            seconds = time.perf_counter() - started
            assert status == "complete", status
    finally:
        for process in reversed(children):
            if process.returncode is None:
                process.terminate()
                await process.wait()
    return {
        "seconds": round(seconds, 3),
        "mb_per_s": round(size / seconds / 1e6, 2),
        "rss_mib_before": {"sender": round(before[0], 1), "receiver": round(before[1], 1)},
        "rss_mib_peak": {"sender": round(peaks[0], 1), "receiver": round(peaks[1], 1)},
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_bare_server":
        _bare_server(int(sys.argv[2]), sys.argv[3])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_bare_client":
        _bare_client(int(sys.argv[2]), int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--only",
        choices=("bare", "webpeer"),
        help="run one side (the 2 GiB RSS run: the bare client holds the whole payload in memory)",
    )
    args = parser.parse_args()
    size = args.size_mib * 1024 * 1024
    result: dict[str, Any] = {"size_mib": args.size_mib, "load_before": os.getloadavg(), "cpus": os.cpu_count()}
    if args.only != "webpeer":
        result["bare"] = bare(size)
    if args.only != "bare":
        with tempfile.TemporaryDirectory() as workdir:
            result["webpeer"] = asyncio.run(webpeers(size, Path(workdir)))
    if args.only is None:
        result["ratio"] = round(result["webpeer"]["mb_per_s"] / result["bare"]["mb_per_s"], 2)
    result["load_after"] = os.getloadavg()
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
