"""The page's websocket: live events out, sends in.  This module owns the
socket's protocol below, the order of its answers and its flow control; the
fields of a request are checked by webpeer/validate.py, and every refusal is
an :class:`~webpeer.api.ApiError` that becomes an "error" event.

Websocket protocol (JSON text frames, one object each):

    <- {"type": "hello", "me": <me>, "peers": [<peer>, ...]}     first, once
    <- every event of PeerApi.subscribe() as is (message, status, peers, connection, me)
    <- {"type": "batch", "events": [<event>, ...]}   several events (and answers) that were
       ready at once, in order: the same as receiving each one on its own
    -> {"type": "send", "to": N, "text": "...", "client_id": "..."}
    <- {"type": "sent", "client_id": "...", "message": <message>}   once the message is stored;
       this socket gets no "message" event for it (other sockets do)
    -> {"type": "retry", "id": "...", "client_id": "..."}         answered like send
    -> {"type": "cancel", "id": "...", "client_id": "..."}
    <- {"type": "cancelled", "client_id": "...", "message": <message>}   now failed, error "cancelled"
    -> {"type": "read", "peer": N}                                 no answer on success
    <- {"type": "error", "client_id": "..."|null, "status": int, "error": "..."}
       for any request that fails (bad JSON, unknown type, too large, ApiError)

``client_id`` is optional everywhere (a string of at most 128 characters) and
only echoed back, so the page can match answers to what it sent.  Answers
come in the order of the requests.  Sends that arrive together are stored in
one commit (PeerApi.submit_message), and each ``sent`` answer goes after it.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import weakref

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from webpeer import validate
from webpeer.api import JSON, MAX_TEXT_BYTES, ApiError, PeerApi
from webpeer.parse import loads

log = logging.getLogger(__name__)

WS_MAX_MESSAGE_BYTES = 80 * 1024
"""Largest websocket message we process; a larger one is answered with an error event."""
WS_HARD_LIMIT_BYTES = 1024 * 1024
"""aiohttp's max_msg_size: above it aiohttp closes the socket (1009) before we see the message."""
WS_HEARTBEAT_SECONDS = 15.0
WS_BATCH_BYTES = 256 * 1024
"""A batch event larger than this is split (one event alone may be larger)."""
REQUESTS_PER_TURN = 100
"""Websocket requests handled before the handler lets the rest of the loop run."""
MAX_UNANSWERED = 1000
"""A socket's answers not yet written; at this many its handler stops reading requests."""
MAX_CLIENT_ID_CHARS = 128


async def serve(
    request: web.Request, api: PeerApi, sockets: weakref.WeakSet[web.WebSocketResponse]
) -> web.WebSocketResponse:
    """One page's websocket, until it closes."""
    ws = web.WebSocketResponse(heartbeat=WS_HEARTBEAT_SECONDS, max_msg_size=WS_HARD_LIMIT_BYTES)
    await ws.prepare(request)
    sockets.add(ws)
    # Subscribe before the snapshot, so nothing between the two is lost.
    queue = api.subscribe()
    answers = _Answers(queue)
    forwarder: asyncio.Task[None] | None = None
    closing: list[asyncio.Task[bool]] = []  # held here so the close is not garbage collected
    try:
        await ws.send_str(json.dumps({"type": "hello", "me": api.me(), "peers": api.peers_json()}))
        forwarder = asyncio.create_task(_forward(queue, answers, ws))
        # A writer that died (the socket broke under a send, or a bug) must
        # end the subscription now: the reader below may wait for a frame
        # that never comes, and shutdown would then wait for it too.
        forwarder.add_done_callback(lambda task: closing.extend(_writer_ended(task, api, queue, ws)))
        handled = 0
        async for msg in ws:
            # Frames already received come back from the loop above without
            # a loop turn in between, so the sends among them share one commit.
            if msg.type == WSMsgType.TEXT:
                await _ws_request(api, msg.data, answers)
            elif msg.type == WSMsgType.BINARY:
                answers.add(None, _ws_error(None, 400, "binary messages are not supported; send JSON text"))
            else:  # ERROR: aiohttp has closed the socket already
                break
            handled += 1
            if handled % REQUESTS_PER_TURN == 0:
                # Let the commit and the writer run, so a long burst does not
                # pile up more events than the queue holds.
                await asyncio.sleep(0)
            while answers.backlog >= MAX_UNANSWERED:
                # A page that sends but does not read: stop reading it too.
                await answers.taken()
    except ConnectionError:
        pass  # the browser went away mid-send
    finally:
        if forwarder is not None:
            forwarder.cancel()
        api.unsubscribe(queue)
        sockets.discard(ws)
        for task in closing:
            await asyncio.gather(task, return_exceptions=True)
    return ws


