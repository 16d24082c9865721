"""A group's operations and messages as values, and their one encoding (pure).

Both are JSON objects on the wire (inside the peer frames of
docs/PROTOCOL.md, "Groups"), and the same objects, without the "sig" field,
serialised canonically (sorted keys, no spaces, UTF-8) are what the author
signs with its Ed25519 identity key.  So a member can pass on another
member's operation or message unchanged and every receiver can still check
who wrote it: that is what lets an offline member catch up from anyone.

``op_from_fields`` and ``message_from_fields`` are the edge: every field of
an untrusted object is type-, range- and length-checked there, and a bad one
raises :class:`GroupError` with a message tests can match.  They do not
check signatures: the key to check with depends on the group's state, which
is webpeer/group_log.py's business.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from webpeer import validate

OP_CONTEXT = b"peerlink-group-op-v1\x00"
MESSAGE_CONTEXT = b"peerlink-group-msg-v2\x00"

MAX_MEMBERS = 128
"""Members one group may hold (fan-out is sender-to-all; docs/PROTOCOL.md says what changes beyond)."""
MAX_SENDERS = 1024
"""Senders a summary's vector may name: members come and go, their messages stay."""
MAX_PARENTS = 64
"""Parents of one operation, and heads one message names: concurrent branches one member merges at once."""
MAX_NAME_CHARS = 100
MAX_SEQ = 2**53 - 1  # a JSON number every reader holds exactly
MAX_CLOCK_MS = 2**53 - 1

_OP_ID = re.compile(r"[0-9a-f]{64}")
_NONCE = re.compile(r"[0-9a-f]{32}")
_HEX_KEY = re.compile(r"[0-9a-f]{64}")
_HEX_SIG = re.compile(r"[0-9a-f]{128}")


class GroupError(Exception):
    """An operation or a message that breaks the rules: malformed, forged,
    not allowed to its author, or out of this member's limits."""


class OpKind(StrEnum):
    CREATE = "create"
    ADD = "add"
    REMOVE = "remove"
    PROMOTE = "promote"
    LEAVE = "leave"
    RENAME = "rename"


# Which optional fields each kind carries (all kinds carry g, k, a, p, at, sig).
_KIND_FIELDS: dict[OpKind, frozenset[str]] = {
    OpKind.CREATE: frozenset({"name", "m", "n"}),
    OpKind.ADD: frozenset({"m"}),
    OpKind.REMOVE: frozenset({"tg", "u"}),
    OpKind.PROMOTE: frozenset({"tg"}),
    OpKind.LEAVE: frozenset(),
    OpKind.RENAME: frozenset({"name"}),
}
_OP_COMMON = frozenset({"g", "k", "a", "p", "at", "sig"})
_MESSAGE_FIELDS = frozenset({"g", "s", "q", "d", "h", "at", "text", "sig"})
_WITHHELD_FIELDS = frozenset({"g", "s", "q", "d", "h", "at", "th", "sig"})


@dataclass(frozen=True)
class Member:
    peer: int
    key: bytes  # the member's raw Ed25519 public key (32 bytes)


@dataclass(frozen=True)
class Op:
    """One signed membership operation.  ``group`` is "" in the create
    operation: the group's id is the create operation's id."""

    group: str
    kind: OpKind
    author: int
    parents: tuple[str, ...]  # op ids the author had applied (its heads), sorted
    at: int  # the author's clock, ms since the epoch: shown, never used to order
    name: str = ""  # create, rename
    members: tuple[Member, ...] = ()  # create: everyone, author included; add: who joins
    target: int = 0  # remove, promote
    nonce: str = ""  # create: makes the group id unique
    upto: int = 0  # remove: the target's last message the remover accepts (its cut-off)
    sig: bytes = b""

    def fields(self) -> dict[str, Any]:
        """The signed fields, as they go on the wire (without "sig")."""
        out: dict[str, Any] = {"g": self.group, "k": self.kind.value, "a": self.author, "p": list(self.parents)}
        out["at"] = self.at
        if self.kind in (OpKind.CREATE, OpKind.RENAME):
            out["name"] = self.name
        if self.kind in (OpKind.CREATE, OpKind.ADD):
            out["m"] = [[m.peer, m.key.hex()] for m in self.members]
        if self.kind in (OpKind.REMOVE, OpKind.PROMOTE):
            out["tg"] = self.target
        if self.kind is OpKind.REMOVE:
            out["u"] = self.upto
        if self.kind is OpKind.CREATE:
            out["n"] = self.nonce
        return out

    def signed_bytes(self) -> bytes:
        return OP_CONTEXT + canonical(self.fields())

    @property
    def id(self) -> str:
        """The op's id: SHA-256 of what its author signed, in hex.  Naming the
        content, it makes a replayed operation the same operation again."""
        return hashlib.sha256(self.signed_bytes()).hexdigest()

    def to_fields(self) -> dict[str, Any]:
        return {**self.fields(), "sig": self.sig.hex()}


