"""The ``webpeer`` command: one user's peer, and the page that drives it on 127.0.0.1.

Owns the command line (every option also read from a ``WEBPEER_*`` variable),
the default data dir and its lock (one process per data dir), and the
process's life: it ties the node to the page's app, prints the page's URL,
and runs until SIGINT or SIGTERM.  What stops it from starting (a data dir
in use or read-only, a name that does not resolve, a port in use) is one
line on stderr and exit status 1, not a traceback.

With a subcommand (``chat``, ``id``, ``peers``, ``send``, ``history``,
``listen``) it is a client of the data dir's peer instead: the running
``webpeer`` if there is one, else a peer of its own for as long as the
command lasts (webpeer/commands.py; the terminal is webpeer/terminal.py).
Without one it behaves exactly as before the subcommands existed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import secrets
import signal
import sys
import webbrowser
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import platformdirs
from aiohttp import web

from rendezvous.log_lines import keep_to_one_line
from rendezvous.stun import Address
from rendezvous.tool import parse_server

from . import commands
from .api import ApiError
from .commands import node_config
from .datadir import DataDirError, DataDirLock, write_token
from .engine import address_text
from .node import PeerNode
from .quota import DEFAULT_MESSAGES_PER_MINUTE, DEFAULT_STORED_BYTES, MAX_MESSAGES_PER_MINUTE
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


_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def file_size(text: str) -> int:
    """A size in bytes, with an optional K, M, G or T (powers of 1024): "4G"."""
    number, unit = text[:-1], text[-1:].upper()
    if unit not in _SIZE_UNITS or unit == "":
        number, unit = text, ""
    if not (number.isascii() and number.isdigit() and len(number) <= 15 and int(number) > 0):
        raise argparse.ArgumentTypeError(f"not a size in bytes (like 4G, 500M, 1000000): {text!r}")
    return int(number) * _SIZE_UNITS[unit]


def per_minute(text: str) -> int:
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_MESSAGES_PER_MINUTE):
        raise argparse.ArgumentTypeError(
            f"a rate must be a whole number of messages per minute, 1 to {MAX_MESSAGES_PER_MINUTE}, not {text!r}"
        )
    return int(text)


def megabytes(text: str) -> int:
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 1_000_000):
        raise argparse.ArgumentTypeError(f"a quota must be a whole number of MiB, 1 to 1000000, not {text!r}")
    return int(text)


def ttl_seconds(text: str) -> int:
    if not (text.isascii() and text.isdigit() and 10 <= int(text) <= 3600):
        raise argparse.ArgumentTypeError(f"ttl must be a whole number of seconds from 10 to 3600, not {text!r}")
    return int(text)


class _PortGiven(argparse.Action):
    """--http-port, remembering that it was given: ``chat`` and ``listen``
    serve their page on a free port unless told which."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: str | None = None
    ) -> None:
        setattr(namespace, self.dest, values)
        namespace.http_port_given = True


