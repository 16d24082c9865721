"""Checks of what the page sends (HTTP bodies and websocket requests):
each returns the value or raises :class:`BadRequest` with the status and a
message for the client."""

from __future__ import annotations

import json
from typing import Any

from webpeer.api import MAX_TEXT_BYTES

MAX_PEER_ID = 2**63 - 1


class BadRequest(Exception):
    """A request we refuse before it reaches the api; status and message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def loads(data: str | bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BadRequest(400, f"malformed JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequest(400, "malformed request: expected a JSON object")
    return value


def peer_id(value: object, what: str, *, from_url: bool = False) -> int:
    """A peer id from JSON (an int, not a bool) or from a URL (decimal digits)."""
    if from_url and isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_PEER_ID:
        return value
    raise BadRequest(400, f"{what} must be a positive integer peer id")


def text(value: object) -> str:
    if not isinstance(value, str):
        raise BadRequest(400, "text must be a string")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_TEXT_BYTES:
        raise BadRequest(413, f"message text is {size} bytes; the limit is {MAX_TEXT_BYTES} bytes of UTF-8")
    return value


def message_id(value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 200:
        raise BadRequest(400, "id must be a message id string")
    return value
