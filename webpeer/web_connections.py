"""The local site's TCP connections, bounded (issue 16, finding 11).

Open requests are capped by web.py's middleware, but a connection that sends
no request costs a file descriptor too: 1,100 idle ones made the API
unreachable at a 1,024-fd limit.  Two rules bound them:

- a connection with no request under way for ``idle_timeout`` seconds is
  closed (aiohttp's keep-alive timeout, which also runs from the moment a
  connection is accepted, so one that never sends a request goes as well);
- at most ``max_connections`` are open: a new one past it makes the oldest
  connection with no request under way close; if every one is busy (open
  requests and websockets are capped below this), the new one is closed.

:class:`LocalSite` is aiohttp's TCPSite with the protocol factory wrapped to
apply the cap; :class:`Connections` tracks which connections are busy (the
site's middleware tells it).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

logger = logging.getLogger("webpeer")

MAX_CONNECTIONS = 256
IDLE_TIMEOUT = 30.0


class Connections:
    """Which of the site's connections have a request under way."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._busy: Counter[object] = Counter()
        self.evicted = 0  # idle connections closed to make room (tests, logs)
        self.refused = 0  # new connections closed because every one was busy

    def request_started(self, protocol: object) -> None:
        self._busy[protocol] += 1

    def request_ended(self, protocol: object) -> None:
        self._busy[protocol] -= 1
        if self._busy[protocol] <= 0:
            del self._busy[protocol]

    def make_room(self, open_now: list[RequestHandler]) -> bool:
        """Before a new connection: close the oldest idle one if ``open_now``
        (oldest first) is at the limit.  False: none is idle, refuse the new one."""
        live = [h for h in open_now if h.transport is not None]  # not closed already, awaiting connection_lost
        if len(live) < self.limit:
            return True
        for handler in live:
            if handler not in self._busy:
                handler.force_close()
                self.evicted += 1
                return True
        self.refused += 1
        return False


class LocalSite(web.BaseSite):
    """TCPSite on one host and port, with :class:`Connections`' cap."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, connections: Connections) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._connections = connections

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()

        def protocol() -> RequestHandler:
            admitted = self._connections.make_room(server.connections)
            handler = server()
            if not admitted:
                # It must be returned to be a protocol at all: closed as soon as it is made.
                loop.call_soon(handler.force_close)
                if self._connections.refused == 1 or self._connections.refused % 1000 == 0:
                    logger.warning(
                        "local site: %d connections, all busy: new ones are closed (%d so far)",
                        self._connections.limit,
                        self._connections.refused,
                    )
            return handler

        self._server = await loop.create_server(protocol, self._host, self._port)
