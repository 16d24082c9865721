"""``rendezvous --metrics HOST:PORT``: the server's metrics in the Prometheus
text format at ``http://HOST:PORT/metrics``, through prometheus_client.

Most families come from the core's ``stats`` counter, which the core keeps
anyway: :class:`ServerCollector` turns it into families when scraped, so a
request costs the hot path nothing more.  What the core cannot count is
measured here and observed into prometheus_client's own metrics, all on one
:class:`~prometheus_client.CollectorRegistry` per server (never the global
default one): Redis command latency and errors (:class:`RedisMetrics`, which
the Redis registry reports to) and the event loop's lag
(:class:`LoopLagMonitor`).

Families (all prefixed ``peerlink_``):

- ``requests_total{method}`` (counter), ``requests_per_second{method}`` (gauge,
  over the last :data:`RATE_WINDOW` seconds)
- ``replies_total{method,result}`` (counter): replies sent; ``result`` is
  ``success`` or the error code (``401``, ``429``...)
- ``error_replies_total{code}`` (counter): error replies, by code
- ``registrations_total`` (counter): REGISTERs that got an id
- ``peers_online`` (gauge): peers registered with this instance;
  ``peers_listed`` (gauge): those plus the other instances' (mirrors)
- ``relay_packets_total``, ``relay_bytes_total`` (counters): SENDs relayed;
  ``relay_forwarded_total`` of them to another instance;
  ``relay_from_instances_total``: DATA other instances handed us to send on
- ``drops_total{reason}`` (counter): datagrams dropped, by reason
- ``server_events_total{name}`` (counter): every other counter of the core
- ``redis_command_duration_seconds{op}`` (histogram): each Redis round trip
  (a command, script call or pipeline), by what it was for
- ``redis_errors_total{op,kind}`` (counter): failed Redis calls, by what they
  were for and the exception's class
- ``redis_connected`` (gauge): 1 while the last Redis call succeeded
- ``event_loop_lag_seconds`` (histogram) and ``event_loop_lag_last_seconds``
  (gauge): how late a timer set every :data:`LAG_EVERY` seconds ran
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from .core import ServerCore

logger = logging.getLogger("rendezvous")

PREFIX = "peerlink_"
CONTENT_TYPE = CONTENT_TYPE_LATEST
METHODS = ("binding", "register", "refresh", "list", "connect", "watch")
RATE_WINDOW = 10.0  # seconds the request rate is averaged over
SAMPLE_EVERY = 1.0  # the request rate's sampling period
LAG_EVERY = 0.5  # the loop-lag timer's period: cheap, and fine enough to see a stall
# Redis round trips take ~0.1 ms on one host, milliseconds across hosts, and
# up to the socket timeout (1 s) when Redis is in trouble.
REDIS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Counters with a family of their own (not repeated under server_events_total).
_NAMED = {
    "registered": ("registrations", "REGISTER requests that got an id"),
    "relayed_packets": ("relay_packets", "SEND indications relayed"),
    "relayed_bytes": ("relay_bytes", "payload bytes relayed"),
    "relay_forwarded": ("relay_forwarded", "relayed datagrams forwarded to the peer's home instance"),
    "relayed_from_instances": (
        "relay_from_instances",
        "relayed datagrams other instances handed us to send on",
    ),
}
# The core's own bookkeeping for the replies family (rendezvous/core.py, _send_reply).
_REPLY_PREFIX = "replied: "
_GENERIC = {"binding": "binding_generic", "refresh": "refresh_generic"}
_HIDDEN = frozenset({"dropped", *_GENERIC.values()})


def replies(stats: Mapping[str, int]) -> dict[tuple[str, str], int]:
    """Replies sent, by (method, result), from the core's counters.

    The generic path counts each reply it sends (``replied: METHOD RESULT``);
    the fast paths for Binding and REFRESH count nothing more than the request
    (``binding``, ``refresh``) and always answer with success, so their
    replies are the requests that did not take the generic path."""
    out: dict[tuple[str, str], int] = {}
    for key, value in stats.items():
        if key.startswith(_REPLY_PREFIX):
            method, _, result = key.removeprefix(_REPLY_PREFIX).partition(" ")
            out[(method, result)] = value
    for method, generic in _GENERIC.items():
        fast = stats.get(method, 0) - stats.get(generic, 0)
        if fast > 0:
            out[(method, "success")] = out.get((method, "success"), 0) + fast
    return out


def server_families(
    stats: Mapping[str, int],
    *,
    peers_online: int,
    peers_listed: int,
    rates: Mapping[str, float],
) -> list[Metric]:
    """The core's counters as metric families (pure: tested without a server)."""
    out: list[Metric] = []
    requests = CounterMetricFamily(PREFIX + "requests", "requests received, by method", labels=["method"])
    for method in METHODS:
        requests.add_metric([method], stats.get(method, 0))
    out.append(requests)
    rate = GaugeMetricFamily(
        PREFIX + "requests_per_second",
        f"requests per second over the last {int(RATE_WINDOW)} s, by method",
        labels=["method"],
    )
    for method in METHODS:
        rate.add_metric([method], round(rates.get(method, 0.0), 3))
    out.append(rate)
    replied = CounterMetricFamily(
        PREFIX + "replies",
        "replies sent, by method and result (success or the error code)",
        labels=["method", "result"],
    )
    for (method, result), value in sorted(replies(stats).items()):
        replied.add_metric([method, result], value)
    out.append(replied)
    errors = CounterMetricFamily(PREFIX + "error_replies", "error responses sent, by code", labels=["code"])
    for key, value in sorted(stats.items()):
        if key.startswith("error "):
            errors.add_metric([key.removeprefix("error ")], value)
    out.append(errors)
    for key, (name, help_text) in _NAMED.items():
        out.append(CounterMetricFamily(PREFIX + name, help_text, value=stats.get(key, 0)))
    out.append(GaugeMetricFamily(PREFIX + "peers_online", "peers registered with this instance", value=peers_online))
    out.append(
        GaugeMetricFamily(PREFIX + "peers_listed", "peers listed here: ours and other instances'", value=peers_listed)
    )
    drops = CounterMetricFamily(PREFIX + "drops", "datagrams dropped, by reason", labels=["reason"])
    for key, value in sorted(stats.items()):
        if key.startswith("dropped: "):
            drops.add_metric([key.removeprefix("dropped: ")], value)
    out.append(drops)
    others = CounterMetricFamily(PREFIX + "server_events", "the server's other counters, by name", labels=["name"])
    for key, value in sorted(stats.items()):
        if not (
            key in _NAMED or key in METHODS or key in _HIDDEN or key.startswith(("dropped: ", "error ", _REPLY_PREFIX))
        ):
            others.add_metric([key], value)
    out.append(others)
    return out


