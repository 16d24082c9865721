"""``rendezvous`` command line: every option also reads an environment variable."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import platformdirs

from .events import ServerConfig
from .log_lines import keep_to_one_line
from .server import RendezvousServer


def default_db_path() -> Path:
    return Path(platformdirs.user_data_dir("peerlink")) / "rendezvous.sqlite3"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


LOG_LEVELS = ["debug", "info", "warning", "error"]


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="rendezvous",
        description="peerlink rendezvous: a STUN server (RFC 8489) that also keeps the peer registry, "
        "introduces peers to each other and relays for them when no direct path opens.",
    )
    parser.add_argument(
        "--host",
        default=env("RENDEZVOUS_HOST", "0.0.0.0"),
        help="address to listen on; '::' for IPv6 and IPv4 (env RENDEZVOUS_HOST, default %(default)s)",
    )
    # String defaults go through ``type`` too, so a bad env value is a usage error, not a traceback.
    parser.add_argument(
        "--port",
        type=int,
        default=env("RENDEZVOUS_PORT", "3478"),
        help="UDP port (env RENDEZVOUS_PORT, default %(default)s, the STUN port)",
    )
    parser.add_argument(
        "--db",
        default=env("RENDEZVOUS_DB", str(default_db_path())),
        help="SQLite registry file, created if missing (env RENDEZVOUS_DB, default %(default)s)",
    )
    parser.add_argument(
        "--registry",
        default=env("RENDEZVOUS_REGISTRY"),
        help="redis://HOST:PORT/DB (or rediss://, TLS): keep the registry in Redis, shared by every "
        "instance given the same URL, instead of the --db file; those instances list each other's "
        "peers and forward introductions to each other (env RENDEZVOUS_REGISTRY)",
    )
    parser.add_argument(
        "--ttl",
        type=int,
        default=env("RENDEZVOUS_TTL", "60"),
        help="seconds a peer stays listed without a refresh, when it asks for no TTL of its own "
        "(env RENDEZVOUS_TTL, default %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default=env("RENDEZVOUS_LOG_LEVEL", "info"),
        choices=LOG_LEVELS,
        help="log verbosity (env RENDEZVOUS_LOG_LEVEL, default %(default)s)",
    )
    parser.add_argument(
        "--legacy-text",
        action="store_true",
        default=_env_flag("RENDEZVOUS_LEGACY_TEXT"),
        help="also speak the original course project's plain-text protocol (REGISTER, LIST, "
        "CONNECT:<id>, EXIT) on the same port; unauthenticated, so off by default "
        "(env RENDEZVOUS_LEGACY_TEXT=1)",
    )
    parser.add_argument(
        "--peer-request-rate",
        type=float,
        default=env("RENDEZVOUS_PEER_REQUEST_RATE", "50"),
        help="LIST and CONNECT requests per second allowed per registered peer, with a burst of "
        "twice that (env RENDEZVOUS_PEER_REQUEST_RATE, default %(default)s)",
    )
    parser.add_argument(
        "--other-address",
        type=_address,
        default=env("RENDEZVOUS_OTHER_ADDRESS"),
        help="HOST:PORT of a second socket on another IP address of this host, for RFC 5780 "
        "NAT behaviour discovery (peers learn whether their NAT is symmetric and how it "
        "filters); off when not set (env RENDEZVOUS_OTHER_ADDRESS)",
    )
    parser.add_argument(
        "--max-ids",
        type=int,
        default=int(env("RENDEZVOUS_MAX_IDS", "10000000")),
        help="ids the registry holds at most; a new key past it gets 503 Registry Full "
        "(env RENDEZVOUS_MAX_IDS, default 10000000)",
    )
    parser.add_argument(
        "--id-retention-days",
        type=float,
        default=float(env("RENDEZVOUS_ID_RETENTION_DAYS", "365")),
        help="the id of a key unseen this long is released, for a new key to reuse "
        "(env RENDEZVOUS_ID_RETENTION_DAYS, default 365; 0 keeps ids forever)",
    )
    parser.add_argument(
        "--max-online-per-ip",
        type=int,
        default=int(env("RENDEZVOUS_MAX_ONLINE_PER_IP", "1024")),
        help="keyed peers online at once from one IP address; more get 503 Too Many From Address "
        "(env RENDEZVOUS_MAX_ONLINE_PER_IP, default 1024)",
    )
    parser.add_argument(
        "--no-uvloop",
        action="store_true",
        default=_env_flag("RENDEZVOUS_NO_UVLOOP"),
        help="use the default asyncio loop even when uvloop is installed (env RENDEZVOUS_NO_UVLOOP=1)",
    )
    return parser


async def serve(args: argparse.Namespace) -> None:
    from .registry import Presence, Registry
    from .sqlite_registry import SqliteRegistry

    if not 1 <= args.ttl <= 86400:
        raise SystemExit("rendezvous: --ttl must be between 1 and 86400 seconds")
    if not args.peer_request_rate > 0:
        raise SystemExit("rendezvous: --peer-request-rate must be positive")
    if not args.max_ids >= 1:
        raise SystemExit("rendezvous: --max-ids must be at least 1")
    if not (args.id_retention_days == 0 or 1 <= args.id_retention_days <= 36500):
        raise SystemExit("rendezvous: --id-retention-days must be 0 (forever) or 1 to 36500")
    if not args.max_online_per_ip >= 1:
        raise SystemExit("rendezvous: --max-online-per-ip must be at least 1")
    config = ServerConfig(
        max_online_per_ip=args.max_online_per_ip,
        default_ttl=args.ttl,
        min_ttl=min(10, args.ttl),
        legacy_text=args.legacy_text,
        requests_per_second=args.peer_request_rate,
        requests_burst=2 * args.peer_request_rate,
    )
    registry: Registry
    presence: Presence | None = None
    if args.registry:
        from .redis_registry import RedisRegistry

        registry = presence = RedisRegistry(args.registry, max_ids=args.max_ids)
    else:
        registry = SqliteRegistry(args.db, max_ids=args.max_ids)
    retention = args.id_retention_days * 86400 if args.id_retention_days else None
    server = RendezvousServer(
        config, registry, args.host, args.port, other=args.other_address, presence=presence, id_retention=retention
    )
    await server.start()
    # Everything loaded so far (up to millions of peer records) lives as long
    # as the process: keep the cyclic garbage collector from rescanning it.
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    # argparse checks choices on the command line only, not on a default from the environment.
    if args.log_level.lower() not in LOG_LEVELS:
        parser.error(f"RENDEZVOUS_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, not {args.log_level!r}")
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    keep_to_one_line(logging.getLogger().handlers)
    run = asyncio.run
    if not args.no_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            run = uvloop.run
    from .registry import RegistryError

    try:
        run(serve(args))
    except (OSError, RegistryError) as error:
        raise SystemExit(f"rendezvous: {error}") from None