@dataclass(frozen=True)
class GroupMessage:
    """One signed group message: the ``seq``-th from ``sender``, written after
    ``deps`` (other senders' messages it had delivered, as (sender, highest
    seq) pairs) under the membership of ``heads`` (the ops it had applied)."""

    group: str
    sender: int
    seq: int
    deps: tuple[tuple[int, int], ...]  # sorted by sender, no sender twice, never the message's own
    heads: tuple[str, ...]
    at: int
    text: str
    sig: bytes = b""
    digest: str = ""  # a withheld copy's text's SHA-256 (64 hex), its text then ""

    @property
    def key(self) -> tuple[int, int]:
        return (self.sender, self.seq)

    @property
    def withheld(self) -> bool:
        """A copy without its text, for a member that was not one when it was written."""
        return bool(self.digest)

    @property
    def text_hash(self) -> str:
        return self.digest or hashlib.sha256(self.text.encode()).hexdigest()

    def without_text(self) -> GroupMessage:
        """The withheld copy: it proves (signed) that the message exists and
        what it follows, and tells nothing it says."""
        return replace(self, text="", digest=self.text_hash)

    def _common(self) -> dict[str, Any]:
        return {
            "g": self.group,
            "s": self.sender,
            "q": self.seq,
            "d": [[peer, seq] for peer, seq in self.deps],
            "h": list(self.heads),
            "at": self.at,
        }

    def signed_bytes(self) -> bytes:
        # The text's hash, not the text, is signed: a withheld copy verifies too.
        return MESSAGE_CONTEXT + canonical({**self._common(), "th": self.text_hash})

    def to_fields(self) -> dict[str, Any]:
        if self.withheld:
            return {**self._common(), "th": self.digest, "sig": self.sig.hex()}
        return {**self._common(), "text": self.text, "sig": self.sig.hex()}


_CANONICAL = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def canonical(fields: dict[str, Any]) -> bytes:
    return _CANONICAL.encode(fields).encode()


# -- the edge: untrusted JSON objects to values --------------------------------------------------------------


def _int(obj: dict[str, Any], key: str, low: int, high: int) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise GroupError(f"field {key!r} must be an integer in {low}..{high}")
    return value


def _peer(value: object, what: str) -> int:
    try:
        return validate.peer_id(value, what)
    except validate.InvalidValue as error:
        raise GroupError(error.message) from None