def add_peer_options(parser: argparse.ArgumentParser, *, sub: bool) -> None:
    """The peer's options, on ``webpeer`` itself and on each subcommand (so
    ``webpeer chat --name alice`` works as well as ``webpeer --name alice
    chat``).  A subcommand's copies have no defaults, so they never undo
    what was given before the subcommand's name."""
    env = os.environ.get

    def add(*names: str, **options: Any) -> None:
        if sub:
            options["default"] = argparse.SUPPRESS
        parser.add_argument(*names, **options)

    add(
        "--server",
        type=parse_servers,
        # A string default goes through parse_servers too (a bad variable is a usage error).
        default=env("WEBPEER_SERVER", "127.0.0.1:3478"),
        help="rendezvous server HOST:PORT: an IPv4 address, a name (every address it resolves to "
        "is tried; its IPv6 and IPv4 addresses are raced, Happy Eyeballs) or [IPv6]:PORT; several, comma-separated, to fall back on in order when one "
        "stops answering (env WEBPEER_SERVER, default 127.0.0.1:3478)",
    )
    add(
        "--http-port",
        type=int,
        action=_PortGiven,
        default=int(env("WEBPEER_HTTP_PORT", "8000")),
        help="port of the local page on 127.0.0.1; 0 picks a free one (env WEBPEER_HTTP_PORT, default 8000)",
    )
    add("--name", default=env("WEBPEER_NAME", ""), help="nickname shown to other peers (env WEBPEER_NAME)")
    add(
        "--data-dir",
        type=Path,
        default=env("WEBPEER_DATA_DIR"),
        help="where the key and the history live (env WEBPEER_DATA_DIR; default: "
        "<user data dir>/peerlink/peers/<name or port-N>)",
    )
    add(
        "--udp-port",
        type=int,
        default=int(env("WEBPEER_UDP_PORT", "0")),
        help="UDP port for the server and other peers; 0 picks one (env WEBPEER_UDP_PORT)",
    )
    add(
        "--udp-host",
        default=env("WEBPEER_UDP_HOST", ""),
        help="address the UDP socket binds (env WEBPEER_UDP_HOST); default: :: (IPv6 and IPv4), "
        "or 0.0.0.0 where the host has no IPv6",
    )
    add(
        "--ttl",
        type=ttl_seconds,
        default=env("WEBPEER_TTL", "60"),
        help="seconds the server keeps this peer listed without a refresh, 10..3600 "
        "(env WEBPEER_TTL, default 60; refreshes go at 35%% of it)",
    )
    add(
        "--token",
        default=env("WEBPEER_TOKEN"),
        help="the page's access token (env WEBPEER_TOKEN); random for each start otherwise",
    )
    add("--no-browser", action="store_true", help="do not open a browser")
    add(
        "--relay-only",
        action="store_true",
        default=os.environ.get("WEBPEER_RELAY_ONLY") == "1",
        help="never try a direct path to other peers: everything goes through the rendezvous "
        "server's relay (env WEBPEER_RELAY_ONLY=1; for diagnosis)",
    )
    add(
        "--max-file-size",
        type=file_size,
        default=file_size(env("WEBPEER_MAX_FILE_SIZE", "4G")),
        help="files larger than this are neither sent nor accepted; an offer of one is refused "
        "with the reason on both sides (env WEBPEER_MAX_FILE_SIZE, default 4G; K, M, G, T are powers of 1024)",
    )
    add(
        "--no-mailbox",
        action="store_true",
        default=os.environ.get("WEBPEER_NO_MAILBOX") == "1",
        help="never leave messages for offline peers in the server's mailbox, nor fetch ours "
        "(env WEBPEER_NO_MAILBOX=1)",
    )
    add(
        "--mailbox-after",
        type=float,
        default=float(env("WEBPEER_MAILBOX_AFTER", "30")),
        help="seconds a message waits for an offline peer before it is sealed and left in the server's "
        "mailbox (env WEBPEER_MAILBOX_AFTER, default 30)",
    )
    add(
        "--no-port-mapping",
        action="store_true",
        default=os.environ.get("WEBPEER_NO_PORT_MAPPING") == "1",
        help="do not ask the router for a port mapping (PCP, NAT-PMP, UPnP IGD) that would let other peers "
        "reach this one directly (env WEBPEER_NO_PORT_MAPPING=1)",
    )
    add(
        "--retention-days",
        type=positive_days,
        default=float(env("WEBPEER_RETENTION_DAYS", "7")),
        help="a message for a peer that stays offline waits this long, then fails "
        "(env WEBPEER_RETENTION_DAYS, default 7)",
    )
    add(
        "--peer-rate",
        type=per_minute,
        default=env("WEBPEER_PEER_RATE", str(DEFAULT_MESSAGES_PER_MINUTE)),
        help="messages per minute each peer may send us; more are refused back to it "
        f"(env WEBPEER_PEER_RATE, default {DEFAULT_MESSAGES_PER_MINUTE})",
    )
    add(
        "--peer-quota-mb",
        type=megabytes,
        default=env("WEBPEER_PEER_QUOTA_MB", str(DEFAULT_STORED_BYTES // 1_048_576)),
        help="MiB of messages we keep from each peer; past it its messages are refused back to it "
        f"(env WEBPEER_PEER_QUOTA_MB, default {DEFAULT_STORED_BYTES // 1_048_576})",
    )
    add(
        "--log-level",
        default=env("WEBPEER_LOG_LEVEL"),
        choices=["debug", "info", "warning", "error"],
        help="log verbosity (env WEBPEER_LOG_LEVEL; default info, warning for the subcommands)",
    )


# More would only slow the fall-back walk (each silent one costs ~5 s).
MAX_SERVERS = 8


def parse_servers(text: str) -> tuple[Address, ...]:
    """``HOST:PORT[,HOST:PORT...]``: the servers to use, in order of preference."""
    parts = [part for part in text.split(",") if part.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    if len(parts) > MAX_SERVERS:
        raise argparse.ArgumentTypeError(f"at most {MAX_SERVERS} servers, got {len(parts)}")
    return tuple(dict.fromkeys(parse_server(part) for part in parts))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="webpeer",
        description="peerlink peer: messages go straight to other "
        "peers over UDP (QUIC); open the printed URL to use it.  With a subcommand: the "
        "terminal (chat) or one scripted action; these use the webpeer already running on "
        "the data dir, or run the peer themselves while they last.  Without one: the peer and its page.",
    )
    add_peer_options(parser, sub=False)
    parser.set_defaults(http_port_given="WEBPEER_HTTP_PORT" in os.environ, command=None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        child = sub.add_parser(name, help=help, description=help)
        add_peer_options(child, sub=True)
        return child

    command("chat", "chat in this terminal: the course project's menu, /open ID, /help")
    command("id", "print my id and key fingerprint")
    peers = command("peers", "print the online peers: id,name,fingerprint,connection")
    peers.add_argument("--json", action="store_true", help="every known peer, as the API's JSON")
    send = command("send", "send TEXT to peer ID; exit 0 once it is sent (or delivered, with --wait delivered)")
    send.add_argument("peer", type=peer_id_arg, metavar="ID")
    send.add_argument("text", metavar="TEXT")
    send.add_argument("--wait", choices=["sent", "delivered"], default="sent", help="what to wait for (default sent)")
    send.add_argument("--timeout", type=float, default=30.0, help="seconds to wait, then exit 1 (default 30)")
    history = command("history", "print the conversation with peer ID, oldest first")
    history.add_argument("peer", type=peer_id_arg, metavar="ID")
    history.add_argument("--json", action="store_true", help="one JSON message per line")
    listen = command("listen", "print one line per incoming message until stopped or stdout closes")
    listen.add_argument("--json", action="store_true", help="one JSON message per line")
    return parser


def peer_id_arg(text: str) -> int:
    if not (text.isascii() and text.isdigit() and 0 < int(text) < 2**32):
        raise argparse.ArgumentTypeError(f"not a peer id: {text!r}")
    return int(text)


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
    node = PeerNode(node_config(args, data_dir))
    app = create_app(WebConfig(port=args.http_port, token=token), node)
    app.cleanup_ctx.append(node_context(node))
    runner = await start_site(app, args.http_port)
    port = runner.addresses[0][1]
    # The token first: whoever reads the port from the lock can then attach.
    write_token(data_dir, token)
    lock.record(port)
    url = f"http://127.0.0.1:{port}/?token={token}"
    print(f"Open {url}", flush=True)
    servers = ", ".join(address_text(a) for a in node.registration.servers)
    named = ",".join(address_text(server) for server in args.server)
    logger.info(
        "peer data in %s; UDP %s; rendezvous %s",
        data_dir,
        address_text(node.udp_address),
        named if servers == named else f"{named} ({servers})",
    )
    if not args.no_browser:
        webbrowser.open(url)
    await until_signalled()
    await runner.cleanup()


async def until_signalled(*signals: signal.Signals) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in signals or (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def run_command(args: argparse.Namespace, data_dir: Path) -> None:
    """A subcommand, against the data dir's running peer or one of its own."""
    long_lived = args.command in ("chat", "listen")
    page_port = (args.http_port if args.http_port_given else 0) if long_lived else None
    async with commands.open_peer(args, data_dir, page_port=page_port) as opened:
        if args.command == "chat":
            if opened.page:
                print(f"The page: {opened.page}", flush=True)
            # Imported here: prompt_toolkit costs ~0.2 s of start-up that a
            # webpeer serving its page never needs.
            from .terminal import ChatUI

            # SIGTERM and SIGHUP (the terminal went away) end the chat as
            # EXIT does: open_peer's exit then unregisters.
            await until_first(ChatUI(opened.client).run(), until_signalled(signal.SIGTERM, signal.SIGHUP))
        elif args.command == "id":
            await commands.show_id(opened)
        elif args.command == "peers":
            await commands.show_peers(opened, args.json)
        elif args.command == "history":
            await commands.show_history(opened, args.peer, args.json)
        elif args.command == "send":
            await commands.send(opened, args.peer, args.text, args.wait, args.timeout)
        elif args.command == "listen":
            await until_first(commands.listen(opened, args.json), until_signalled())


async def until_first(work: Coroutine[Any, Any, None], stop: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` until it ends or ``stop`` does; ``work``'s error is raised."""
    work_task, stop_task = asyncio.create_task(work), asyncio.create_task(stop)
    await asyncio.wait({work_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    stop_task.cancel()
    if not work_task.done():
        work_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work_task
        return
    work_task.result()


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    level = args.log_level or ("warning" if args.command else "info")
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("quic").setLevel(logging.WARNING)
    keep_to_one_line(logging.getLogger().handlers)
    run = asyncio.run
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        pass
    data_dir = Path(args.data_dir or default_data_dir(args.name, args.http_port))
    if args.command is not None:
        try:
            run(run_command(args, data_dir))
        except (commands.CommandError, ApiError, DataDirError, OSError, StoreError) as error:
            raise SystemExit(f"webpeer: {getattr(error, 'message', None) or error}") from None
        except KeyboardInterrupt:
            raise SystemExit(130) from None
        finally:
            _quiet_broken_stdout()
        return
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


def _quiet_broken_stdout() -> None:
    """After ``| head -1`` has gone, flushing stdout at exit would print a
    BrokenPipeError: point stdout at /dev/null instead (the Python docs' recipe)."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
