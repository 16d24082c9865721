"""The rules for a message text, a peer id and a message id, in one place.

Pure functions: each takes an untrusted value and returns it typed, or raises
:class:`InvalidValue` (an :class:`~webpeer.api.ApiError`, status 400, or 413
for a text over the size limit) with a message for whoever sent it.  Three
callers share them, so a text one path accepts is a text every path accepts:

- the page: webpeer/web.py and webpeer/websocket.py call them on every
  request field; an InvalidValue is an ApiError, so it becomes the JSON error
  reply or the websocket "error" event like any other refusal.

- the engine's own ``submit_message(to, text)`` (the PeerApi contract: bad
  input raises ApiError at once).  It calls them first, and lets the error
  propagate as is::

      text = validate.message_text(text)
      to = validate.peer_id(to, "to")

- a "msg" frame from another peer (docs/PROTOCOL.md, the peer frames).  A bad
  value there is the other peer breaking the protocol, not a page's mistake,
  so the frame path catches InvalidValue by name and raises its own FrameError
  (which closes the link, as for any bad frame)::

      try:
          message_id = validate.message_id(frame.get("id"), max_chars=validate.MAX_FRAME_MESSAGE_ID_CHARS)
          text = validate.message_text(frame.get("text"))
      except validate.InvalidValue as error:
          raise FrameError(f"frame 'msg': {error.message}") from None

  The rules are the same as for the page: a peer running this code never
  sends a blank text, so a blank one is a broken peer as much as an
  oversized one is.

Nothing here reads the clock, the store or any state: the checks that need
state (is this my own id, is the id known to the server, am I registered)
stay with the engine.
"""

from __future__ import annotations

from webpeer.api import MAX_TEXT_BYTES, ApiError

MAX_PEER_ID = 2**32 - 1
"""Registry ids are the u32 PEER-ID attribute (docs/PROTOCOL.md); the server never gives out 0."""
_MAX_PEER_ID_DIGITS = len(str(MAX_PEER_ID))

MAX_MESSAGE_ID_CHARS = 200
"""A message id the page names (ours are 32 hex digits, received ones ``<peer id>:<sender's id>``)."""
MAX_FRAME_MESSAGE_ID_CHARS = 64
"""The sender's message id in a "msg" frame (docs/PROTOCOL.md, the peer frames)."""


class InvalidValue(ApiError):
    """A value that breaks one of the rules in this module.

    An ApiError, so the web layer answers it like any refusal; its own type,
    so the peer-frame path can tell it from the engine's other ApiErrors and
    turn it into a FrameError."""


def message_text(value: object) -> str:
    """A message text: a str, not blank, valid Unicode (no lone surrogates,
    which UTF-8 and so SQLite cannot hold), at most MAX_TEXT_BYTES of UTF-8.

    Raises InvalidValue: 400 for the first three, 413 for the size."""
    if not isinstance(value, str):
        raise InvalidValue(400, "text must be a string")
    if not value or value.isspace():
        # The wording is part of the API: pages and tests match it.
        raise InvalidValue(400, "empty message")
    if value.isascii():
        size = len(value)  # no encoding needed (the common case, and a hot path)
    else:
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError as error:
            raise InvalidValue(
                400, f"message text is not valid Unicode: {error.reason} at character {error.start}"
            ) from None
    if size > MAX_TEXT_BYTES:
        raise InvalidValue(413, f"message text is {size} bytes; the limit is {MAX_TEXT_BYTES} bytes of UTF-8")
    return value


def peer_id(value: object, what: str = "peer id", *, from_url: bool = False) -> int:
    """A registry id, 1 .. MAX_PEER_ID: a JSON int (not a bool, not a float)
    or, with ``from_url``, a string of ASCII decimal digits (leading zeros
    are fine).  ``what`` names the field in the error (InvalidValue 400)."""
    if from_url and isinstance(value, str) and value.isascii() and value.isdigit():
        digits = value.lstrip("0") or "0"
        # More digits is out of range anyway; checking the length first keeps
        # int() away from a long string (it refuses over 4300 digits).
        value = int(digits) if len(digits) <= _MAX_PEER_ID_DIGITS else MAX_PEER_ID + 1
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_PEER_ID:
        return value
    raise InvalidValue(400, f"{what} must be a positive integer peer id (1..{MAX_PEER_ID})")


TRUST_ACTIONS = ("accept", "block", "verify", "unverify")
"""What POST /api/peers/N/trust may ask (webpeer/trust.py, Action)."""


def trust_action(value: object) -> str:
    """One of :data:`TRUST_ACTIONS` (InvalidValue 400 otherwise)."""
    if isinstance(value, str) and value in TRUST_ACTIONS:
        return value
    raise InvalidValue(400, f"action must be one of {', '.join(TRUST_ACTIONS)}")


