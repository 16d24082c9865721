"""Group members with fixed keys, for the group tests (webpeer/group_log.py)."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from webpeer.group_codec import Member, message_from_fields, op_from_fields
from webpeer.group_log import GroupLog, Update
from webpeer.identity import Identity


def person(peer: int) -> Identity:
    """A fixed key per peer id, so runs are reproducible."""
    return Identity(Ed25519PrivateKey.from_private_bytes(bytes([peer]) * 32))


def member(peer: int) -> Member:
    return Member(peer, person(peer).public_key)


def new_group(creator: int = 1, others: tuple[int, ...] = (2, 3, 4), name: str = "friends") -> GroupLog:
    return GroupLog.create_group(
        person(creator).sign, member(creator), name, [member(p) for p in others], "ab" * 16, 1_000
    )


def copy_of(log: GroupLog) -> GroupLog:
    """Another member's replica, fed everything ``log`` has through the wire form."""
    other = GroupLog(op_from_fields(log.create.to_fields()))
    for op, _ in log.timeline()[1:]:
        other.add_op(op_from_fields(op.to_fields()))
    for message in log.delivered():
        other.add_message(message_from_fields(message.to_fields()))
    return other


def sync(into: GroupLog, source: GroupLog, asker: int) -> Update:
    into.reader = asker  # it takes withheld copies of what it may not read
    ops, messages = source.lacking(into.summary(), asker, limit=10_000)
    update = Update()
    for op in ops:
        update.extend(into.add_op(op))
    for message in messages:
        update.extend(into.add_message(message))
    return update
