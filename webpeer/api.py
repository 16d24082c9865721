"""The contract between the web layer and the peer: what the page can ask and
what it is told, and :class:`ApiError`, the one error type for a request the
peer refuses (webpeer/validate.py holds the checks of texts and ids that
raise it).  The web layer (webpeer/web.py) only talks to a
:class:`PeerApi`; the real one is webpeer.node.PeerNode, and unit tests of
the web layer use a small in-memory fake.

JSON shapes (also documented in the README):

    me:       {"id": int|null, "name": str, "fingerprint": str, "public_address": "host:port"|null,
               "server": "host:port" (as given), "server_address": "host:port" (the address in use),
               "registered": bool, "server_state": "connecting"|"unreachable"|"registered", "nat": {...}}
              (an IPv6 host is written in brackets: "[::1]:3478")
    peer:     {"id": int, "name": str, "fingerprint": str, "online": bool, "unread": int,
               "trust": "trusted"|"changed"|"blocked", "key_changed": bool (trust == "changed"),
               "verified": bool, "verified_key_changed": bool (a verified key was replaced: warn louder),
               "connection": null | {"state": "connecting"|"direct"|"relayed", "address": "host:port"|"[v6]:port"|null,
                              "family": "IPv4"|"IPv6" (only with an address)},
               "last_message": null | {"id", "from", "time", "text" (its first 120 characters)},
               "nickname": str|null (the user's own name for it, stored locally),
               "read_up_to": null | {"id", "time"} (the latest of our messages it has read:
                             every one of ours up to that time is read),
               "last_seen": float|null (unix seconds: when its key last reached us),
               "auto_accept_bytes": int (its file offers up to this size are accepted
                             without asking; 0: each waits for the user)}
    settings: {"read_receipts": bool (tell peers what we read; default true)}
    message:  {"id": str, "peer": int, "from": int, "to": int, "text": str,
               "status": "queued"|"sending"|"sent"|"delivered"|"failed"|"held"|"received",
               "time": float (unix seconds), "error": str|null,
               "key_changed": bool (received from a new key before the user accepted it)}
    file:     {"id": str (32 hex), "peer": int, "direction": "in"|"out", "name": str, "size": int,
               "sha256": str, "mime": str, "status": "offered"|"accepted"|"paused"|"complete"|"failed"|"cancelled",
               "bytes": int (received, or sent and acknowledged), "error": str|null, "time": float}
    safety:   {"peer": int, "safety_number": "12 groups of 5 digits", "my_fingerprint": str,
               "their_fingerprint": str (the key the registry gives now),
               "previous_fingerprint": str|null (while changed: the trusted key),
               "trust", "key_changed", "verified", "verified_key_changed" (as in peer)}

Messages to a peer whose key changed are "held" (error "key changed") until
the user accepts the new key (then they go on) or blocks it (they fail, "key
blocked"); messages from the new key are not listed until it is accepted
(webpeer/trust.py).

    group:    {"id": str (64 hex), "name": str, "members": [int], "admins": [int], "member": bool (we are one),
               "created_by": int, "created": float}
    group message: {"id": "<sender>:<seq>", "group": str, "from": int, "seq": int, "text": str,
               "time": float (the writer's clock), "delivered_to": [int] (members that reported it)}
    group change: {"kind": "create"|"add"|"remove"|"promote"|"leave"|"rename", "by": int, "members": [int],
               "target": int | None, "name": str | None, "time": float, "applied": bool}

History paging: GET /api/messages?peer=N[&limit=K][&before=ID | &after=ID]
answers [<message>, ...] oldest first: without before/after the latest K
(PeerApi.messages), else the K just before or after message ID
(PeerApi.messages_page).

Events pushed to every websocket (each a dict with "type"):

    {"type": "message", "message": <message>}        a new incoming or outgoing message
    {"type": "status", "id": str, "status": str, "error": str|null}
    {"type": "peers", "peers": [<peer>, ...]}        the peer list changed
    {"type": "connection", "peer": int, "connection": <connection or null>}
    {"type": "me", "me": <me>}                       registration state changed
    {"type": "read-up-to", "peer": int, "id": str, "time": float}
                                                     the peer has read our messages up to this one
    {"type": "trust", "peer": int, "trust": str, "verified": bool, "verified_key_changed": bool}
                                                     a peer's key changed or came back, or was
                                                     accepted, blocked, verified, unverified
                                                     (reload its conversation: accepted messages
                                                     appear)
    {"type": "file", "kind": "offer"|"accepted"|"progress"|"complete"|"failed"|"cancelled",
     "file": <file>[, "bytes": int, "rate": float (bytes/s; progress only, at most ~10/s a file)]}
    {"type": "group", "group": <group>, "change": null | {"kind", "by", "members", "target", "name",
              "time", "applied"}}                    a group appeared or changed (the op, as a line)
    {"type": "message", "message": <group message>}  a group message (its "group" is set)
    {"type": "group_delivery", "group": str, "id": "<me>:<seq>", "delivered_to": [int]}
                                                     members that have our messages up to that one
    {"type": "resync"}                               this subscriber fell behind and its backlog
                                                     was dropped: reload me, peers and the open
                                                     conversation
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

JSON = dict[str, Any]

MAX_TEXT_BYTES = 64 * 1024


class ApiError(Exception):
    """A request the peer refuses, with an HTTP-ish status for the web layer.

    Raised by the peer and by the web layer's own checks alike; web.py turns
    it into ``{"error": message}`` with that status, websocket.py into an
    "error" event.  ``message`` is for the user: say what was wrong and,
    for a limit, what the limit is."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class PeerApi(Protocol):
    """What the web layer may call on the peer (webpeer.node.PeerNode)."""

    def me(self) -> JSON: ...

    def peers_json(self) -> list[JSON]:
        """Every known peer, as <peer> shapes."""
        ...

    def messages(self, peer_id: int, limit: int = 500) -> list[JSON]:
        """The latest ``limit`` messages with the peer, oldest first."""
        ...

    def messages_page(
        self, peer_id: int, limit: int, *, before: str | None = None, after: str | None = None
    ) -> list[JSON]:
        """History paging: up to ``limit`` messages just before the message
        ``before`` (or just after ``after``; exactly one is given), oldest
        first, in the order :meth:`messages` lists them (time, then storage
        order), so paging back from the oldest one shown meets every message
        once.  An empty list: nothing further that way.  ApiError(404) if the
        message is not in this conversation."""
        ...

    async def send_message(self, to: int, text: str) -> JSON:
        """Store and start sending; returns the stored message (status queued,
        sending, or sent if a connection was ready).  Raises ApiError for
        input webpeer.validate refuses (400; 413 for a text over
        MAX_TEXT_BYTES), ApiError(404, "unknown peer N") for an id the server
        never gave out (asked before storing, for an id not known yet), 400
        for our own id, 503 if this peer never registered (it has no id).
        Before registration (with an id from an earlier one) it is queued."""
        ...

    def submit_message(
        self, to: int, text: str, *, answered_on: asyncio.Queue[JSON] | None = None
    ) -> asyncio.Future[JSON]:
        """send_message without waiting: raises ApiError at once for bad
        input; the future gets the stored message once it is committed (or an
        ApiError).  Messages submitted in one loop turn share one commit.
        ``answered_on``: a queue from subscribe() whose reader gets the
        message as the answer, and so is not sent its "message" event."""
        ...

    async def retry(self, message_id: str) -> JSON:
        """Send a failed message again; ApiError(404) if unknown, (409) if not failed."""
        ...

    async def cancel(self, message_id: str) -> JSON:
        """Take back an outgoing message that is queued or sending: it becomes
        failed, error "cancelled", and is never sent by itself afterwards.
        ApiError(404) if unknown (or not ours), (409) for any other status
        (a sent one may have arrived)."""
        ...

    def mark_read(self, peer_id: int) -> None:
        """The user has read the conversation: its unread count drops to 0
        and, unless read receipts are off, the peer is told."""
        ...

    async def add_contact(self, peer_id: int) -> JSON:
        """Put an id on the peer list; returns its <peer>.  ApiError 400 for
        our own id, 404 for an id the server never gave out."""
        ...

    def set_nickname(self, peer_id: int, nickname: str | None) -> None:
        """The user's own name for a peer (None: forget it); a "peers" event follows."""
        ...

    def set_auto_accept(self, peer_id: int, max_bytes: int) -> None:
        """Accept the peer's file offers of at most ``max_bytes`` without
        asking (0: ask for each); a "peers" event follows."""
        ...

    def settings(self) -> JSON:
        """The <settings>."""
        ...

    def search(self, words: list[str], peer_id: int | None, limit: int) -> list[JSON]:
        """The latest ``limit`` messages (with ``peer_id``, or anyone) having
        every one of ``words`` as the start of a word, newest first."""
        ...

    def set_settings(self, changes: JSON) -> JSON:
        """Change some settings (checked by webpeer.validate.settings_change); returns the <settings>."""
        ...

    def safety(self, peer_id: int) -> JSON:
        """The <safety> of a peer; ApiError(404) if no key is known for it."""
        ...

    async def set_trust(self, peer_id: int, action: str) -> JSON:
        """``action``: "accept" | "block" | "verify" | "unverify" (checked by
        webpeer.validate.trust_action); returns the new <safety>.  ApiError
        404 for a peer with no known key, 409 for an action that does not
        apply (accept with no change pending, block of a blocked key, verify
        of a blocked key)."""
        ...

    async def refresh_directory(self) -> None:
        """Ask the server who is online now (the peer list is then fresh)."""
        ...

    # Files (webpeer/file_transfer.py; the <file> shape is FileRecord.to_json in webpeer/store.py).

    async def send_file(self, to: int, name: str, mime: str, chunks: AsyncIterator[bytes]) -> JSON:
        """Copy an upload into files/ and offer it; the stored <file>.
        ApiError 413 past --max-file-size, 400 for a bad id or name."""
        ...

    async def accept_file(self, file_id: str) -> JSON:
        """ApiError 404 unknown, 409 not an offer waiting for us."""
        ...

    async def cancel_file(self, file_id: str) -> JSON:
        """ApiError 404 unknown, 409 finished already."""
        ...

    async def retry_file(self, file_id: str) -> JSON:
        """Go on with a file paused by the receiver's full disk.  ApiError
        404 unknown, 409 not paused."""
        ...

    def files(self, peer_id: int | None = None, limit: int = 500) -> list[JSON]: ...

    def file_download(self, file_id: str) -> tuple[Path, JSON]:
        """Where a file is and its <file>: one we sent, or one received
        complete; ApiError 404 otherwise."""

    # Groups (webpeer/groups.py; docs/PROTOCOL.md 11.7).  Group ids are
    # checked by webpeer.validate.group_id; an unknown one is ApiError(404).

    def groups(self) -> list[JSON]:
        """Every group we are or were a member of, as <group> shapes."""
        ...

    async def create_group(self, name: str, members: list[int]) -> JSON:
        """A new group with us as its admin; ApiError 400 for a bad name, 409
        for a member whose key we do not know yet."""
        ...

    def group_messages(
        self, group_id: str, limit: int = 500, *, before: str | None = None, after: str | None = None
    ) -> list[JSON]:
        """The latest ``limit`` delivered messages of the group, oldest first; or
        the ``limit`` just before / after message ``before`` / ``after`` (404 if
        it is not one of the group's)."""
        ...

    def group_changes(self, group_id: str) -> list[JSON]:
        """Every membership change of the group, oldest first (as a "group"
        event's ``change``)."""
        ...

    async def send_group_message(self, group_id: str, text: str) -> JSON:
        """Our next message in the group (ApiError 403 if we are not a member)."""
        ...

    async def change_group(self, group_id: str, action: str, *, members: tuple[int, ...] = (), target: int = 0) -> JSON:
        """``action``: "add" (``members``), "remove" (``target``), "leave";
        returns the <group>.  ApiError 403 if we may not."""
        ...

    def subscribe(self) -> asyncio.Queue[JSON]:
        """A queue that receives every event from now on (bounded: a consumer
        that falls far behind loses its backlog and gets a "resync" event)."""
        ...

    def unsubscribe(self, queue: asyncio.Queue[JSON]) -> None: ...
