"""What the UDP benchmark measures: one :class:`Scenario` per server set-up.

A scenario is (name, how to start the server, how to make request templates).
``run_bench.py`` starts the server pinned to one core, waits until it answers a
STUN Binding, asks the scenario for templates, and points the C load generator
at it from the other core, once per :class:`Load` the scenario lists.

Adding a scenario is one entry in :data:`SCENARIOS`.  A template factory gets
the run's :class:`Context`, the server's port and the :class:`Load` (so it can
produce exactly ``load.sockets`` lines when each socket must be a distinct
registered peer), and returns ``[(local_port, request_bytes), ...]``; a
``local_port`` of 0 lets the generator pick an ephemeral port, a non-zero one
makes generator socket *i* bind exactly that port (close your own socket on it
first).  The generator rewrites the 12-byte transaction id of every request and
recomputes a trailing FINGERPRINT, so templates may carry one.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST = 0x0001
ATTR_FINGERPRINT = 0x8028
FINGERPRINT_XOR = 0x5354554E

Template = tuple[int, bytes]
"""``(local_port or 0, raw STUN request)``: one line of the generator's template file."""


@dataclass(frozen=True)
class Load:
    """How hard the generator pushes: sockets x requests outstanding per socket."""

    sockets: int
    window: int

    @property
    def label(self) -> str:
        return f"{self.sockets}x{self.window}"


MAIN_LOAD = Load(32, 2)
"""The load every scenario runs: 64 requests in flight, enough to saturate one
server core without overflowing a default-sized (208 KiB) socket buffer."""

SWEEP_LOADS = (Load(1, 1), Load(8, 4), MAIN_LOAD, Load(64, 2))
"""Used on the echo references to show where the generator, not the server, is the limit."""


@dataclass(frozen=True)
class Context:
    """Where a run lives; handed to every server and template factory."""

    python: Path  # interpreter for Python servers (the project's venv)
    bench_dir: Path
    build_dir: Path  # compiled loadgen and udp_echo
    work_dir: Path  # this run's scratch: logs, templates, databases


ServerFactory = Callable[[Context, int], list[str]]
"""``(ctx, port) -> argv`` of a server that listens on 127.0.0.1:port in the foreground."""

TemplateFactory = Callable[[Context, int, Load], list[Template]]
"""``(ctx, port, load) -> templates``; called after the server answers, once per load."""

Requirement = Callable[[Context], str | None]
"""``ctx -> None`` when the scenario can run here, else the reason it is skipped."""

Expect = Literal["success", "echo"]


def always(ctx: Context) -> str | None:
    """No requirement."""
    return None


@dataclass(frozen=True)
class Scenario:
    """One server set-up under one or more loads."""

    name: str
    server: ServerFactory
    templates: TemplateFactory
    loads: tuple[Load, ...] = (MAIN_LOAD,)
    # What a correct reply looks like: a STUN success response, or the request
    # itself coming back.  Anything else is flagged in the results table.
    expect: Expect = "success"
    requires: Requirement = always
    notes: str = field(default="", compare=False)


# ---- requirements ----------------------------------------------------------


def need_binary(name: str) -> Requirement:
    """Skip unless ``name`` is on PATH."""

    def check(ctx: Context) -> str | None:
        return None if shutil.which(name) else f"{name} not installed"

    return check


def need_env(name: str) -> Requirement:
    """Skip unless the environment variable ``name`` is set."""

    def check(ctx: Context) -> str | None:
        return None if os.environ.get(name) else f"{name} not set"

    return check


