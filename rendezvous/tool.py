"""An operator's tool for a rendezvous server: is it up, who is online,
what is in its registry.

    python -m rendezvous.tool binding                        # STUN Binding: my address as the server sees it
    python -m rendezvous.tool list --server HOST:3478        # the online peers: id, name, key
    python -m rendezvous.tool connect 2                      # peer 2's key and candidate addresses
    python -m rendezvous.tool stats --db /var/lib/peerlink/rendezvous.sqlite3
    python -m rendezvous.tool register --name probe --stay   # register the tool's own key (diagnosis)

Options go before or after the command.  LIST and CONNECT are only
answered to a registered peer, so ``list``, ``connect`` and ``register``
register first, with the operator's key (``--key``, default
<user data dir>/peerlink/operator.key, created mode 0600): the tool keeps one
id at the server instead of taking a new one each run; it unregisters when
it is done (``register --stay``: not).  ``stats`` reads the SQLite registry
file (read-only; refreshes reach it in batches every 2 s, so "online" can
lag by that much) and sends nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import sqlite3
import time
from pathlib import Path

import platformdirs
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from .client import RendezvousClient, RendezvousError, TransactionTimeout
from .stun import Address


def parse_server(text: str) -> Address:
    """``HOST:PORT``: an IPv4 address or a name (``127.0.0.1:3478``,
    ``rendezvous.example.org:3478``), or an IPv6 address in brackets
    (``[::1]:3478``; without them the port could not be told apart).  Names
    are left as they are, for the caller to resolve."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host.partition("%")[0])
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an IPv6 address in brackets: {text!r}") from None
    elif ":" in host or "[" in host or "]" in host:
        raise argparse.ArgumentTypeError(f"write an IPv6 address in brackets, as in [::1]:3478; got {text!r}")
    if not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def default_key_path() -> Path:
    return Path(platformdirs.user_data_dir("peerlink")) / "operator.key"


def load_key(path: Path) -> Ed25519PrivateKey:
    """The key in ``path``, made (mode 0600) the first time."""
    if path.exists():
        return Ed25519PrivateKey.from_private_bytes(path.read_bytes())
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))
    return key


def stats(db: Path, now: float) -> list[str]:
    """What the registry file holds, read-only."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    except sqlite3.Error as error:
        raise SystemExit(f"rendezvous: cannot open {db}: {error}") from None
    try:
        ids, top = conn.execute("SELECT count(*), coalesce(max(peer_id), 0) FROM peers").fetchone()
        (online,) = conn.execute("SELECT count(*) FROM peers WHERE expires_at > ?", (now,)).fetchone()
        (day,) = conn.execute("SELECT count(*) FROM peers WHERE last_seen > ?", (now - 86400,)).fetchone()
    except sqlite3.Error as error:
        raise SystemExit(f"rendezvous: {db} is not a rendezvous registry ({error})") from None
    finally:
        conn.close()
    return [
        f"registry      {db}",
        f"ids given out {ids} (highest {top})",
        f"online now    {online}",
        f"seen in 24 h  {day}",
    ]


async def run(args: argparse.Namespace) -> None:
    if args.command == "binding":
        client = await RendezvousClient(args.server, Ed25519PrivateKey.generate()).open()
        try:
            print("my address as the server sees it:", await client.binding())
        finally:
            client.close()
        return
    client = await RendezvousClient(args.server, load_key(args.key), nickname=args.name).open()
    try:
        registration = await client.register()
        observed = f"{registration.observed[0]}:{registration.observed[1]}"
        if args.command == "register":
            print(f"my id: {registration.peer_id} (seen as {observed})")
        elif args.command == "list":
            for entry in await client.list_all():
                if entry.peer_id != registration.peer_id:
                    print(f"{entry.peer_id:>6}  {entry.nickname or '-':<20} key {entry.public_key.hex()[:16]}...")
        elif args.command == "connect":
            info = await client.connect(args.peer)
            print(f"peer {info.peer_id} ({info.nickname or 'no name'}) key {info.public_key.hex()[:16]}...")
            for candidate in info.candidates:
                print(f"  {candidate.kind.name.lower():<8} {candidate.address[0]}:{candidate.address[1]}")
        if args.command != "register" or not args.stay:
            await client.unregister()
    finally:
        client.close()


def add_options(parser: argparse.ArgumentParser, *, sub: bool) -> None:
    """On the tool and on each command, so options work on either side of
    the command's name (a command's copies have no defaults, so they do not
    undo what came before it)."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if sub else value

    parser.add_argument(
        "--server", type=parse_server, default=default(("127.0.0.1", 3478)), help="HOST:PORT (default 127.0.0.1:3478)"
    )
    parser.add_argument(
        "--key",
        type=Path,
        default=default(default_key_path()),
        help="the operator's Ed25519 key file (created if missing, mode 0600; default %(default)s)",
    )
    parser.add_argument("--name", default=default("operator"), help="nickname to register with (default operator)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rendezvous.tool", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_options(parser, sub=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        child = sub.add_parser(name, help=help, description=help)
        add_options(child, sub=True)
        return child

    command("binding", "plain STUN Binding: print my address as the server sees it")
    command("list", "the online peers (id, name, key)")
    connect = command("connect", "peer N's key and candidate addresses (tells N about the tool, too)")
    connect.add_argument("peer", type=int)
    register = command("register", "register the operator's key and print its id")
    register.add_argument("--stay", action="store_true", help="do not unregister on exit (expires after the TTL)")
    stats_cmd = sub.add_parser("stats", help="what the registry file holds (sends nothing)")
    stats_cmd.add_argument("--db", type=Path, required=True, help="the server's --db file")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "stats":
        print("\n".join(stats(args.db, time.time())))
        return
    try:
        asyncio.run(run(args))
    except (RendezvousError, TransactionTimeout) as error:
        raise SystemExit(f"rendezvous: {error}") from None


if __name__ == "__main__":
    main()
