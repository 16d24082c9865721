"""``rendezvous --metrics HOST:PORT``: the server's counters in the Prometheus
text format (version 0.0.4) at ``http://HOST:PORT/metrics``.

Everything comes from the core's ``stats`` counter (which the core keeps
anyway) and its directory, read when scraped; the one thing sampled is the
request rate by method over the last :data:`RATE_WINDOW` seconds, and the
event loop's lag, by a once-a-second timer.  :func:`render` is pure, so its
output is tested byte for byte; :class:`MetricsEndpoint` is the aiohttp site.

Families (all prefixed ``peerlink_``):

- ``requests_total{method}`` (counter), ``requests_per_second{method}`` (gauge)
- ``registrations_total`` (counter): REGISTERs that got an id
- ``peers_online`` (gauge): peers registered with this instance;
  ``peers_listed`` (gauge): those plus the other instances' (mirrors)
- ``relay_packets_total``, ``relay_bytes_total`` (counters): SENDs relayed;
  ``relay_forwarded_total`` of them to another instance;
  ``relay_from_instances_total``: DATA other instances handed us to send on
- ``drops_total{reason}`` (counter): datagrams dropped, by reason
- ``error_replies_total{code}`` (counter): error responses, by code
- ``event_loop_lag_seconds`` (gauge)
- ``server_events_total{name}`` (counter): every other counter of the core
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Mapping

from aiohttp import web

from .core import ServerCore

logger = logging.getLogger("rendezvous")

PREFIX = "peerlink_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
METHODS = ("binding", "register", "refresh", "list", "connect", "watch")
RATE_WINDOW = 10.0  # seconds the request rate is averaged over
SAMPLE_EVERY = 1.0
# Counters with a family of their own (not repeated under server_events_total).
_NAMED = {
    "registered": ("registrations_total", "REGISTER requests that got an id"),
    "relayed_packets": ("relay_packets_total", "SEND indications relayed"),
    "relayed_bytes": ("relay_bytes_total", "payload bytes relayed"),
    "relay_forwarded": ("relay_forwarded_total", "relayed datagrams forwarded to the peer's home instance"),
    "relayed_from_instances": (
        "relay_from_instances_total",
        "relayed datagrams other instances handed us to send on",
    ),
}


def _label(value: str) -> str:
    """A label value as the text format wants it: backslash, quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def render(
    stats: Mapping[str, int],
    *,
    peers_online: int,
    peers_listed: int,
    rates: Mapping[str, float],
    loop_lag: float,
) -> str:
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {PREFIX}{name} {help_text}")
        lines.append(f"# TYPE {PREFIX}{name} {kind}")
        lines.extend(f"{PREFIX}{name}{labels} {_number(value)}" for labels, value in samples)

    family(
        "requests_total",
        "counter",
        "requests received, by method",
        [(f'{{method="{m}"}}', stats.get(m, 0)) for m in METHODS],
    )
    family(
        "requests_per_second",
        "gauge",
        f"requests per second over the last {int(RATE_WINDOW)} s, by method",
        [(f'{{method="{m}"}}', round(rates.get(m, 0.0), 3)) for m in METHODS],
    )
    for key, (name, help_text) in _NAMED.items():
        family(name, "counter", help_text, [("", stats.get(key, 0))])
    family("peers_online", "gauge", "peers registered with this instance", [("", peers_online)])
    family("peers_listed", "gauge", "peers listed here: ours and other instances'", [("", peers_listed)])
    drops = sorted((k.removeprefix("dropped: "), v) for k, v in stats.items() if k.startswith("dropped: "))
    family(
        "drops_total", "counter", "datagrams dropped, by reason", [(f'{{reason="{_label(r)}"}}', v) for r, v in drops]
    )
    errors = sorted((k.removeprefix("error "), v) for k, v in stats.items() if k.startswith("error "))
    family(
        "error_replies_total",
        "counter",
        "error responses sent, by code",
        [(f'{{code="{_label(c)}"}}', v) for c, v in errors],
    )
    family(
        "event_loop_lag_seconds", "gauge", "how late the once-a-second sampling timer ran", [("", round(loop_lag, 6))]
    )
    others = sorted(
        (k, v)
        for k, v in stats.items()
        if k not in _NAMED and k not in METHODS and k != "dropped" and not k.startswith(("dropped: ", "error "))
    )
    family(
        "server_events_total",
        "counter",
        "the server's other counters, by name",
        [(f'{{name="{_label(k)}"}}', v) for k, v in others],
    )
    return "\n".join(lines) + "\n"


class MetricsEndpoint:
    """``GET /metrics`` on HOST:PORT for the core ``core()`` returns (None until started)."""

    def __init__(self, core: Callable[[], ServerCore | None], host: str, port: int) -> None:
        self._core = core
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None
        self._sampler: asyncio.Task[None] | None = None
        self._samples: deque[tuple[float, dict[str, int]]] = deque()
        self._lag = 0.0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sockets = self._runner.addresses
        if sockets:
            self.port = int(sockets[0][1])
        self._sampler = asyncio.create_task(self._sample())
        logger.info("Metrics on http://%s:%d/metrics", self.host, self.port)

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            await asyncio.gather(self._sampler, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()

    async def _sample(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(SAMPLE_EVERY)
            now = loop.time()
            self._lag = max(0.0, now - before - SAMPLE_EVERY)
            core = self._core()
            if core is None:
                continue
            self._samples.append((now, {m: core.stats.get(m, 0) for m in METHODS}))
            while self._samples and self._samples[0][0] < now - RATE_WINDOW:
                self._samples.popleft()

    def _rates(self) -> dict[str, float]:
        if len(self._samples) < 2:
            return {}
        (t0, first), (t1, last) = self._samples[0], self._samples[-1]
        return {m: (last[m] - first[m]) / (t1 - t0) for m in METHODS} if t1 > t0 else {}

    async def _metrics(self, request: web.Request) -> web.Response:
        core = self._core()
        if core is None:
            return web.Response(status=503, text="starting\n")
        directory = core.directory
        text = render(
            core.stats,
            peers_online=directory.local_count(),
            peers_listed=len(directory),
            rates=self._rates(),
            loop_lag=self._lag,
        )
        return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})