def message_id(value: object, what: str = "id", *, max_chars: int = MAX_MESSAGE_ID_CHARS) -> str:
    """A message id: a str of 1 .. ``max_chars`` characters, valid Unicode.
    ``what`` names the field in the error (InvalidValue 400)."""
    if isinstance(value, str) and 0 < len(value) <= max_chars:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            pass  # a lone surrogate: no stored id has one, and SQLite could not look it up
        else:
            return value
    raise InvalidValue(400, f"{what} must be a message id: a string of 1..{max_chars} characters")


def history_cursor(before: object, after: object) -> tuple[str | None, str | None]:
    """The ``before`` and ``after`` of a history page (GET /api/messages):
    message ids, at most one of them given (None: not given).  Both at once
    would ask for two pages in one answer (InvalidValue 400)."""
    if before is not None and after is not None:
        raise InvalidValue(400, "give before or after, not both")
    return (
        None if before is None else message_id(before, "before"),
        None if after is None else message_id(after, "after"),
    )


MAX_GROUP_MEMBERS = 128
"""Members one group may hold (webpeer/group_codec.py MAX_MEMBERS)."""


def group_id(value: object) -> str:
    """A group id: 64 lower-case hex digits (InvalidValue 400, 404 from the URL is the peer's call)."""
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value
    raise InvalidValue(400, "group id must be 64 lower-case hex digits")


def member_ids(value: object, what: str = "members") -> list[int]:
    """A list of 0 .. MAX_GROUP_MEMBERS - 1 peer ids (without repeats once checked)."""
    if not isinstance(value, list) or len(value) >= MAX_GROUP_MEMBERS:
        raise InvalidValue(400, f"{what} must be a list of at most {MAX_GROUP_MEMBERS - 1} peer ids")
    return sorted({peer_id(item, f"an id in {what}") for item in value})


MAX_NICKNAME_CHARS = 64
MAX_SEARCH_CHARS = 200


def nickname(value: object) -> str | None:
    """The user's name for a peer: a str of at most MAX_NICKNAME_CHARS
    characters, no control characters, spaces around it dropped; blank (or
    null) means "no nickname" (None)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidValue(400, "nickname must be a string")
    value = value.strip()
    if len(value) > MAX_NICKNAME_CHARS:
        raise InvalidValue(400, f"nickname is {len(value)} characters; the limit is {MAX_NICKNAME_CHARS}")
    if any(ord(ch) < 32 or ord(ch) == 127 or 0xD800 <= ord(ch) <= 0xDFFF for ch in value):
        raise InvalidValue(400, "nickname has a control character or invalid Unicode")
    return value or None


MAX_AUTO_ACCEPT_BYTES = 2**53  # JSON's exact integers


def auto_accept_bytes(value: object) -> int:
    """A size up to which a peer's files are accepted by themselves: an int
    of 0 (or null: off) to 2**53."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidValue(400, "auto_accept_bytes must be an integer number of bytes (or null)")
    if not 0 <= value <= MAX_AUTO_ACCEPT_BYTES:
        raise InvalidValue(400, f"auto_accept_bytes must be 0 to {MAX_AUTO_ACCEPT_BYTES}")
    return value


def settings_change(value: object, known: dict[str, object]) -> dict[str, object]:
    """A change of the page's settings: a JSON object whose keys are settings
    (``known``: name -> current value) and whose values have their type."""
    if not isinstance(value, dict) or not value:
        raise InvalidValue(400, "settings must be a non-empty JSON object")
    for key, new in value.items():
        if key not in known:
            raise InvalidValue(400, f"unknown setting {key!r:.40}")
        if type(new) is not type(known[key]):
            raise InvalidValue(400, f"setting {key} must be {type(known[key]).__name__}")
    return dict(value)


MAX_SEARCH_WORDS = 10


def search_words(value: object) -> list[str]:
    """A search: a str of at most MAX_SEARCH_CHARS characters, valid Unicode,
    with 1 to MAX_SEARCH_WORDS words (separated by white space)."""
    if not isinstance(value, str):
        raise InvalidValue(400, "q must be a string")
    if len(value) > MAX_SEARCH_CHARS:
        raise InvalidValue(400, f"q is {len(value)} characters; the limit is {MAX_SEARCH_CHARS}")
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in value):
        raise InvalidValue(400, "q is not valid Unicode")
    words = value.split()
    if not words:
        raise InvalidValue(400, "q is empty: give a word to search for")
    if len(words) > MAX_SEARCH_WORDS:
        raise InvalidValue(400, f"q has {len(words)} words; the limit is {MAX_SEARCH_WORDS}")
    return words