class ServerCollector(Collector):
    """The core's families, read from it at each scrape (nothing while it starts)."""

    def __init__(self, core: Callable[[], ServerCore | None], rates: Callable[[], Mapping[str, float]]) -> None:
        self._core = core
        self._rates = rates

    def collect(self) -> Iterable[Metric]:
        core = self._core()
        if core is None:
            return []
        directory = core.directory
        return server_families(
            core.stats, peers_online=directory.local_count(), peers_listed=len(directory), rates=self._rates()
        )


class RedisMetrics:
    """What the Redis registry reports (``observer`` of
    :class:`rendezvous.redis_registry.RedisRegistry`): each round trip's
    duration, each failure, and whether Redis is reachable."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._duration = Histogram(
            PREFIX + "redis_command_duration_seconds",
            "Redis round trips (command, script call or pipeline), by what they were for",
            ["op"],
            buckets=REDIS_BUCKETS,
            registry=registry,
        )
        self._errors = Counter(
            PREFIX + "redis_errors",
            "failed Redis calls, by what they were for and the exception's class",
            ["op", "kind"],
            registry=registry,
        )
        self._connected = Gauge(
            PREFIX + "redis_connected", "1 while Redis answers, 0 after a failed call", registry=registry
        )

    def command(self, op: str, seconds: float) -> None:
        self._duration.labels(op).observe(seconds)

    def failed(self, op: str, error: BaseException) -> None:
        self._errors.labels(op, type(error).__name__).inc()

    def connected(self, up: bool) -> None:
        self._connected.set(1 if up else 0)


class LoopLagMonitor:
    """How late the event loop runs a timer: a stall (a long synchronous
    step) shows as a lag about as long.  One ``call_later`` every
    :data:`LAG_EVERY` seconds; nothing else."""

    def __init__(self, registry: CollectorRegistry, every: float = LAG_EVERY) -> None:
        self.every = every
        self._lag = Histogram(
            PREFIX + "event_loop_lag_seconds",
            f"how late a timer set every {every} s ran",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self._last = Gauge(
            PREFIX + "event_loop_lag_last_seconds", "how late the last loop-lag timer ran", registry=registry
        )
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._due = loop.time() + self.every
        self._handle = loop.call_at(self._due, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        lag = max(0.0, now - self._due)
        if math.isfinite(lag):
            self._lag.observe(lag)
            self._last.set(lag)
        # From now, not from the due time: after a stall, one sample, not a burst.
        self._due = now + self.every
        self._handle = loop.call_at(self._due, self._tick)


class ServerMetrics:
    """Every metric of one server, on a registry of its own."""

    def __init__(self, core: Callable[[], ServerCore | None]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._core = core
        self._samples: deque[tuple[float, dict[str, int]]] = deque()
        self.registry.register(ServerCollector(core, self.rates))
        self.redis = RedisMetrics(self.registry)
        self.loop_lag = LoopLagMonitor(self.registry)

    def sample(self, now: float) -> None:
        """Note the request counters at ``now`` (every :data:`SAMPLE_EVERY` s) for the rates."""
        core = self._core()
        if core is None:
            return
        self._samples.append((now, {m: core.stats.get(m, 0) for m in METHODS}))
        while self._samples and self._samples[0][0] < now - RATE_WINDOW:
            self._samples.popleft()

    def rates(self) -> dict[str, float]:
        if len(self._samples) < 2:
            return {}
        (t0, first), (t1, last) = self._samples[0], self._samples[-1]
        return {m: (last[m] - first[m]) / (t1 - t0) for m in METHODS} if t1 > t0 else {}

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsEndpoint:
    """``GET /metrics`` on HOST:PORT for the core ``core()`` returns (None until started)."""

    def __init__(self, core: Callable[[], ServerCore | None], host: str, port: int) -> None:
        self._core = core
        self.metrics = ServerMetrics(core)
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None
        self._sampler: asyncio.Task[None] | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sockets = self._runner.addresses
        if sockets:
            self.port = int(sockets[0][1])
        self._sampler = asyncio.create_task(self._sample())
        self.metrics.loop_lag.start()
        logger.info("Metrics on http://%s:%d/metrics", self.host, self.port)

    async def stop(self) -> None:
        self.metrics.loop_lag.stop()
        if self._sampler is not None:
            self._sampler.cancel()
            await asyncio.gather(self._sampler, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()

    async def _sample(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SAMPLE_EVERY)
            self.metrics.sample(loop.time())

    async def _serve(self, request: web.Request) -> web.Response:
        if self._core() is None:
            return web.Response(status=503, text="starting\n")
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})
