"""A small command-line client for poking at a rendezvous server by hand.

    python -m rendezvous.tool --server 127.0.0.1:3478 binding
    python -m rendezvous.tool --server 127.0.0.1:3478 register --name alice
    python -m rendezvous.tool --server 127.0.0.1:3478 list
    python -m rendezvous.tool --server 127.0.0.1:3478 connect 2

Each run uses a fresh key unless --key FILE names one (created if missing,
mode 0600), so that the same key keeps the same id across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
from pathlib import Path

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


def load_key(path: Path | None) -> Ed25519PrivateKey:
    if path is None:
        return Ed25519PrivateKey.generate()
    if path.exists():
        return Ed25519PrivateKey.from_private_bytes(path.read_bytes())
    key = Ed25519PrivateKey.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))
    return key


async def run(args: argparse.Namespace) -> None:
    client = await RendezvousClient(args.server, load_key(args.key), nickname=args.name).open()
    try:
        if args.command == "binding":
            print("my address as the server sees it:", await client.binding())
            return
        registration = await client.register()
        print(f"my id: {registration.peer_id} (seen as {registration.observed[0]}:{registration.observed[1]})")
        if args.command == "list":
            for entry in await client.list_all():
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


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m rendezvous.tool", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--server", type=parse_server, default=("127.0.0.1", 3478), help="HOST:PORT")
    parser.add_argument("--key", type=Path, help="file holding this client's Ed25519 key")
    parser.add_argument("--name", default="", help="nickname to register with")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("binding", help="plain STUN Binding: print my reflexive address")
    register = sub.add_parser("register", help="register and print my id")
    register.add_argument("--stay", action="store_true", help="do not unregister on exit (expires after the TTL)")
    sub.add_parser("list", help="register, then list the online peers")
    connect = sub.add_parser("connect", help="register, then ask for peer N's key and addresses")
    connect.add_argument("peer", type=int)
    args = parser.parse_args()
    try:
        asyncio.run(run(args))
    except (RendezvousError, TransactionTimeout) as error:
        raise SystemExit(f"rendezvous: {error}") from None


if __name__ == "__main__":
    main()
