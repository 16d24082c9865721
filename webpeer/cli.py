"""The ``webpeer`` command: one user's peer, and the page that drives it on 127.0.0.1.

Owns the command line (every option also read from a ``WEBPEER_*`` variable),
the default data dir and its lock (one process per data dir), and the
process's life: it ties the node to the page's app, prints the page's URL,
and runs until SIGINT or SIGTERM.  What stops it from starting (a data dir
in use or read-only, a name that does not resolve, a port in use) is one
line on stderr and exit status 1, not a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import secrets
import signal
import sys
import webbrowser
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import platformdirs
from aiohttp import web

from rendezvous.tool import parse_server

from .datadir import DataDirError, DataDirLock
from .engine import address_text
from .node import NodeConfig, PeerNode
from .store import StoreError
from .web import WebConfig, create_app, start_site

logger = logging.getLogger("webpeer")


def default_data_dir(name: str, http_port: int) -> Path:
    """One directory per peer, so several can run side by side."""
    label = name or f"port-{http_port}"
    return Path(platformdirs.user_data_dir("peerlink")) / "peers" / label


def positive_days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}") from None
    if not 0 < days <= 36500:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"retention must be more than 0 and at most 36500 days, not {text}")
    return days


def ttl_seconds(text: str) -> int:
    if not (text.isascii() and text.isdigit() and 10 <= int(text) <= 3600):
        raise argparse.ArgumentTypeError(f"ttl must be a whole number of seconds from 10 to 3600, not {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="webpeer",
        description="peerlink peer: messages go straight to other "
        "peers over UDP (QUIC); open the printed URL to use it.",
    )
    parser.add_argument(
        "--server",
        type=parse_server,
        # A string default goes through parse_server too (a bad variable is a usage error).
        default=env("WEBPEER_SERVER", "127.0.0.1:3478"),
        help="rendezvous server HOST:PORT: an IPv4 address, a name (every address it resolves to "
        "is tried) or [IPv6]:PORT (env WEBPEER_SERVER, default 127.0.0.1:3478)",
    )
    parser.add_argument(
        "--http-port",
        type=int,
        default=int(env("WEBPEER_HTTP_PORT", "8000")),
        help="port of the local page on 127.0.0.1; 0 picks a free one (env WEBPEER_HTTP_PORT, default 8000)",
    )
    parser.add_argument(
        "--name", default=env("WEBPEER_NAME", ""), help="nickname shown to other peers (env WEBPEER_NAME)"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=env("WEBPEER_DATA_DIR"),
        help="where the key and the history live (env WEBPEER_DATA_DIR; default: "
        "<user data dir>/peerlink/peers/<name or port-N>)",
    )
    parser.add_argument(
        "--udp-port",
        type=int,
        default=int(env("WEBPEER_UDP_PORT", "0")),
        help="UDP port for the server and other peers; 0 picks one (env WEBPEER_UDP_PORT)",
    )
    parser.add_argument(
        "--udp-host",
        default=env("WEBPEER_UDP_HOST", ""),
        help="address the UDP socket binds (env WEBPEER_UDP_HOST); default: :: (IPv6 and IPv4), "
        "or 0.0.0.0 where the host has no IPv6",
    )
    parser.add_argument(
        "--ttl",
        type=ttl_seconds,
        default=env("WEBPEER_TTL", "60"),
        help="seconds the server keeps this peer listed without a refresh, 10..3600 "
        "(env WEBPEER_TTL, default 60; refreshes go at 35%% of it)",
    )
    parser.add_argument(
        "--token",
        default=env("WEBPEER_TOKEN"),
        help="the page's access token (env WEBPEER_TOKEN); random for each start otherwise",
    )
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser")
    parser.add_argument(
        "--relay-only",
        action="store_true",
        default=os.environ.get("WEBPEER_RELAY_ONLY") == "1",
        help="never try a direct path to other peers: everything goes through the rendezvous "
        "server's relay (env WEBPEER_RELAY_ONLY=1; for diagnosis)",
    )
    parser.add_argument(
        "--retention-days",
        type=positive_days,
        default=float(env("WEBPEER_RETENTION_DAYS", "7")),
        help="a message for a peer that stays offline waits this long, then fails "
        "(env WEBPEER_RETENTION_DAYS, default 7)",
    )
    parser.add_argument(
        "--log-level",
        default=env("WEBPEER_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
        help="log verbosity (env WEBPEER_LOG_LEVEL)",
    )
    return parser


def node_context(node: PeerNode) -> Callable[[web.Application], AsyncIterator[None]]:
    """aiohttp cleanup context: the node (socket, registration, store) lives as long as the app."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        await node.start()
        # Start-up leaves ~50,000 long-lived objects (aiohttp, aioquic,
        # cryptography); freezing them keeps full collections, which would
        # otherwise land in the middle of a handshake, short.
        gc.collect()
        gc.freeze()
        yield
        await node.stop()

    return context


async def serve(args: argparse.Namespace, lock: DataDirLock) -> None:
    token = args.token or secrets.token_urlsafe(24)
    data_dir = lock.data_dir
    node = PeerNode(
        NodeConfig(
            server=args.server,
            data_dir=data_dir,
            name=args.name,
            udp_host=args.udp_host,
            udp_port=args.udp_port,
            ttl=args.ttl,
            relay_only=args.relay_only,
            retention=args.retention_days * 24 * 3600,
        )
    )
    app = create_app(WebConfig(port=args.http_port, token=token), node)
    app.cleanup_ctx.append(node_context(node))
    runner = await start_site(app, args.http_port)
    port = runner.addresses[0][1]
    lock.record(port)
    url = f"http://127.0.0.1:{port}/?token={token}"
    print(f"Open {url}", flush=True)
    servers = ", ".join(address_text(a) for a in node.registration.servers)
    named = address_text(args.server)
    logger.info(
        "peer data in %s; UDP %s; rendezvous %s",
        data_dir,
        address_text(node.udp_address),
        named if servers == named else f"{named} ({servers})",
    )
    if not args.no_browser:
        webbrowser.open(url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("quic").setLevel(logging.WARNING)
    run = asyncio.run
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        pass
    data_dir = Path(args.data_dir or default_data_dir(args.name, args.http_port))
    try:
        lock = DataDirLock.acquire(data_dir)
    except DataDirError as error:
        raise SystemExit(f"webpeer: {error}") from None
    try:
        run(serve(args, lock))
    except (OSError, StoreError) as error:
        raise SystemExit(f"webpeer: {error}") from None
    finally:
        lock.release()
