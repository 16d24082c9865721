"""``rendezvous --workers N``: N processes serving one UDP port.

Each worker is an ordinary ``rendezvous`` process (``python -m rendezvous``
with the same options) that binds the port with ``SO_REUSEPORT``; the kernel
hashes each client's address to one of them, so a peer keeps talking to the
same worker and every reply leaves from the one shared address and port.  The
workers are instances sharing one Redis registry (each named
``HOST:PORT/wI``), so they list each other's peers and forward introductions
and relayed datagrams to each other exactly as separate hosts do.

This supervisor only starts them, forwards SIGINT/SIGTERM, and stops the
rest when one exits (a half-served port is worse than a clean exit a service
manager restarts).  Workers ask the kernel to send them SIGTERM when the
supervisor dies, even by SIGKILL, so no worker outlives it.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence

logger = logging.getLogger("rendezvous")

# How long stopped workers get to write their last records before SIGKILL.
STOP_SECONDS = 15.0
# Environment variable carrying the supervisor's pid to its workers.
SUPERVISOR_ENV = "RENDEZVOUS_SUPERVISOR_PID"
# And the worker's index (0 .. N-1): its instance name and log prefix.
WORKER_ENV = "RENDEZVOUS_WORKER_INDEX"
_PR_SET_PDEATHSIG = 1


def pick_port(host: str, port: int) -> int:
    """Port 0 means "any free port": chosen once here, so that every worker binds the same one."""
    if port:
        return port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def worker_argv(argv: Sequence[str], port: int) -> list[str]:
    """The worker's command line: the supervisor's own options, later ones overriding."""
    return [sys.executable, "-m", "rendezvous", *argv, "--workers", "1", "--port", str(port)]


def die_with_supervisor() -> None:
    """In a worker: SIGTERM when the supervisor exits (Linux), and exit now if it is already gone."""
    supervisor = os.environ.get(SUPERVISOR_ENV)
    if supervisor is None or not supervisor.isdigit():
        return
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != int(supervisor):
        raise SystemExit("rendezvous: worker's supervisor is gone")


async def supervise(argv: Sequence[str], workers: int, host: str, port: int) -> int:
    """Run ``workers`` worker processes until a signal or one of them exits; their exit status."""
    port = pick_port(host, port)
    env = dict(os.environ, **{SUPERVISOR_ENV: str(os.getpid())})
    children: list[asyncio.subprocess.Process] = []
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        for index in range(workers):
            child = await asyncio.create_subprocess_exec(
                *worker_argv(argv, port), stdin=asyncio.subprocess.DEVNULL, env=dict(env, **{WORKER_ENV: str(index)})
            )
            children.append(child)
        logger.info("Supervising %d workers on port %d: pids %s", workers, port, " ".join(str(c.pid) for c in children))
        waits = [asyncio.ensure_future(child.wait()) for child in children]
        stop = asyncio.ensure_future(stopping.wait())
        done, _ = await asyncio.wait([stop, *waits], return_when=asyncio.FIRST_COMPLETED)
        status = 0
        if stop not in done:
            exited = next(c for c, w in zip(children, waits, strict=True) if w in done)
            status = exited.returncode or 1
            logger.error("worker %d exited with status %s: stopping the others", exited.pid, exited.returncode)
        stop.cancel()
    finally:
        await _stop_all(children)
    return status


async def _stop_all(children: list[asyncio.subprocess.Process]) -> None:
    for child in children:
        if child.returncode is None:
            try:
                child.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    waits = [child.wait() for child in children]
    try:
        await asyncio.wait_for(asyncio.gather(*waits), STOP_SECONDS)
    except TimeoutError:
        for child in children:
            if child.returncode is None:
                logger.warning("worker %d did not stop in %.0f s: killed", child.pid, STOP_SECONDS)
                child.kill()
        await asyncio.gather(*(child.wait() for child in children))
