"""Decoding what the page sends (HTTP bodies and websocket texts) into a JSON
object, or :class:`~webpeer.api.ApiError` 400 with a message for the client.

The fields inside are checked by webpeer/validate.py, whose rules the peer
shares; this module only owns the step before: bytes or text to a dict.
"""

from __future__ import annotations

import json
from typing import Any

from webpeer.api import ApiError


def loads(data: str | bytes) -> dict[str, Any]:
    """One JSON object (a request is always an object, never a list or a scalar)."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ApiError(400, f"malformed JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ApiError(400, "malformed request: expected a JSON object")
    return value