def _writer_ended(
    task: asyncio.Task[None], api: PeerApi, queue: asyncio.Queue[JSON], ws: web.WebSocketResponse
) -> list[asyncio.Task[bool]]:
    """Ends the subscription of a socket whose writer stopped; the socket's close, if started."""
    if task.cancelled():
        return []  # the reader ended first and stopped the writer
    if (error := task.exception()) is not None:
        log.error("a websocket writer failed; closing that socket", exc_info=error)
    api.unsubscribe(queue)
    if not ws.closed:
        # Wakes the reader (its receive() gets a closing message), so the
        # handler returns without waiting for the page.
        return [asyncio.get_running_loop().create_task(ws.close(code=WSCloseCode.GOING_AWAY, message=b"writer failed"))]
    return []


# Put in a socket's event queue to wake its writer for answers (never sent).
_WAKE: JSON = {"type": "wake"}


class _Answers:
    """One socket's answers, in the order of its requests: a send's answer
    waits for the commit that stores the message, and the answers to later
    requests wait behind it.  They are kept out of the event queue, whose
    backlog is dropped when the page falls behind (it gets "resync"): an
    answer is never dropped."""

    def __init__(self, queue: asyncio.Queue[JSON]) -> None:
        self.queue = queue
        self._waiting: collections.deque[tuple[str | None, asyncio.Future[JSON] | JSON]] = collections.deque()
        self._ready: list[JSON] = []
        self._taken = asyncio.Event()

    @property
    def backlog(self) -> int:
        """Answers not yet taken by the writer (ready or waiting for a commit)."""
        return len(self._waiting) + len(self._ready)

    def add(self, client_id: str | None, answer: asyncio.Future[JSON] | JSON) -> None:
        """``answer``: the reply itself, or a future of the sent message."""
        self._waiting.append((client_id, answer))
        if len(self._waiting) == 1:
            self._release()

    def take(self) -> list[JSON]:
        """The answers ready to go, in order (for the writer)."""
        ready, self._ready = self._ready, []
        self._taken.set()
        return ready

    async def taken(self) -> None:
        """Returns when the writer next takes answers."""
        self._taken.clear()
        await self._taken.wait()

    def _release(self, _: object = None) -> None:
        released = False
        while self._waiting:
            client_id, answer = self._waiting[0]
            if isinstance(answer, asyncio.Future):
                if not answer.done():
                    # Only the first waits with a callback: the ones behind it
                    # (usually stored by the same commit) go when it goes.
                    answer.add_done_callback(self._release)
                    break
                answer = _sent_answer(client_id, answer)
            self._waiting.popleft()
            self._ready.append(answer)
            released = True
        if released:
            try:
                self.queue.put_nowait(_WAKE)
            except asyncio.QueueFull:
                pass  # the writer has plenty to wake it


def _sent_answer(client_id: str | None, future: asyncio.Future[JSON]) -> JSON:
    if future.cancelled():
        return _ws_error(client_id, 500, "the send was cancelled")
    error = future.exception()
    if error is None:
        return {"type": "sent", "client_id": client_id, "message": future.result()}
    if isinstance(error, ApiError):
        return _ws_error(client_id, error.status, error.message)
    log.error("unexpected error storing a message", exc_info=error)
    return _ws_error(client_id, 500, "internal error in webpeer (see its log)")


