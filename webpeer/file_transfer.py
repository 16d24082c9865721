"""Files between two peers over their QUIC link (pure; docs/PROTOCOL.md 11.6).

    sender                                          receiver
    -> file_offer {id, name, size, sha256, mime}    stored "offered" (or refused:
                                                    <- file_cancel {id, reason, failed: true})
                                                    the user accepts; the file is created
                                                    under a safe, unused name in files/
    <- file_accept {id, offset}                     offset: the bytes it already holds
    one-way stream: id (16 bytes) | offset (8) | the file from offset to its end
                                                    writes at offset; at the end the
                                                    SHA-256 of the whole file is checked
    <- file_done {id}                               (or file_cancel {id, reason, failed: true})
    <- file_pause {id, reason}                      the receiver's disk is full: what it
                                                    wrote stays; it asks again (file_accept
                                                    from the bytes it holds) on the next
                                                    link, or when the user says Retry
    either side, any time: file_cancel {id, reason}

Every control frame but file_pause leaves only once the history's commit
holds what it announces (like message_flow.py's acks): a file_done must
never reach the sender while the receiver could still restart without the
file being complete in its history.  file_pause goes at once: it
announces that nothing was stored, and a full disk may hold up commits.

Resuming needs nothing extra: when a link to the peer becomes ready, the
sender offers its unfinished files again and the receiver asks again for
those it accepted, each from the bytes it holds (what a killed receiver
wrote is on disk).  Answers to a repeated frame are idempotent: an offer of
a file already complete is answered ``file_done``, of a cancelled one
``file_cancel``, and an accept repeating the running stream's offset
starts nothing new.

:class:`FileTransfers` owns the transfers.  It reads and writes files only
through :class:`FileStorage` (webpeer/file_store.py in the real peer; by
offset, a chunk at a time: no file is ever held in memory) and the history
through :class:`FileHistory`; the engine reaches it through its methods
and it reaches the engine only through :class:`FileContext`.  The sender
tops a stream up only while QUIC holds less than :data:`SEND_BUFFER`
bytes of it unacknowledged, so QUIC's flow and congestion control pace it.
"""

from __future__ import annotations

import enum
import errno
import hashlib
import logging
import re
import secrets
import struct
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol

from .api import ApiError
from .events import FileChanged, PageEvent
from .link import LinkState, PeerLink, StreamReceived
from .peer_session import PeerSession
from .store import FileRecord
from .wire import Frame, FrameError, require

logger = logging.getLogger("webpeer")

OFFER, ACCEPT, DONE, CANCEL, PAUSE = "file_offer", "file_accept", "file_done", "file_cancel", "file_pause"
DISK_FULL = "the receiver's disk is full"
# Write errors that pause a transfer rather than fail it: space may come back.
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
FILE_ID_BYTES = 16
HEADER = struct.Struct("!16sQ")  # a data stream's header: file id, offset
MAX_NAME_CHARS = 255  # an offered name longer than this is refused
STORED_NAME_BYTES = 180  # a stored name is cut to this (room for " (999)" and any file system)
MAX_MIME_CHARS = 127
MAX_REASON_CHARS = 200
MAX_FILE_SIZE = 4 * 1024**3  # the default of --max-file-size
MAX_OFFERS_PER_PEER = 256  # unanswered offers one peer may have with us; more are refused
CHUNK = 64 * 1024  # one read from the sender's file
SEND_BUFFER = 2 * 1024 * 1024  # unacknowledged bytes per stream before we stop topping it up
PROGRESS_INTERVAL = 0.1  # at most ~10 progress events a second per transfer
SAVE_INTERVAL = 1.0  # the receiver's progress is written to the history this often
DEFAULT_MIME = "application/octet-stream"
_HEX_ID = re.compile(r"[0-9a-f]{32}")
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
_MIME = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}")
# Characters no stored name keeps: path separators, and those Windows refuses
# (a data dir may be copied there).
_UNSAFE = re.compile(r'[/\\<>:"|?*]')


