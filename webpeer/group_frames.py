"""The group frames between peers (pure): docs/PROTOCOL.md, 11.7.

``gop`` carries one signed operation, ``gmsg`` one signed message (either
may be passed on by any member, unchanged), ``gsum`` what its sender has:
with ``want`` it asks for what the sender lacks, without it it only reports
(which is also how the writer of a message learns who has delivered it).

:func:`decode` is the edge: a malformed group frame raises
:class:`~webpeer.wire.FrameError` (the link closes, as for any bad frame).
A well-formed op or message that the group refuses (a bad signature, a
non-admin's change) is the group log's GroupError, for the caller to count
and drop.
"""

from __future__ import annotations

from dataclasses import dataclass

from webpeer.group_codec import (
    GroupError,
    GroupMessage,
    Op,
    check_delivered,
    check_group_id,
    check_op_ids,
    message_from_fields,
    op_from_fields,
)
from webpeer.group_log import Summary
from webpeer.wire import Frame, FrameError

OP = "gop"
MESSAGE = "gmsg"
SUMMARY = "gsum"
TYPES = frozenset({OP, MESSAGE, SUMMARY})


@dataclass(frozen=True)
class SummaryFrame:
    group: str
    summary: Summary
    want: bool  # send me what I lack


def op_frame(op: Op) -> Frame:
    return {"t": OP, "op": op.to_fields()}


def message_frame(message: GroupMessage) -> Frame:
    return {"t": MESSAGE, "m": message.to_fields()}


def summary_frame(group: str, summary: Summary, *, want: bool) -> Frame:
    return {
        "t": SUMMARY,
        "g": group,
        "h": list(summary.heads),
        "d": [[peer, seq] for peer, seq in summary.delivered],
        "want": want,
    }


def _only(frame: Frame, keys: set[str]) -> None:
    extra = set(frame) - keys - {"t"}
    if extra:
        raise FrameError(f"frame {frame['t']!r}: unknown fields {', '.join(sorted(extra)[:5])}")


def decode(frame: Frame) -> Op | GroupMessage | SummaryFrame | None:
    """A group frame's content, or None for a frame that is not a group frame."""
    kind = frame["t"]
    if kind not in TYPES:
        return None
    try:
        if kind == OP:
            _only(frame, {"op"})
            return op_from_fields(frame.get("op"))
        if kind == MESSAGE:
            _only(frame, {"m"})
            return message_from_fields(frame.get("m"))
        _only(frame, {"g", "h", "d", "want"})
        want = frame.get("want")
        if not isinstance(want, bool):
            raise GroupError("field 'want' must be true or false")
        summary = Summary(check_op_ids(frame.get("h"), "field 'h'"), check_delivered(frame.get("d")))
        return SummaryFrame(check_group_id(frame.get("g")), summary, want)
    except GroupError as error:
        raise FrameError(f"frame {kind!r}: {error}") from None