def need_module(name: str) -> Requirement:
    """Skip unless the benchmark interpreter can import ``name``."""

    def check(ctx: Context) -> str | None:
        probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec(sys.argv[1]) is None)"
        try:
            found = subprocess.run([str(ctx.python), "-c", probe, name], capture_output=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"cannot probe for {name}: {exc}"
        return None if found.returncode == 0 else f"{name} not importable by {ctx.python}"

    return check


# ---- requests --------------------------------------------------------------


def stun_request(method: int, attributes: bytes = b"", *, fingerprint: bool = True) -> bytes:
    """A STUN request with a zero transaction id (the generator fills it in).

    ``attributes`` must already be padded TLVs; FINGERPRINT is appended last
    when asked for, with its CRC computed (the generator recomputes it anyway).
    """
    length = len(attributes) + (8 if fingerprint else 0)
    message = struct.pack("!HHI12s", method, length, MAGIC_COOKIE, bytes(12)) + attributes
    if fingerprint:
        crc = zlib.crc32(message) ^ FINGERPRINT_XOR
        message += struct.pack("!HHI", ATTR_FINGERPRINT, 4, crc)
    return message


def binding_templates(ctx: Context, port: int, load: Load, *, fingerprint: bool = True) -> list[Template]:
    """One RFC 8489 Binding request shared by every socket, from ephemeral ports."""
    return [(0, stun_request(BINDING_REQUEST, fingerprint=fingerprint))]


# ---- servers ---------------------------------------------------------------


def c_echo_server(ctx: Context, port: int) -> list[str]:
    """bench/udp_echo.c: what one core turns around with no protocol work."""
    return [str(ctx.build_dir / "udp_echo"), "--host", "127.0.0.1", "--port", str(port)]


def coturn_server(ctx: Context, port: int) -> list[str]:
    """coturn as a plain STUN server: no TURN, no TCP/TLS, no CLI, no auth db in /var."""
    return [
        "turnserver",
        "--stun-only",
        "--listening-ip", "127.0.0.1",
        "--listening-port", str(port),
        # 0 = coturn's single-threaded mode: one thread handles every packet,
        # like the Python servers.  (-m 1 adds a relay thread beside the
        # listener; on one pinned core it measured the same or worse.)
        "--relay-threads", "0",
        "--no-cli",
        "--no-tcp", "--no-tls", "--no-dtls",
        "--log-file", "stdout", "--simple-log",
        "--pidfile", str(ctx.work_dir / f"coturn-{port}.pid"),
        "--userdb", str(ctx.work_dir / f"coturn-{port}.sqlite3"),
    ]  # fmt: skip


def python_echo_server(loop: str, recv_size: int | None, ctx: Context, port: int) -> list[str]:
    """bench/echo_server.py on the given event loop."""
    argv = [str(ctx.python), str(ctx.bench_dir / "echo_server.py"), "--port", str(port), "--loop", loop]
    if recv_size is not None:
        argv += ["--recv-size", str(recv_size)]
    return argv


def peerlink_server(ctx: Context, port: int, *extra: str) -> list[str]:
    """The project's rendezvous server with a fresh SQLite registry for this run."""
    db = ctx.work_dir / f"rendezvous-{port}.sqlite3"
    return [
        str(ctx.python), "-m", "rendezvous",
        "--host", "127.0.0.1", "--port", str(port),
        "--db", str(db),
        "--log-level", "warning",
        *extra,
    ]  # fmt: skip


def peerlink_server_unlimited(ctx: Context, port: int) -> list[str]:
    """The rendezvous server with the per-peer LIST/CONNECT limit lifted, so that
    what is measured is the work and not the 429 answers."""
    return peerlink_server(ctx, port, "--peer-request-rate", "1000000000")


def peerlink_templates(method: str, ctx: Context, port: int, load: Load) -> list[Template]:
    """Register ``load.sockets`` peers (bench/peerlink_templates.py) and return one
    ``method`` request per peer, to be sent from that peer's own port."""
    out = subprocess.run(
        [str(ctx.python), str(ctx.bench_dir / "peerlink_templates.py"), str(port), str(load.sockets), method],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    templates = []
    for line in out.split("\n"):
        if line.strip():
            local_port, hex_request = line.split()
            templates.append((int(local_port), bytes.fromhex(hex_request)))
    return templates


# A Redis the bench may use (started by hand: bench/README.md, "REFRESH on Redis vs SQLite").
BENCH_REDIS = "PEERLINK_BENCH_REDIS"


def peerlink_server_redis(ctx: Context, port: int) -> list[str]:
    """The rendezvous server with its registry in the Redis named by PEERLINK_BENCH_REDIS
    (write-behind of refreshes: one pipeline every 2 s, and a PUBLISH of the batch)."""
    return peerlink_server(ctx, port, "--registry", os.environ[BENCH_REDIS])


def peerlink_server_redis_workers(ctx: Context, port: int) -> list[str]:
    """The same Redis-backed server as two ``--workers`` on one port (SO_REUSEPORT).
    Pinned like every server to one core, so the two share it: what is
    measured is whether a reply costs more CPU with two workers, not the
    scaling (the other core is the generator's)."""
    return peerlink_server(ctx, port, "--registry", os.environ[BENCH_REDIS], "--workers", "2")


def peerlink_server_python_path(ctx: Context, port: int) -> list[str]:
    """The same server with its compiled fast path off (rendezvous/_fastpath.c)."""
    return peerlink_server(ctx, port, "--no-fastpath")


def peerlink_server_default_loop(ctx: Context, port: int) -> list[str]:
    """The rendezvous server on asyncio's default loop (its own small-buffer UDP reader)."""
    return peerlink_server(ctx, port, "--no-uvloop")


need_peerlink = need_module("rendezvous.__main__")


# ---- the list --------------------------------------------------------------

SCENARIOS: list[Scenario] = [
    Scenario(
        "C echo (udp_echo.c)",
        c_echo_server,
        binding_templates,
        loads=SWEEP_LOADS,
        expect="echo",
        notes="ceiling: kernel loopback cost only; shows the generator's headroom",
    ),
    Scenario(
        "coturn Binding",
        coturn_server,
        binding_templates,
        requires=need_binary("turnserver"),
        notes="coturn --stun-only, single-threaded",
    ),
    Scenario(
        "asyncio echo, default loop",
        partial(python_echo_server, "asyncio", None),
        binding_templates,
        expect="echo",
        notes="recvfrom(256 KiB) per datagram",
    ),
    Scenario(
        "asyncio echo, default loop, 2 KiB recv",
        partial(python_echo_server, "asyncio", 2048),
        binding_templates,
        expect="echo",
        notes="transport.max_size = 2048",
    ),
    Scenario(
        "asyncio echo, uvloop",
        partial(python_echo_server, "uvloop", None),
        binding_templates,
        loads=SWEEP_LOADS,
        expect="echo",
        requires=need_module("uvloop"),
    ),
    Scenario(
        "peerlink Binding",
        peerlink_server,
        binding_templates,
        requires=need_peerlink,
        notes="python -m rendezvous (uvloop; compiled fast path)",
    ),
    Scenario(
        "peerlink Binding, Python path",
        peerlink_server_python_path,
        binding_templates,
        requires=need_peerlink,
        notes="--no-fastpath",
    ),
    Scenario(
        "peerlink Binding, default loop",
        peerlink_server_default_loop,
        binding_templates,
        requires=need_peerlink,
        notes="--no-uvloop",
    ),
    Scenario(
        "peerlink REFRESH",
        peerlink_server,
        partial(peerlink_templates, "refresh"),
        requires=need_peerlink,
        notes="SESSION check (memoised), TTL update in memory; idempotent, so no reply cache",
    ),
    Scenario(
        "peerlink REFRESH, Python path",
        peerlink_server_python_path,
        partial(peerlink_templates, "refresh"),
        requires=need_peerlink,
        notes="--no-fastpath",
    ),
    Scenario(
        "peerlink REFRESH, Redis registry",
        peerlink_server_redis,
        partial(peerlink_templates, "refresh"),
        requires=need_env(BENCH_REDIS),
        notes="--registry redis://... (PEERLINK_BENCH_REDIS): refreshes written behind in one pipeline per 2 s",
    ),
    Scenario(
        "peerlink Binding, Redis registry",
        peerlink_server_redis,
        binding_templates,
        requires=need_env(BENCH_REDIS),
        loads=(Load(4, 1), MAIN_LOAD),
        notes="--registry redis://... (PEERLINK_BENCH_REDIS), one worker",
    ),
    Scenario(
        "peerlink Binding, --workers 2",
        peerlink_server_redis_workers,
        binding_templates,
        requires=need_env(BENCH_REDIS),
        loads=(Load(4, 1), MAIN_LOAD),
        notes="--registry redis://... --workers 2, both workers on the server's one core; CPU of both",
    ),
    Scenario(
        "peerlink REFRESH, --workers 2",
        peerlink_server_redis_workers,
        partial(peerlink_templates, "refresh"),
        requires=need_env(BENCH_REDIS),
        notes="--registry redis://... --workers 2, both workers on the server's one core; CPU of both",
    ),
    Scenario(
        "peerlink LIST (one page of 20)",
        peerlink_server_unlimited,
        partial(peerlink_templates, "list"),
        requires=need_peerlink,
        notes="--peer-request-rate lifted",
    ),
    Scenario(
        "peerlink CONNECT",
        peerlink_server_unlimited,
        partial(peerlink_templates, "connect"),
        requires=need_peerlink,
        notes="reply + an INTRODUCE to the target (one per pair outstanding); --peer-request-rate lifted",
    ),
]


def by_name(pattern: str | None) -> list[Scenario]:
    """The scenarios whose name contains ``pattern`` (case-insensitive; several
    patterns separated by commas: any of them), all if None."""
    if not pattern:
        return list(SCENARIOS)
    wanted = [p.strip().lower() for p in pattern.split(",") if p.strip()]
    return [s for s in SCENARIOS if any(p in s.name.lower() for p in wanted)]


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def template_lines(templates: list[Template]) -> str:
    """The generator's template file text."""
    return "".join(f"{port} {data.hex()}\n" for port, data in templates)


__all__ = [
    "MAIN_LOAD",
    "SCENARIOS",
    "SWEEP_LOADS",
    "Context",
    "Load",
    "Scenario",
    "Template",
    "binding_templates",
    "by_name",
    "free_udp_port",
    "need_binary",
    "need_module",
    "need_peerlink",
    "peerlink_server",
    "peerlink_server_default_loop",
    "stun_request",
    "template_lines",
]
