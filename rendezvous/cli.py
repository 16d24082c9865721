"""``rendezvous`` command line: every option also reads an environment variable."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import socket
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


def _worker_index() -> int | None:
    """Which of the ``--workers`` this process is (set by the supervisor), or None."""
    from .workers import WORKER_ENV

    value = os.environ.get(WORKER_ENV, "")
    return int(value) if value.isdigit() else None


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
        help="redis://HOST:PORT/DB (or rediss://, TLS), or redis+cluster://HOST:PORT (a Redis Cluster, "
        "any node): keep the registry in Redis, shared by every "
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
        "--metrics",
        type=_address,
        default=env("RENDEZVOUS_METRICS"),
        help="HOST:PORT to serve Prometheus metrics on (http://HOST:PORT/metrics); with --workers N, "
        "worker i uses PORT+i; off when not set (env RENDEZVOUS_METRICS)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=env("RENDEZVOUS_WORKERS", "1"),
        help="processes serving the one port (SO_REUSEPORT), e.g. one per core; more than one needs "
        "the shared --registry redis://... (env RENDEZVOUS_WORKERS, default %(default)s)",
    )
    parser.add_argument(
        "--max-ids",
        type=int,
        default=env("RENDEZVOUS_MAX_IDS", "10000000"),
        help="ids the registry holds at most; a new key past it gets 503 Registry Full "
        "(env RENDEZVOUS_MAX_IDS, default 10000000)",
    )
    parser.add_argument(
        "--id-retention-days",
        type=float,
        default=env("RENDEZVOUS_ID_RETENTION_DAYS", "365"),
        help="the id of a key unseen this long is released, for a new key to reuse "
        "(env RENDEZVOUS_ID_RETENTION_DAYS, default 365; 0 keeps ids forever)",
    )
    parser.add_argument(
        "--max-online-per-ip",
        type=int,
        default=env("RENDEZVOUS_MAX_ONLINE_PER_IP", "1024"),
        help="keyed peers online at once from one IP address; more get 503 Too Many From Address "
        "(env RENDEZVOUS_MAX_ONLINE_PER_IP, default 1024)",
    )
    parser.add_argument(
        "--no-mailbox",
        action="store_true",
        default=_env_flag("RENDEZVOUS_NO_MAILBOX"),
        help="keep no offline mailbox: DEPOSIT and FETCH get 400 Unknown method (env RENDEZVOUS_NO_MAILBOX=1)",
    )
    parser.add_argument(
        "--mailbox-max-messages",
        type=int,
        default=env("RENDEZVOUS_MAILBOX_MAX_MESSAGES", "200"),
        help="messages waiting at most per recipient, and per sender over all its recipients; a DEPOSIT "
        "past it gets 486 (env RENDEZVOUS_MAILBOX_MAX_MESSAGES, default %(default)s)",
    )
    parser.add_argument(
        "--mailbox-max-kb",
        type=int,
        default=env("RENDEZVOUS_MAILBOX_MAX_KB", "128"),
        help="sealed KiB waiting at most per recipient, and per sender (env RENDEZVOUS_MAILBOX_MAX_KB, "
        "default %(default)s)",
    )
    parser.add_argument(
        "--mailbox-days",
        type=float,
        default=env("RENDEZVOUS_MAILBOX_DAYS", "14"),
        help="a mailbox message not fetched this long is deleted (env RENDEZVOUS_MAILBOX_DAYS, default %(default)s)",
    )
    parser.add_argument(
        "--no-uvloop",
        action="store_true",
        default=_env_flag("RENDEZVOUS_NO_UVLOOP"),
        help="use the default asyncio loop even when uvloop is installed (env RENDEZVOUS_NO_UVLOOP=1)",
    )
    parser.add_argument(
        "--no-fastpath",
        action="store_true",
        default=_env_flag("RENDEZVOUS_NO_FASTPATH"),
        help="answer bare Binding and REFRESH in Python even where the compiled fast path is built "
        "(env RENDEZVOUS_NO_FASTPATH=1); the answers are the same",
    )
    return parser


async def serve(args: argparse.Namespace) -> None:
    from .mailbox import Mailbox, MailLimits
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
    if not (args.mailbox_max_messages >= 1 and args.mailbox_max_kb >= 1 and args.mailbox_days > 0):
        raise SystemExit("rendezvous: --mailbox-max-messages, --mailbox-max-kb and --mailbox-days must be positive")
    mail_limits = (
        None
        if args.no_mailbox
        else MailLimits(
            max_messages=args.mailbox_max_messages,
            max_bytes=args.mailbox_max_kb * 1024,
            sender_max_messages=args.mailbox_max_messages,
            sender_max_bytes=args.mailbox_max_kb * 1024,
            max_age=args.mailbox_days * 86400,
        )
    )
    config = ServerConfig(
        mailbox=mail_limits,
        max_online_per_ip=args.max_online_per_ip,
        default_ttl=args.ttl,
        min_ttl=min(10, args.ttl),
        legacy_text=args.legacy_text,
        requests_per_second=args.peer_request_rate,
        requests_burst=2 * args.peer_request_rate,
    )
    instance = None
    worker_index = _worker_index()
    if worker_index is not None:
        from .workers import die_with_supervisor

        die_with_supervisor()
        instance = f"{socket.gethostname()}:{args.port}/w{worker_index}"
    registry: Registry
    presence: Presence | None = None
    metrics = None
    if args.metrics:
        from .metrics import MetricsEndpoint

        host, port = args.metrics
        # Each worker on a port of its own (README, "Metrics"): PORT, PORT+1...
        metrics = MetricsEndpoint(lambda: server.core, host, port + (worker_index or 0))
    if args.registry:
        from .redis_registry import RedisRegistry

        redis = RedisRegistry(args.registry, max_ids=args.max_ids)
        if metrics is not None:
            redis.observer = metrics.metrics.redis
        registry = presence = redis
        mailbox: Mailbox = redis.mailbox()
    else:
        sqlite = SqliteRegistry(args.db, max_ids=args.max_ids)
        registry = sqlite
        mailbox = sqlite.mailbox()
    retention = args.id_retention_days * 86400 if args.id_retention_days else None
    server = RendezvousServer(
        config,
        registry,
        args.host,
        args.port,
        other=args.other_address,
        presence=presence,
        instance=instance,
        reuse_port=worker_index is not None,
        id_retention=retention,
        mailbox=None if args.no_mailbox else mailbox,
        fast_path=not args.no_fastpath,
    )
    if metrics is not None:
        server.save_observer = metrics.metrics.registry_writes(server.owed_count)
    await server.start()
    if metrics is not None:
        try:
            await metrics.start()
        except OSError:
            await server.stop()
            raise
    # Everything loaded so far (up to millions of peer records) lives as long
    # as the process: keep the cyclic garbage collector from rescanning it.
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if metrics is not None:
        await metrics.stop()
    await server.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    # argparse checks choices on the command line only, not on a default from the environment.
    if args.log_level.lower() not in LOG_LEVELS:
        parser.error(f"RENDEZVOUS_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, not {args.log_level!r}")
    if not 1 <= args.workers <= 1024:
        parser.error("--workers must be between 1 and 1024")
    if args.workers > 1 and not args.registry:
        parser.error(
            "--workers above 1 needs a shared registry (--registry redis://HOST:PORT/DB): "
            "the SQLite file (--db) belongs to one process"
        )
    worker_index = _worker_index()
    worker = "" if worker_index is None else f"w{worker_index} "
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format=f"%(asctime)s {worker}%(levelname)s %(message)s",
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

    if args.workers > 1:
        from .workers import supervise

        own_argv = list(sys.argv[1:] if argv is None else argv)
        try:
            raise SystemExit(run(supervise(own_argv, args.workers, args.host, args.port)))
        except OSError as error:
            raise SystemExit(f"rendezvous: {error}") from None
    try:
        run(serve(args))
    except (OSError, RegistryError) as error:
        raise SystemExit(f"rendezvous: {error}") from None
