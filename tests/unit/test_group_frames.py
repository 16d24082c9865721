"""The group frames (webpeer/group_frames.py, docs/PROTOCOL.md 11.7): what is
signed byte by byte, round trips through the frame codec, and every
malformed field refused at the edge with a FrameError."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from group_people import new_group, person

from webpeer.group_codec import OpKind
from webpeer.group_frames import SummaryFrame, decode, message_frame, op_frame, summary_frame
from webpeer.group_log import Summary
from webpeer.wire import FrameDecoder, FrameError, encode_frame

KEY_1 = "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"
KEY_2 = "8139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394"
HI_SHA256 = b"8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4"  # SHA-256 of "hi"
GROUP = "4708ec71692e13f0b9e0b45f0ee67de413b138beded5885b0ffe17592e658e2a"


def test_what_the_author_signs_is_the_documented_canonical_json() -> None:
    log = new_group(1, (2,), "tea")
    assert log.create.signed_bytes() == (
        b'peerlink-group-op-v1\x00{"a":1,"at":1000,"g":"","k":"create","m":[[1,"' + KEY_1.encode() + b'"],[2,"'
        b"" + KEY_2.encode() + b'"]],"n":"abababababababababababababababab","name":"tea","p":[]}'
    )
    assert log.id == GROUP  # SHA-256 of those bytes
    message = log.post(person(1).sign, 1, "hi", 1_764_350_000_000)
    assert message.signed_bytes() == (
        b'peerlink-group-msg-v2\x00{"at":1764350000000,"d":[],"g":"' + GROUP.encode() + b'","h":["'
        b"" + GROUP.encode() + b'"],"q":1,"s":1,"th":"' + HI_SHA256 + b'"}'
    )
    withheld = message.without_text()  # what a member gets of a message written while it was out
    assert withheld.to_fields()["th"] == HI_SHA256.decode() and "text" not in withheld.to_fields()
    assert withheld.signed_bytes() == message.signed_bytes()


def test_frames_round_trip_through_the_stream_codec() -> None:
    log = new_group(1, (2, 3))
    op = log.make_op(person(1).sign, 1, OpKind.PROMOTE, 2_000, target=2)
    message = log.post(person(1).sign, 1, "héllo", 3_000)
    frames = [
        op_frame(log.create),
        op_frame(op),
        message_frame(message),
        summary_frame(log.id, log.summary(), want=True),
    ]
    received = FrameDecoder().feed(b"".join(encode_frame(f) for f in frames))
    assert [decode(f) for f in received] == [log.create, op, message, SummaryFrame(log.id, log.summary(), True)]
    assert decode({"t": "msg", "id": "x"}) is None  # not a group frame: someone else's


def _good() -> dict[str, dict[str, Any]]:
    log = new_group(1, (2, 3))
    log.post(person(1).sign, 1, "one", 3_000)
    return {
        "gop": op_frame(log.make_op(person(1).sign, 1, OpKind.REMOVE, 2_000, target=3)),
        "gmsg": message_frame(log.post(person(1).sign, 1, "two", 3_001)),
        "gsum": summary_frame(log.id, Summary(log.heads, ((1, 2), (2, 5))), want=False),
    }


def _set(path: str, value: Any) -> tuple[str, str, Any]:
    kind, _, field = path.partition(".")
    return kind, field, value


@pytest.mark.parametrize(
    ("kind", "path", "value", "words"),
    [
        ("gop", "op", "nope", "must be an object"),
        ("gop", "op.k", "explode", "field 'k' must be one of"),
        ("gop", "op.a", 0, "peer id"),
        ("gop", "op.a", True, "peer id"),
        ("gop", "op.tg", 2**32, "peer id"),
        ("gop", "op.g", "A" * 64, "field 'g'"),
        ("gop", "op.p", [], "1..64 op ids"),
        ("gop", "op.p", ["0" * 64] * 65, "1..64 op ids"),
        ("gop", "op.p", ["f" * 64, "0" * 64], "sorted"),
        ("gop", "op.at", 1.5, "field 'at'"),
        ("gop", "op.at", -1, "field 'at'"),
        ("gop", "op.sig", "00", "field 'sig'"),
        ("gop", "op.name", "x", "unknown fields: name"),
        ("gmsg", "m.q", 0, "field 'q'"),
        ("gmsg", "m.q", 2**53, "field 'q'"),
        ("gmsg", "m.text", "   ", "empty message"),
        ("gmsg", "m.text", "\ud800", "not valid Unicode"),
        ("gmsg", "m.d", [[2, 1], [2, 2]], "without repeats"),
        ("gmsg", "m.d", [[1, 1]], "never name its sender"),
        ("gmsg", "m.d", [[2, 0]], "a seq in field 'd'"),
        ("gmsg", "m.d", [[2]], "must be \\[peer id, seq\\]"),
        ("gmsg", "m.h", [], "1..64 op ids"),
        ("gmsg", "m.extra", 1, "unknown fields: extra"),
        ("gsum", "want", 1, "'want' must be true or false"),
        ("gsum", "d", [[1, 1]] * 1025, "at most 1024"),
        ("gsum", "g", "", "field 'g'"),
        ("gsum", "more", True, "unknown fields more"),
    ],
)
def test_malformed_group_frames_are_frame_errors(kind: str, path: str, value: Any, words: str) -> None:
    frame = copy.deepcopy(_good()[kind])
    target: dict[str, Any] = frame
    *outer, last = path.split(".")
    for step in outer:
        target = target[step]
    target[last] = value
    with pytest.raises(FrameError, match=words):
        decode(frame)


def test_the_good_frames_of_the_table_above_decode() -> None:
    for frame in _good().values():
        assert decode(frame) is not None