def _hex(value: object, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        raise GroupError(f"{what} must be {pattern.pattern}")
    return value


def _op_ids(value: object, what: str, *, allow_empty: bool) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_PARENTS or (not value and not allow_empty):
        raise GroupError(f"{what} must be a list of {0 if allow_empty else 1}..{MAX_PARENTS} op ids")
    ids = tuple(_hex(item, _OP_ID, f"an op id in {what}") for item in value)
    if list(ids) != sorted(set(ids)):
        raise GroupError(f"{what} must be sorted, without repeats")  # one canonical form to sign
    return ids


def _members(value: object) -> tuple[Member, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_MEMBERS:
        raise GroupError(f"field 'm' must be a list of 1..{MAX_MEMBERS} members")
    members: list[Member] = []
    for item in value:
        if not isinstance(item, list) or len(item) != 2:
            raise GroupError("a member must be [peer id, key hex]")
        members.append(Member(_peer(item[0], "a member's peer id"), bytes.fromhex(_hex(item[1], _HEX_KEY, "a key"))))
    peers = [m.peer for m in members]
    if peers != sorted(set(peers)):
        raise GroupError("members must be sorted by peer id, without repeats")
    return tuple(members)


def _name(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME_CHARS:
        raise GroupError(f"a group name must be a non-blank string of at most {MAX_NAME_CHARS} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise GroupError("a group name must be valid Unicode") from None
    return value


def group_name(value: object) -> str:
    """A group name from the page or a peer (GroupError if not one)."""
    return _name(value)


def _exact_keys(obj: dict[str, Any], allowed: frozenset[str], what: str) -> None:
    extra = set(obj) - allowed - {"t"}  # "t" is the frame's type, when a frame is passed as is
    if extra:
        raise GroupError(f"{what} has unknown fields: {', '.join(sorted(extra)[:5])}")


def op_from_fields(obj: object) -> Op:
    """An untrusted JSON object as an Op (GroupError if it is not one).  The
    signature's form is checked here, its validity by the group log."""
    if not isinstance(obj, dict):
        raise GroupError("an operation must be an object")
    try:
        kind = OpKind(str(obj.get("k")))
    except ValueError:
        raise GroupError(f"field 'k' must be one of {', '.join(k.value for k in OpKind)}") from None
    _exact_keys(obj, _OP_COMMON | _KIND_FIELDS[kind], f"a {kind.value} operation")
    create = kind is OpKind.CREATE
    group = obj.get("g")
    if create:
        if group != "":
            raise GroupError("a create operation's 'g' must be empty (its id is the group's)")
    else:
        _hex(group, _OP_ID, "field 'g'")
    assert isinstance(group, str)
    op = Op(
        group=group,
        kind=kind,
        author=_peer(obj.get("a"), "field 'a'"),
        parents=_op_ids(obj.get("p"), "field 'p'", allow_empty=create),
        at=_int(obj, "at", 0, MAX_CLOCK_MS),
        name=_name(obj.get("name")) if kind in (OpKind.CREATE, OpKind.RENAME) else "",
        members=_members(obj.get("m")) if kind in (OpKind.CREATE, OpKind.ADD) else (),
        target=_peer(obj.get("tg"), "field 'tg'") if kind in (OpKind.REMOVE, OpKind.PROMOTE) else 0,
        nonce=_hex(obj.get("n"), _NONCE, "field 'n'") if create else "",
        upto=_int(obj, "u", 0, MAX_SEQ) if kind is OpKind.REMOVE else 0,
        sig=bytes.fromhex(_hex(obj.get("sig"), _HEX_SIG, "field 'sig'")),
    )
    if create and op.parents:
        raise GroupError("a create operation has no parents")
    if create and op.author not in {m.peer for m in op.members}:
        raise GroupError("a create operation's author must be among its members")
    return op


def _pairs(value: object, what: str, limit: int) -> tuple[tuple[int, int], ...]:
    """[[peer, seq], ...] sorted by peer, no peer twice: a vector clock."""
    if not isinstance(value, list) or len(value) > limit:
        raise GroupError(f"{what} must be a list of at most {limit} [peer, seq] pairs")
    pairs: list[tuple[int, int]] = []
    for item in value:
        if not isinstance(item, list) or len(item) != 2:
            raise GroupError(f"an entry of {what} must be [peer id, seq]")
        seq = item[1]
        if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq <= MAX_SEQ:
            raise GroupError(f"a seq in {what} must be an integer in 1..{MAX_SEQ}")
        pairs.append((_peer(item[0], f"a peer id in {what}"), seq))
    peers = [peer for peer, _ in pairs]
    if peers != sorted(set(peers)):
        raise GroupError(f"{what} must be sorted by peer id, without repeats")
    return tuple(pairs)


def check_delivered(value: object) -> tuple[tuple[int, int], ...]:
    """A summary's delivered vector (everyone who ever wrote in the group)."""
    return _pairs(value, "field 'd'", MAX_SENDERS)


def check_group_id(value: object) -> str:
    return _hex(value, _OP_ID, "field 'g'")


def check_op_ids(value: object, what: str) -> tuple[str, ...]:
    """A summary's heads: sorted op ids, none when the asker has not even the create op."""
    return _op_ids(value, what, allow_empty=True)


def message_from_fields(obj: object) -> GroupMessage:
    """An untrusted JSON object as a GroupMessage (GroupError if it is not one)."""
    if not isinstance(obj, dict):
        raise GroupError("a group message must be an object")
    withheld = "th" in obj
    _exact_keys(obj, _WITHHELD_FIELDS if withheld else _MESSAGE_FIELDS, "a group message")
    sender = _peer(obj.get("s"), "field 's'")
    deps = _pairs(obj.get("d"), "field 'd'", MAX_MEMBERS)
    if sender in (peer for peer, _ in deps):
        raise GroupError("a message's dependencies never name its sender")
    digest = _hex(obj.get("th"), _OP_ID, "field 'th'") if withheld else ""
    try:
        text = "" if withheld else validate.message_text(obj.get("text"))
    except validate.InvalidValue as error:
        raise GroupError(f"a group message's text: {error.message}") from None
    return GroupMessage(
        group=_hex(obj.get("g"), _OP_ID, "field 'g'"),
        sender=sender,
        seq=_int(obj, "q", 1, MAX_SEQ),
        deps=deps,
        heads=_op_ids(obj.get("h"), "field 'h'", allow_empty=False),
        at=_int(obj, "at", 0, MAX_CLOCK_MS),
        text=text,
        sig=bytes.fromhex(_hex(obj.get("sig"), _HEX_SIG, "field 'sig'")),
        digest=digest,
    )