class FileStatus(enum.StrEnum):
    OFFERED = "offered"  # sender: waiting for the accept; receiver: waiting for the user
    ACCEPTED = "accepted"  # moving
    PAUSED = "paused"  # the receiver's disk was full: resumes on the next link or a Retry
    COMPLETE = "complete"  # receiver: hash checked; sender: the receiver said so
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE = (FileStatus.OFFERED, FileStatus.ACCEPTED, FileStatus.PAUSED)


def sanitize_name(name: str) -> str:
    """A name a peer offered, made safe to store: no path separators, no
    ``..`` or leading dots, no control or format characters, bounded in
    UTF-8 bytes (the extension kept), never empty.  (Not overwriting an
    existing file is FileStorage.create's job.)"""
    name = unicodedata.normalize("NFC", name)
    kept = "".join("_" if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") else c for c in name)
    kept = _UNSAFE.sub("_", kept)
    while ".." in kept:
        kept = kept.replace("..", "_")
    kept = kept.strip(" .")
    if not kept:
        return "file"
    if len(kept.encode()) > STORED_NAME_BYTES:
        stem, dot, ext = kept.rpartition(".")
        if not dot or len(ext.encode()) > 16:
            stem, ext = kept, ""
        room = STORED_NAME_BYTES - len(ext.encode()) - (1 if ext else 0)
        stem = stem.encode()[:room].decode(errors="ignore").rstrip(" .") or "file"
        kept = f"{stem}.{ext}" if ext else stem
    return kept


class FileStorage(Protocol):
    """The data dir's files/ (webpeer/file_store.py).  Names are the ones
    :meth:`create` gave; every method may raise OSError."""

    def create(self, name: str) -> str:
        """A new empty file named after ``name`` (sanitised), never an
        existing one; returns the name it got."""

    def size(self, path: str) -> int: ...

    def read(self, path: str, offset: int, length: int) -> bytes: ...

    def write(self, path: str, offset: int, data: bytes) -> None: ...

    def sha256(self, path: str) -> str:
        """The hex SHA-256 of the whole file."""

    def release(self, path: str) -> None:
        """Done with the file for now (its handle may close)."""


class FileHistory(Protocol):
    def add_file(self, record: FileRecord) -> bool: ...

    def update_file(self, record: FileRecord) -> None: ...

    def get_file(self, file_id: str) -> FileRecord | None: ...

    def active_files(self) -> list[FileRecord]: ...

    def auto_accept(self, peer_id: int) -> int:
        """The size up to which the peer's offers are accepted without the user (0: none)."""


class FileContext(Protocol):
    """What the file transfers may ask of the engine."""

    def session(self, peer_id: int) -> PeerSession: ...

    def connect(self, session: PeerSession, now: float) -> bool: ...

    def publish(self, event: PageEvent) -> None: ...

    def hides_from(self, link: PeerLink) -> bool:
        """The link's key is not the one the user trusts for its peer, and
        the user has not decided yet (webpeer/trust.py): no file goes to it
        or comes from it."""


@dataclass(slots=True)
class _Sending:
    """A stream of ours carrying a file from ``start``; ``position``: the next byte to read."""

    link: PeerLink
    stream_id: int
    start: int
    position: int


@dataclass(slots=True)
class _Receiving:
    """One of the other side's data streams; ``file_id`` None until the header is in,
    "" once the stream is ignored."""

    header: bytearray
    file_id: str | None = None
    position: int = 0


@dataclass(slots=True)
class _Progress:
    at: float = 0.0  # last progress event
    bytes: int = 0  # at that event
    saved_at: float = 0.0


class FileTransfers:
    def __init__(
        self,
        context: FileContext,
        history: FileHistory,
        storage: FileStorage,
        stats: Counter[str],
        max_size: int = MAX_FILE_SIZE,
    ) -> None:
        self.context = context
        self.history = history
        self.storage = storage
        self.stats = stats
        self.max_size = max_size
        self._active: dict[str, FileRecord] = {}  # offered or accepted, by id
        self._sending: dict[str, _Sending] = {}  # by file id
        self._receiving: dict[tuple[PeerLink, int], _Receiving] = {}
        self._progress: dict[str, _Progress] = {}
        # The receiver hashes as it writes (the bytes come in order), so the
        # check at the end reads nothing again: a hash of a 4 GiB file in
        # one go would block the loop for seconds.  id -> (hash, bytes in it).
        self._hashes: dict[str, tuple[Any, int]] = {}
        # Frames that leave once the commit holds what they announce, and the
        # records written in this transaction (written again by the next one
        # if it rolls back: what was decided here stands).
        self._after_commit: dict[PeerLink, list[Frame]] = {}
        self._written: dict[str, FileRecord] = {}
        self._unsaved: dict[str, FileRecord] = {}

    # ------------------------------------------------------------ the page's requests

    def start(self) -> None:
        """Load the unfinished files: a receiver holds what it wrote before a
        restart (or a kill), and asks for the rest."""
        for record in self.history.active_files():
            if not record.outgoing and record.status in (FileStatus.ACCEPTED, FileStatus.PAUSED):
                try:
                    record.done = min(self.storage.size(record.path), record.size)
                except OSError:
                    record.done = 0
            self._active[record.id] = record

    def offer(self, to: int, name: str, path: str, size: int, sha256: str, mime: str, now: float) -> FileRecord:
        """A file the user sends (already in files/ as ``path``)."""
        record = FileRecord(
            secrets.token_hex(FILE_ID_BYTES), to, True, name, path, size, sha256, mime, FileStatus.OFFERED, 0, None, now
        )
        self._add(record)
        self._active[record.id] = record
        self._publish(record, "offer", now)
        self._send(to, self._offer_frame(record), now)
        return record

    def accept(self, file_id: str, now: float) -> FileRecord:
        record = self._active.get(file_id)
        if record is None or record.outgoing:
            raise ApiError(404 if self.history.get_file(file_id) is None else 409, "no file offer to accept")
        if record.status != FileStatus.OFFERED:
            raise ApiError(409, f"the file is {record.status} already")
        try:
            self._accept(record, now)
        except OSError as error:
            raise ApiError(507, f"cannot create the file: {error.strerror or error}") from None
        self._send(record.peer, {"t": ACCEPT, "id": record.id, "offset": 0}, now)
        return record

    def _accept(self, record: FileRecord, now: float) -> None:
        """Create the received file (raises OSError if it cannot be); the caller asks for it."""
        record.path = self.storage.create(record.name)
        record.status = FileStatus.ACCEPTED
        self._save(record)
        self._publish(record, "accepted", now)

    def cancel(self, file_id: str, now: float) -> FileRecord:
        record = self._active.get(file_id)
        if record is None:
            if self.history.get_file(file_id) is None:
                raise ApiError(404, "no such file")
            raise ApiError(409, "the file is finished already")
        self._finish(record, FileStatus.CANCELLED, "cancelled", now)
        self._send(record.peer, {"t": CANCEL, "id": record.id, "reason": "cancelled by the other side"}, now)
        return record

    def retry(self, file_id: str, now: float) -> FileRecord:
        """Go on with a file paused by the receiver's full disk: the
        receiver asks again from the bytes it holds; the sender offers it
        again (which the receiver answers so).  A disk still full pauses
        it again."""
        record = self._active.get(file_id)
        if record is None or record.status != FileStatus.PAUSED:
            if record is None and self.history.get_file(file_id) is None:
                raise ApiError(404, "no such file")
            raise ApiError(409, "only a paused file can be retried")
        if record.outgoing:
            self._send(record.peer, self._offer_frame(record), now)
        else:
            self._resume(record, now)
            self._send(record.peer, {"t": ACCEPT, "id": record.id, "offset": record.done}, now)
        return record

    def _resume(self, record: FileRecord, now: float) -> None:
        """A paused file of ours to receive is accepted again (the caller asks for the rest)."""
        record.status, record.error = FileStatus.ACCEPTED, None
        self._save(record)
        self._publish(record, "accepted", now)

    def fail_unknown_peer(self, peer_id: int, reason: str, now: float) -> None:
        """The server never assigned ``peer_id``: nothing can reach it."""
        for record in [r for r in self._active.values() if r.peer == peer_id]:
            self._finish(record, FileStatus.FAILED, reason, now)

    def has_work(self, peer_id: int) -> bool:
        """Something for ``peer_id`` waits for a link."""
        return any(r.peer == peer_id and self._wants_link(r) for r in self._active.values())

    def peers_with_work(self) -> set[int]:
        return {r.peer for r in self._active.values() if self._wants_link(r)}

    # ------------------------------------------------------------ links

    def link_ready(self, link: PeerLink, now: float) -> None:
        """Offer again what the peer has not finished, and ask again for
        what we accepted: a broken transfer resumes by itself."""
        if self.context.hides_from(link):
            return
        frames: list[Frame] = []
        for record in self._active.values():
            if record.peer != link.peer_id:
                continue
            if record.outgoing:
                frames.append(self._offer_frame(record))
            elif record.status in (FileStatus.ACCEPTED, FileStatus.PAUSED):
                if record.status == FileStatus.PAUSED:
                    self._resume(record, now)  # a new link: try again (the disk may have room now)
                frames.append({"t": ACCEPT, "id": record.id, "offset": record.done})
        for frame in frames:
            self._say(link, frame)

    def link_closed(self, link: PeerLink) -> None:
        for file_id in [f for f, s in self._sending.items() if s.link is link]:
            del self._sending[file_id]
        for key in [key for key in self._receiving if key[0] is link]:
            del self._receiving[key]
        for record in self._active.values():
            if record.peer == link.peer_id and not record.outgoing and record.status == FileStatus.ACCEPTED:
                self._save(record)  # where it stopped, for the page after a restart

    # ------------------------------------------------------------ frames

    def on_frame(self, link: PeerLink, frame: Frame, now: float) -> bool:
        """A control frame; False if it is not one of ours.  Raises FrameError
        for a malformed one (the engine closes the link)."""
        kind = frame["t"]
        if kind not in (OFFER, ACCEPT, DONE, CANCEL, PAUSE):
            return False
        peer = link.peer_id
        assert peer is not None  # frames come only on ready links
        file_id = require(frame, "id", str)
        if not _HEX_ID.fullmatch(file_id):
            raise FrameError(f"{kind}: id must be 32 lowercase hex digits")
        if self.context.hides_from(link):
            self.stats["file_frames_untrusted_key"] += 1
            if kind == OFFER:
                reason = "the receiver has not accepted this peer's new key"
                self._say(link, {"t": CANCEL, "id": file_id, "reason": reason, "failed": True})
            return True
        if kind == OFFER:
            self._on_offer(link, peer, file_id, frame, now)
            return True
        record = self._active.get(file_id) or self.history.get_file(file_id)
        if record is None or record.peer != peer:
            self.stats["file_frames_unknown"] += 1
            return True
        if kind == ACCEPT:
            self._on_accept(link, record, require(frame, "offset", int), now)
        elif kind == DONE:
            if record.outgoing and record.status == FileStatus.ACCEPTED:
                record.done = record.size
                self._finish(record, FileStatus.COMPLETE, None, now)
        elif kind == PAUSE:
            reason = require(frame, "reason", str)[:MAX_REASON_CHARS]
            if record.outgoing and record.status == FileStatus.ACCEPTED:
                self._paused(record, reason, now)
            else:
                self.stats["file_frames_unknown"] += 1
        else:
            reason = require(frame, "reason", str)[:MAX_REASON_CHARS]
            failed = frame.get("failed") is True
            if record.status in ACTIVE:
                self._finish(record, FileStatus.FAILED if failed else FileStatus.CANCELLED, reason, now)
        return True

    def _on_offer(self, link: PeerLink, peer: int, file_id: str, frame: Frame, now: float) -> None:
        name = require(frame, "name", str)
        size = require(frame, "size", int)
        sha256 = require(frame, "sha256", str)
        mime = require(frame, "mime", str)
        if len(name) > MAX_NAME_CHARS or not 0 <= size < 2**63 or not _HEX_SHA256.fullmatch(sha256):
            raise FrameError("file_offer: name too long, size out of range, or sha256 not 64 lowercase hex digits")
        known = self.history.get_file(file_id)
        if known is not None:
            if known.peer != peer or known.outgoing:
                self.stats["file_offer_id_taken"] += 1
                self._say(link, {"t": CANCEL, "id": file_id, "reason": "file id in use", "failed": True})
            else:
                self._answer_repeated_offer(link, self._active.get(file_id, known), now)
            return
        waiting = sum(1 for r in self._active.values() if r.peer == peer and r.status == FileStatus.OFFERED)
        if waiting >= MAX_OFFERS_PER_PEER:
            self.stats["file_offers_refused"] += 1
            reason = f"too many offers waiting ({MAX_OFFERS_PER_PEER})"
            self._say(link, {"t": CANCEL, "id": file_id, "reason": reason, "failed": True})
            return
        if len(mime) > MAX_MIME_CHARS or not _MIME.fullmatch(mime):
            mime = DEFAULT_MIME
        record = FileRecord(
            file_id, peer, False, sanitize_name(name), "", size, sha256, mime, FileStatus.OFFERED, 0, None, now
        )
        if size > self.max_size:
            record.status, record.error = FileStatus.FAILED, too_large(size, self.max_size)
            self._add(record)
            self._publish(record, "failed", now)
            self._say(link, {"t": CANCEL, "id": file_id, "reason": record.error, "failed": True})
            return
        self._add(record)
        self._active[file_id] = record
        self._publish(record, "offer", now)
        limit = self.history.auto_accept(peer)
        if limit and size <= limit:
            # The user accepts this peer's files up to that size (its contact
            # settings): no question asked.
            try:
                self._accept(record, now)
            except OSError as error:
                logger.warning("cannot create auto-accepted file %s: %s; the offer waits for the user", file_id, error)
                return
            self.stats["files_auto_accepted"] += 1
            self._say(link, {"t": ACCEPT, "id": file_id, "offset": 0})

    def _answer_repeated_offer(self, link: PeerLink, record: FileRecord, now: float) -> None:
        if record.status in (FileStatus.ACCEPTED, FileStatus.PAUSED):
            if record.status == FileStatus.PAUSED:
                self._resume(record, now)  # the sender retries (a new link, or its user)
            self._say(link, {"t": ACCEPT, "id": record.id, "offset": record.done})
        elif record.status == FileStatus.COMPLETE:
            self._say(link, {"t": DONE, "id": record.id})
        elif record.status in (FileStatus.CANCELLED, FileStatus.FAILED):
            failed = record.status == FileStatus.FAILED
            reason = record.error or str(record.status)
            if not failed:
                reason = "cancelled by the other side"
            self._say(link, {"t": CANCEL, "id": record.id, "reason": reason, "failed": failed})

    def _on_accept(self, link: PeerLink, record: FileRecord, offset: int, now: float) -> None:
        if not record.outgoing:
            self.stats["file_frames_unknown"] += 1
            return
        if not 0 <= offset <= record.size:
            raise FrameError(f"file_accept: offset {offset} outside the file of {record.size} bytes")
        if record.status in (FileStatus.CANCELLED, FileStatus.FAILED):
            reason = record.error if record.status == FileStatus.FAILED else "cancelled by the other side"
            self._say(
                link, {"t": CANCEL, "id": record.id, "reason": reason or "failed", "failed": record.status == "failed"}
            )
            return
        if record.status == FileStatus.COMPLETE:
            return
        running = self._sending.get(record.id)
        if running is not None and running.link is link and running.start == offset:
            return  # the same request twice (both sides resume on a new link)
        if running is not None:
            running.link.abort_stream(running.stream_id)
        if record.status in (FileStatus.OFFERED, FileStatus.PAUSED):
            record.status, record.error = FileStatus.ACCEPTED, None
            self._save(record)
            self._publish(record, "accepted", now)
        stream_id = link.open_data_stream(HEADER.pack(bytes.fromhex(record.id), offset), now)
        self.stats["file_streams_opened"] += 1
        self._sending[record.id] = _Sending(link, stream_id, offset, offset)
        if offset == record.size:
            link.send_data(stream_id, b"", now, end=True)

    # ------------------------------------------------------------ data

    def pump(self, now: float) -> None:
        """Top up every outgoing stream while QUIC holds little of it."""
        for file_id, sending in list(self._sending.items()):
            record = self._active.get(file_id)
            link = sending.link
            if record is None or link.state is not LinkState.READY:
                continue
            buffered = link.stream_buffered(sending.stream_id)
            while sending.position < record.size and buffered < SEND_BUFFER:
                length = min(CHUNK, record.size - sending.position)
                try:
                    data = self.storage.read(record.path, sending.position, length)
                except OSError as error:
                    data, reason = b"", f"cannot read the file: {error.strerror or error}"
                else:
                    reason = "the file changed on disk"
                if len(data) != length:
                    link.abort_stream(sending.stream_id)
                    self._finish(record, FileStatus.FAILED, reason, now)
                    self._say(link, {"t": CANCEL, "id": record.id, "reason": reason, "failed": True})
                    break
                sending.position += length
                self.stats["file_bytes_sent"] += length
                link.send_data(sending.stream_id, data, now, end=sending.position == record.size)
                buffered += length
            else:
                record.done = max(sending.position - link.stream_buffered(sending.stream_id), 0)
                self._progress_event(record, now)

    def on_stream(self, link: PeerLink, event: StreamReceived, now: float) -> None:
        if self.context.hides_from(link):
            self.stats["file_streams_ignored"] += 1
            return
        key = (link, event.stream_id)
        stream = self._receiving.get(key)
        if stream is None:
            stream = self._receiving[key] = _Receiving(bytearray())
        data = event.data
        if stream.file_id is None:
            need = HEADER.size - len(stream.header)
            stream.header += data[:need]
            data = data[need:]
            if len(stream.header) == HEADER.size:
                raw_id, stream.position = HEADER.unpack(stream.header)
                stream.file_id = raw_id.hex()
                record = self._active.get(stream.file_id)
                if (
                    record is None
                    or record.outgoing
                    or record.peer != link.peer_id
                    or record.status != FileStatus.ACCEPTED
                ):
                    self.stats["file_streams_ignored"] += 1
                    stream.file_id = ""
                elif record.done == record.size:
                    # All there already (an empty file, or a receiver killed
                    # before it checked the last byte): the header is enough.
                    self._verify(link, record, now)
                    stream.file_id = ""
        if stream.file_id and data:
            self._write(link, stream, data, now)
        if event.end:
            self._receiving.pop(key, None)

    def _write(self, link: PeerLink, stream: _Receiving, data: bytes, now: float) -> None:
        assert stream.file_id
        record = self._active.get(stream.file_id)
        if record is None or record.status != FileStatus.ACCEPTED:
            stream.file_id = ""  # cancelled meanwhile: the rest of the stream goes nowhere
            return
        self.stats["file_stream_bytes"] += len(data)  # duplicates included
        start, stream.position = stream.position, stream.position + len(data)
        if start > record.done:
            # A gap (a stream from before a restart): useless; the next accept asks again.
            self.stats["file_stream_gaps"] += 1
            stream.file_id = ""
            return
        if stream.position > record.size:
            raise FrameError(f"data past the end of file {record.id}")
        fresh = data[record.done - start :]
        if not fresh:
            return
        try:
            digest = self._hash_upto(record)
            self.storage.write(record.path, record.done, fresh)
        except OSError as error:
            if error.errno in _NO_SPACE:
                # What is written stays; the rest comes when there is room.
                stream.file_id = ""
                self._pause(link, record, now)
                return
            reason = f"the receiver cannot write the file: {error.strerror or error}"
            self._save(record)
            self._finish(record, FileStatus.FAILED, reason, now)
            self._say(link, {"t": CANCEL, "id": record.id, "reason": reason, "failed": True})
            return
        digest.update(fresh)
        record.done += len(fresh)
        self._hashes[record.id] = (digest, record.done)
        self.stats["file_bytes_received"] += len(fresh)
        if record.done == record.size:
            self._verify(link, record, now)
            return
        progress = self._progress.setdefault(record.id, _Progress(now, record.done, now))
        if now - progress.saved_at >= SAVE_INTERVAL:
            progress.saved_at = now
            self._save(record)
        self._progress_event(record, now)

    def _pause(self, link: PeerLink, record: FileRecord, now: float) -> None:
        """Our disk is full: stop the sender (at once: the frame announces
        nothing stored, and the history may not commit on a full disk)."""
        self.stats["files_paused_disk_full"] += 1
        # A file_accept for it still held for the commit would overtake the
        # pause and start the sender again: it is void now.
        for frames in self._after_commit.values():
            frames[:] = [f for f in frames if not (f["t"] == ACCEPT and f["id"] == record.id)]
        if link.state is LinkState.READY:
            link.send_frame({"t": PAUSE, "id": record.id, "reason": DISK_FULL}, now)
        self._paused(record, DISK_FULL, now)

    def _paused(self, record: FileRecord, reason: str, now: float) -> None:
        record.status, record.error = FileStatus.PAUSED, reason
        sending = self._sending.pop(record.id, None)
        if sending is not None:
            sending.link.abort_stream(sending.stream_id)
        try:
            self.storage.release(record.path)
        except OSError:
            pass
        self._save(record)
        logger.warning("file %s (%s) with peer %d paused: %s", record.id, record.name[:60], record.peer, reason)
        self._publish(record, "paused", now)

    def _hash_upto(self, record: FileRecord) -> Any:
        """The SHA-256 of the file's first ``record.done`` bytes, to go on
        with.  Kept as the bytes come; after a restart, the bytes already
        on disk are read once."""
        kept = self._hashes.get(record.id)
        if kept is not None and kept[1] == record.done:
            return kept[0]
        digest = hashlib.sha256()
        for offset in range(0, record.done, CHUNK * 16):
            length = min(CHUNK * 16, record.done - offset)
            data = self.storage.read(record.path, offset, length)
            if len(data) != length:
                raise OSError(f"{record.path} is shorter than the {record.done} bytes it had")
            digest.update(data)
        self._hashes[record.id] = (digest, record.done)
        return digest

    def _verify(self, link: PeerLink, record: FileRecord, now: float) -> None:
        kept = self._hashes.pop(record.id, None)
        try:
            self.storage.release(record.path)
            if kept is not None and kept[1] == record.size:
                digest = str(kept[0].hexdigest())
            else:
                digest = self.storage.sha256(record.path)  # nothing came since a restart
        except OSError as error:
            digest = f"unreadable: {error}"
        if digest == record.sha256:
            self._finish(record, FileStatus.COMPLETE, None, now)
            self._say(link, {"t": DONE, "id": record.id})
            return
        reason = "the received file does not match its SHA-256"
        self._finish(record, FileStatus.FAILED, reason, now)
        self._say(link, {"t": CANCEL, "id": record.id, "reason": reason, "failed": True})

    # ------------------------------------------------------------ the commit

    def save_again(self) -> None:
        """Inside the flush's transaction: write again the records whose
        last transaction rolled back (their frames still wait for a commit)."""
        unsaved, self._unsaved = self._unsaved, {}
        for record in unsaved.values():
            self.history.add_file(record)  # if its first write was the one lost
            self._save(record)

    def committed(self, now: float) -> None:
        """The transaction holds what the held frames announce: they leave
        (a link closed meanwhile misses them; the next link's
        :meth:`link_ready` says it all again)."""
        self._written.clear()
        after_commit, self._after_commit = self._after_commit, {}
        for link, frames in after_commit.items():
            if link.state is LinkState.READY:
                link.send_frames(frames, now)

    def rolled_back(self) -> None:
        """The transaction was lost: its records are written again by the
        next one, and their frames leave after that commit."""
        self._unsaved.update(self._written)
        self._written.clear()

    # ------------------------------------------------------------ internals

    def _add(self, record: FileRecord) -> bool:
        self._written[record.id] = record
        return self.history.add_file(record)

    def _save(self, record: FileRecord) -> None:
        self._written[record.id] = record
        self.history.update_file(record)

    def _say(self, link: PeerLink, frame: Frame) -> None:
        """A control frame, held until the commit (:meth:`committed`)."""
        self._after_commit.setdefault(link, []).append(frame)

    def _wants_link(self, record: FileRecord) -> bool:
        return record.outgoing or record.status in (FileStatus.ACCEPTED, FileStatus.PAUSED)

    def _offer_frame(self, record: FileRecord) -> Frame:
        return {
            "t": OFFER,
            "id": record.id,
            "name": record.name,
            "size": record.size,
            "sha256": record.sha256,
            "mime": record.mime,
        }

    def _send(self, peer_id: int, frame: Frame, now: float) -> None:
        """On the ready link, or (none yet) ask for one: what the frame
        says is said again when it is ready (:meth:`link_ready`)."""
        session = self.context.session(peer_id)
        link = session.ready_link
        if link is not None:
            if not self.context.hides_from(link):
                self._say(link, frame)
        else:
            self.context.connect(session, now)

    def _finish(self, record: FileRecord, status: FileStatus, error: str | None, now: float) -> None:
        record.status, record.error = status, error
        self._active.pop(record.id, None)
        self._progress.pop(record.id, None)
        self._hashes.pop(record.id, None)
        sending = self._sending.pop(record.id, None)
        if sending is not None and status != FileStatus.COMPLETE:
            sending.link.abort_stream(sending.stream_id)
        if record.path:
            try:
                self.storage.release(record.path)
            except OSError:
                pass
        self._save(record)
        logger.info("file %s (%s) with peer %d: %s %s", record.id, record.name[:60], record.peer, status, error or "")
        self._publish(record, str(status), now)

    def _progress_event(self, record: FileRecord, now: float) -> None:
        progress = self._progress.setdefault(record.id, _Progress(now, record.done, now))
        if now - progress.at < PROGRESS_INTERVAL:
            return
        rate = (record.done - progress.bytes) / (now - progress.at) if now > progress.at else 0.0
        progress.at, progress.bytes = now, record.done
        self.context.publish(FileChanged("progress", record.to_json(), max(rate, 0.0)))

    def _publish(self, record: FileRecord, kind: str, now: float) -> None:
        self.context.publish(FileChanged(kind, record.to_json()))


def too_large(size: int, limit: int) -> str:
    return f"file too large: {size} bytes, the receiver accepts at most {limit}"


class NoFileStorage:
    """The storage of an engine given none (tests of other parts): every
    file operation fails, so offers can be stored but not accepted."""

    def _refuse(self) -> OSError:
        return OSError("this peer has no file storage")

    def create(self, name: str) -> str:
        raise self._refuse()

    def size(self, path: str) -> int:
        raise self._refuse()

    def read(self, path: str, offset: int, length: int) -> bytes:
        raise self._refuse()

    def write(self, path: str, offset: int, data: bytes) -> None:
        raise self._refuse()

    def sha256(self, path: str) -> str:
        raise self._refuse()

    def release(self, path: str) -> None:
        pass
