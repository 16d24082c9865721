"""One log record, one line: a filter for the handlers of both programs.

Log lines quote what remotes say with ``%r`` where we write them; this
filter is the backstop for the rest, such as aioquic's own log of a peer's
close reason.  A control character (newline, carriage return, escape ...) in
a message is written as its Python escape, so text from a peer, a nickname or
a legacy client cannot forge a line that looks like ours.  Tracebacks are
added by the formatter after this runs and keep their lines.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable


def _escape(text: str) -> str:
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


class OneLine(logging.Filter):
    """Escapes control characters in the message of every record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.isprintable():
            record.msg = _escape(message)
            record.args = None
        return True


def keep_to_one_line(handlers: Iterable[logging.Handler]) -> None:
    """Adds :class:`OneLine` to each handler (once)."""
    for handler in handlers:
        if not any(isinstance(f, OneLine) for f in handler.filters):
            handler.addFilter(OneLine())
