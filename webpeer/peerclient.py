"""One interface to a peer for the terminal and the script commands,
whether the peer runs in this process or in another one.

``webpeer chat`` and ``webpeer send``/``id``/``peers``/``history``/``listen``
either run the peer themselves (the data dir was free: :class:`LocalPeer`
adapts the in-process :class:`webpeer.api.PeerApi`) or attach to the
``webpeer`` that holds the data dir's lock (:class:`HttpPeer`: its JSON API
and websocket on 127.0.0.1, with the token it left in the data dir).  Both
are a :class:`PeerClient`, so the terminal UI and the commands have one code
path; they see the same JSON shapes and events as the page (README, "JSON
API").
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Protocol

import aiohttp

from .api import JSON, ApiError, PeerApi


class EventStream(Protocol):
    """The peer's events from the moment of subscribing: first
    ``{"type": "hello", "me", "peers"}``, then the page's events one by one
    (batches already unpacked)."""

    async def next(self) -> JSON: ...

    async def close(self) -> None: ...


class PeerClient(Protocol):
    """PeerApi's reading and sending, all awaitable (one of the two is a
    network client), and the events as a stream."""

    @property
    def attached(self) -> bool:
        """True when the peer runs in another process (closing us leaves it running)."""
        ...

    async def me(self) -> JSON: ...

    async def peers(self) -> list[JSON]: ...

    async def messages(self, peer_id: int, limit: int = 500) -> list[JSON]: ...

    async def send(self, to: int, text: str) -> JSON:
        """The stored message; ApiError when the peer refuses it."""
        ...

    async def subscribe(self) -> EventStream: ...


# ------------------------------------------------------------ in this process


class _QueueStream:
    def __init__(self, api: PeerApi, queue: asyncio.Queue[JSON]) -> None:
        self._api = api
        self._queue = queue
        # The websocket's first frame, so both kinds of stream start alike.
        self._hello: JSON | None = {"type": "hello", "me": api.me(), "peers": api.peers_json()}

    async def next(self) -> JSON:
        if self._hello is not None:
            hello, self._hello = self._hello, None
            return hello
        return await self._queue.get()

    async def close(self) -> None:
        self._api.unsubscribe(self._queue)


class LocalPeer:
    """The in-process peer (a started webpeer.node.PeerNode) as a PeerClient."""

    attached = False

    def __init__(self, api: PeerApi) -> None:
        self._api = api

    async def me(self) -> JSON:
        return self._api.me()

    async def peers(self) -> list[JSON]:
        await self._api.refresh_directory()  # a LIST shows the server's list of now
        return self._api.peers_json()

    async def messages(self, peer_id: int, limit: int = 500) -> list[JSON]:
        return self._api.messages(peer_id, limit)

    async def send(self, to: int, text: str) -> JSON:
        return await self._api.send_message(to, text)

    async def subscribe(self) -> EventStream:
        return _QueueStream(self._api, self._api.subscribe())


# ------------------------------------------------------------ in another process


class _SocketStream:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._pending: list[JSON] = []

    async def next(self) -> JSON:
        while not self._pending:
            frame = await self._ws.receive()
            if frame.type != aiohttp.WSMsgType.TEXT:
                raise ApiError(502, "the webpeer closed its websocket (it stopped?)")
            event = json.loads(frame.data)
            # Events that were ready together come as one batch frame.
            self._pending = list(event["events"]) if event.get("type") == "batch" else [event]
        return self._pending.pop(0)

    async def close(self) -> None:
        await self._ws.close()


class HttpPeer:
    """A webpeer running in another process, through its page's API."""

    attached = True

    def __init__(self, port: int, token: str) -> None:
        self.base = f"http://127.0.0.1:{port}"
        # The Bearer header is what the site accepts from scripts (no cookie, no same-site page).
        self._headers = {"Authorization": f"Bearer {token}", "Origin": self.base}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HttpPeer:
        self._session = aiohttp.ClientSession(headers=self._headers)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use HttpPeer in `async with`"
        return self._session

    async def _call(self, method: str, path: str, body: JSON | None = None) -> Any:
        try:
            async with self.session.request(method, self.base + path, json=body) as response:
                answer = await response.json(content_type=None)
                if response.status >= 400:
                    error = answer.get("error") if isinstance(answer, dict) else None
                    raise ApiError(response.status, str(error or f"HTTP {response.status}"))
                return answer
        except (aiohttp.ClientError, json.JSONDecodeError) as error:
            raise ApiError(502, f"the webpeer at {self.base} does not answer ({error})") from None

    async def me(self) -> JSON:
        answer: JSON = await self._call("GET", "/api/me")
        return answer

    async def peers(self) -> list[JSON]:
        answer: list[JSON] = await self._call("GET", "/api/peers")
        return answer

    async def messages(self, peer_id: int, limit: int = 500) -> list[JSON]:
        answer: list[JSON] = await self._call("GET", f"/api/messages?peer={peer_id}&limit={limit}")
        return answer

    async def send(self, to: int, text: str) -> JSON:
        answer: JSON = await self._call("POST", "/api/messages", {"to": to, "text": text})
        return answer

    async def subscribe(self) -> EventStream:
        try:
            ws = await self.session.ws_connect(self.base + "/ws", heartbeat=20)
        except aiohttp.ClientError as error:
            raise ApiError(502, f"the webpeer at {self.base} does not answer ({error})") from None
        return _SocketStream(ws)