async def _forward(queue: asyncio.Queue[JSON], answers: _Answers, ws: web.WebSocketResponse) -> None:
    """Pushes the answers and the api's events to one socket until it
    closes: everything there is by the time it runs goes as one frame.
    Answers go first: the events now queued may be about a message whose
    answer is among them (a status from the same commit, or a receipt
    already), and the page knows the message only from its answer."""
    while True:
        first = await queue.get()
        events = answers.take()
        if first is not _WAKE:
            events.append(first)
        while not queue.empty():
            if (event := queue.get_nowait()) is not _WAKE:
                events.append(event)
        if not events:
            continue
        for data in _frames(events):
            try:
                await ws.send_str(data)
            except ConnectionError:
                return


def _frames(events: list[JSON]) -> list[str]:
    """The websocket texts for ``events``: one event as itself, several as
    ``{"type": "batch", "events": [...]}``, split in halves until each is at
    most WS_BATCH_BYTES (or one event).  One frame and one JSON encoding for
    all of them: per event, those cost more than the event itself."""
    try:
        # orjson: a sixth of json.dumps's time for a batch (bench/WEBPEER.md).
        text = orjson.dumps(events[0] if len(events) == 1 else {"type": "batch", "events": events}).decode()
    except (TypeError, ValueError):  # orjson.JSONEncodeError is a TypeError
        if len(events) == 1:
            log.exception("dropping an event that is not JSON: %r", events[0])
            return []
        return [frame for event in events for frame in _frames([event])]
    if len(text) <= WS_BATCH_BYTES or len(events) == 1:
        return [text]
    half = len(events) // 2
    return _frames(events[:half]) + _frames(events[half:])


def _ws_error(client_id: str | None, status: int, message: str) -> JSON:
    return {"type": "error", "client_id": client_id, "status": status, "error": message}


async def _ws_request(api: PeerApi, data: str, answers: _Answers) -> None:
    """One client request; its answer (if any) goes to ``answers``."""
    if len(data) > WS_MAX_MESSAGE_BYTES or len(data.encode("utf-8", "surrogatepass")) > WS_MAX_MESSAGE_BYTES:
        answers.add(
            None,
            _ws_error(
                None,
                413,
                f"websocket message larger than {WS_MAX_MESSAGE_BYTES} bytes (a message text may have {MAX_TEXT_BYTES} bytes)",
            ),
        )
        return
    client_id: str | None = None
    try:
        request = loads(data)
        raw_id = request.get("client_id")
        if raw_id is not None:
            if not isinstance(raw_id, str) or len(raw_id) > MAX_CLIENT_ID_CHARS:
                raise ApiError(400, f"client_id must be a string of at most {MAX_CLIENT_ID_CHARS} characters")
            client_id = raw_id
        kind = request.get("type")
        if kind == "send":
            # Not awaited: the next frames are read (and stored in the same
            # commit) while this one waits for it.
            # The answer carries the stored message: this socket is not sent
            # its "message" event too.
            to = validate.peer_id(request.get("to"), "to")
            text = validate.message_text(request.get("text"))
            future = api.submit_message(to, text, answered_on=answers.queue)
            answers.add(client_id, future)
            return
        if kind == "retry":
            message = await api.retry(validate.message_id(request.get("id")))
            answers.add(client_id, {"type": "sent", "client_id": client_id, "message": message})
            return
        if kind == "cancel":
            message = await api.cancel(validate.message_id(request.get("id")))
            answers.add(client_id, {"type": "cancelled", "client_id": client_id, "message": message})
            return
        if kind == "read":
            api.mark_read(validate.peer_id(request.get("peer"), "peer"))
            return
        raise ApiError(400, f"unknown request type {repr(kind)[:40]}; expected send, retry, cancel or read")
    except ApiError as exc:
        answers.add(client_id, _ws_error(client_id, exc.status, exc.message))
    except Exception:
        # Keep the socket (and the page's live view) alive across a bug in the peer.
        log.exception("unexpected error handling a websocket request")
        answers.add(client_id, _ws_error(client_id, 500, "internal error in webpeer (see its log)"))


async def close_all(sockets: weakref.WeakSet[web.WebSocketResponse]) -> None:
    """Close every page's socket (on shutdown: browsers would otherwise wait for a timeout)."""
    for ws in list(sockets):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"webpeer is shutting down")
