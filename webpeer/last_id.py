"""The id this peer was last given, kept in a small file in its data dir.

A key keeps its id for ever at a given server (docs/PROTOCOL.md 8), so once
registered, a peer knows the sender id of its messages before the server
answers again: a restarted peer whose server is down still accepts the
page's sends (stored ``queued``, sent once registered).  The file names the
server too: another server gives other ids.

A file, not a row of the history store, so it does not depend on that
store's schema.  Written rarely (when the id changes), atomically (a
temporary file, then a rename); anything unreadable counts as no file.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from rendezvous.stun import Address

from . import validate

logger = logging.getLogger("webpeer")

FILE_NAME = "last-id.json"
MAX_FILE_BYTES = 4096


def _server_text(server: Address) -> str:
    return f"{server[0]}:{server[1]}"


def load(data_dir: Path, server: Address) -> int | None:
    """The id last given by ``server``, or None (never registered there, or
    the file is missing or unreadable)."""
    path = data_dir / FILE_NAME
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as error:
        logger.warning("cannot read %s (%s): the id is known again at the next registration", path, error)
        return None
    try:
        if len(raw) > MAX_FILE_BYTES:
            raise ValueError("too large")
        content = json.loads(raw)
        if not isinstance(content, dict):
            raise ValueError("not an object")
        if content.get("server") != _server_text(server):
            return None  # another server's id
        return validate.peer_id(content.get("id"), "id")
    except (ValueError, validate.InvalidValue) as error:
        logger.warning("ignoring %s: %s", path, getattr(error, "message", error))
        return None


def save(data_dir: Path, server: Address, peer_id: int) -> None:
    """Remember ``peer_id`` as ours at ``server``.  Best effort: a failure is
    logged (the id is learnt again at the next registration)."""
    path = data_dir / FILE_NAME
    temporary = path.with_suffix(".tmp")
    try:
        temporary.write_text(json.dumps({"server": _server_text(server), "id": peer_id}) + "\n", encoding="utf-8")
        os.replace(temporary, path)
    except OSError as error:
        logger.warning("cannot write %s (%s)", path, error)
