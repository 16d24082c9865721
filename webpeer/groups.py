"""Group conversations over the peer links (pure): the engine's component.

Each group is a :class:`~webpeer.group_log.GroupLog`; this module moves its
ops and messages between members (docs/PROTOCOL.md 11.7), stores them
through :class:`GroupHistory`, and tells the page.  It reaches the rest of
the engine only through :class:`GroupsContext`.

- Our own op or message goes to every other member (sender-to-all), on its
  ready link, or by connecting to it first; what cannot go now is repaired
  by the summary exchange on the next link.
- On every new link to a member, each side sends a ``gsum`` asking for
  what it lacks; a member holding something whose causes it lacks asks the
  member that brought it (it had delivered those causes).  Any member
  answers, not only the writer: that is how an offline member catches up.
- A delivered message is acknowledged to its writer with a ``gsum`` that
  only reports: the writer learns who has it (per-member delivery).
- Everything a flush accepted is stored in its transaction; every group
  frame leaves only after the commit (an own message never goes out that a
  crash could make us write again under the same number).
"""

from __future__ import annotations

import json
import logging
import secrets
from collections import Counter
from typing import Any, Protocol

from . import validate
from .api import ApiError
from .events import GroupChanged, GroupDelivery, GroupMessageAdded, PageEvent
from .group_codec import GroupError, GroupMessage, Member, Op, OpKind, group_name, message_from_fields, op_from_fields
from .group_frames import SummaryFrame, decode, message_frame, op_frame, summary_frame
from .group_log import GroupLog, Summary, Update
from .link import PeerLink
from .peer_session import PeerSession
from .wire import Frame, encode_frame

logger = logging.getLogger("webpeer")

JSON = dict[str, Any]

MAX_FOREIGN = 16
"""Groups kept in memory that we were never a member of (a create op may come
before the op that adds us); past this the oldest goes, so a peer sending made-up
groups cannot crowd out real ones."""
RETRY_FIRST = 2.0
RETRY_MAX = 60.0
"""A member we had something for but no link to is tried again after
RETRY_FIRST seconds, doubling up to RETRY_MAX, until a link to it opens
(whose summary exchange then carries everything)."""
ASK_AGAIN = 5.0
ASK_TRIES = 3
"""A summary request unanswered ASK_AGAIN seconds is sent again (if a link
is up), at most ASK_TRIES times; then the next link or the next news asks."""
MAX_ASKING = 1000
"""Summary requests waiting for an answer (a made-up group id costs one each)."""
FILL_LIMIT = 200
"""Messages one answer to a ``gsum`` carries; the asker asks again if it made progress."""


class GroupsContext(Protocol):
    """What the group component may ask of the engine."""

    @property
    def my_id(self) -> int | None: ...

    @property
    def my_public_key(self) -> bytes: ...

    def sign(self, payload: bytes) -> bytes: ...

    def key_of(self, peer_id: int) -> bytes | None:
        """The identity key the registry (or our store) gives for the peer."""

    def current_key(self, peer_id: int) -> tuple[bytes, bool] | None:
        """The key the registry last gave for the peer and whether the user
        trusts it (webpeer/trust.py); None for a blocked or unknown one."""

    def may_send(self, peer_id: int) -> bool:
        """Nothing goes to a key the user has not accepted (or blocked): trust.py's gate."""

    def session(self, peer_id: int) -> PeerSession: ...

    def connect(self, session: PeerSession, now: float) -> bool: ...

    def publish(self, event: PageEvent) -> None: ...


class GroupHistory(Protocol):
    """What the group component needs of the store (webpeer/store.py)."""

    def add_group_ops(self, group_id: str, ops: list[tuple[str, str]]) -> None: ...

    def add_group_messages(self, group_id: str, messages: list[tuple[int, int, str]]) -> None: ...

    def group_ids(self) -> list[str]: ...

    def group_ops(self, group_id: str) -> list[str]: ...

    def group_messages(self, group_id: str) -> list[str]: ...


def _body(fields: dict[str, Any]) -> str:
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)


class Groups:
    def __init__(self, context: GroupsContext, history: GroupHistory, stats: Counter[str]) -> None:
        self.context = context
        self.history = history
        self.stats = stats
        self.logs: dict[str, GroupLog] = {}
        # Accepted since the last commit, to store (kept until a commit holds them).
        self._unsaved_ops: dict[str, list[Op]] = {}
        self._unsaved_messages: dict[str, list[GroupMessage]] = {}
        self._stored: set[str] = set()  # groups whose rows are in the store (we are or were a member)
        self._outbox: dict[int, list[Frame]] = {}  # peer id -> frames that leave after the commit
        # (group, peer) -> our progress when we asked, and when to ask again if no answer came
        # (the request or its answer went on a link that closed: a duplicate connection, say).
        self._asking: dict[tuple[str, int], tuple[int, float]] = {}
        self._asked_again: dict[tuple[str, int], int] = {}  # times asked again without an answer
        self._acks: set[tuple[str, int]] = set()  # (group, writer) owed a report after this flush
        self.seen: dict[str, dict[int, dict[int, int]]] = {}  # group -> member -> what it reported delivered
        self._owed: dict[int, tuple[float, float]] = {}  # peer -> (when to try it again, the wait after that)

    # ------------------------------------------------------------ start-up

    def load(self) -> None:
        """Rebuild every stored group (their signatures were checked when they came)."""
        for group_id in self.history.group_ids():
            bodies = self.history.group_ops(group_id)
            try:
                ops = [op_from_fields(json.loads(body)) for body in bodies]
                log = GroupLog(ops[0], check_signatures=False, key_view=self.context.current_key)
                for op in ops[1:]:
                    log.add_op(op)
                for body in self.history.group_messages(group_id):
                    log.add_message(message_from_fields(json.loads(body)))
            except (GroupError, ValueError, IndexError) as error:
                logger.error("group %s in the store cannot be read back: %s", group_id[:12], error)
                continue
            self.logs[log.id] = log
            self._stored.add(log.id)

    # ------------------------------------------------------------ the page's side

    def _me(self) -> int:
        me = self.context.my_id
        if me is None:
            raise ApiError(503, "this peer has never registered with its rendezvous server, so it has no id yet")
        return me

    def _log(self, group_id: str) -> GroupLog:
        log = self.logs.get(group_id)
        if log is None or log.id not in self._stored:
            raise ApiError(404, "no such group")
        return log

    def _members(self, peer_ids: list[int]) -> tuple[Member, ...]:
        members = []
        for peer_id in sorted(set(peer_ids)):
            key = self.context.key_of(peer_id)
            if key is None:
                raise ApiError(409, f"no key known for peer {peer_id} yet: it must have been online once")
            members.append(Member(peer_id, key))
        return tuple(members)

    def create(self, name: object, member_ids: list[int], now: float) -> JSON:
        me = self._me()
        try:
            name = group_name(name)
        except GroupError as error:
            raise ApiError(400, str(error)) from None
        others = [peer for peer in member_ids if peer != me]
        if len(others) + 1 > 128:
            raise ApiError(400, "a group holds at most 128 members")
        log = GroupLog.create_group(
            self.context.sign,
            Member(me, self.context.my_public_key),
            name,
            self._members(others),
            secrets.token_hex(16),
            int(now * 1000),
            key_view=self.context.current_key,
        )
        self.logs[log.id] = log
        self._stored.add(log.id)
        self._unsaved_ops[log.id] = [log.create]
        self._fan_out(log, op_frame(log.create), set(log.state.members), now)
        self.context.publish(GroupChanged(self.group_json(log), self._change(log.create, True)))
        return self.group_json(log)

    def change(
        self, group_id: str, kind: OpKind, now: float, *, members: tuple[int, ...] = (), target: int = 0
    ) -> JSON:
        """Add, remove, promote, leave or rename (ApiError 403 if not allowed)."""
        me = self._me()
        log = self._log(group_id)
        before = set(log.state.members)
        try:
            op = log.make_op(
                self.context.sign,
                me,
                kind,
                int(now * 1000),
                members=self._members(list(members)) if kind is OpKind.ADD else (),
                target=target,
            )
        except GroupError as error:
            raise ApiError(403, str(error).removeprefix("operation refused: ")) from None
        self._unsaved_ops.setdefault(log.id, []).append(op)
        self._fan_out(log, op_frame(op), before | set(log.state.members), now)
        self.context.publish(GroupChanged(self.group_json(log), self._change(op, True)))
        return self.group_json(log)

    def rename(self, group_id: str, name: object, now: float) -> JSON:
        try:
            checked = group_name(name)
        except GroupError as error:
            raise ApiError(400, str(error)) from None
        me = self._me()
        log = self._log(group_id)
        try:
            op = log.make_op(self.context.sign, me, OpKind.RENAME, int(now * 1000), name=checked)
        except GroupError as error:
            raise ApiError(403, str(error).removeprefix("operation refused: ")) from None
        self._unsaved_ops.setdefault(log.id, []).append(op)
        self._fan_out(log, op_frame(op), set(log.state.members), now)
        self.context.publish(GroupChanged(self.group_json(log), self._change(op, True)))
        return self.group_json(log)

    def post(self, group_id: str, text: object, now: float) -> JSON:
        me = self._me()
        checked = validate.message_text(text)
        log = self._log(group_id)
        if me not in log.state.members:
            raise ApiError(403, "you are not a member of this group")
        try:
            message = log.post(self.context.sign, me, checked, int(now * 1000))
        except GroupError as error:
            raise ApiError(403, str(error)) from None
        frame = message_frame(message)
        try:
            encode_frame(frame)
        except ValueError:
            # Escaping made it too long for one frame: it is ours only, nobody has it; say so.
            raise ApiError(413, "message text is too long once encoded for a group") from None
        self._unsaved_messages.setdefault(log.id, []).append(message)
        self._fan_out(log, frame, set(log.state.members), now)
        out = self.message_json(log, message)
        self.context.publish(GroupMessageAdded(out))
        return out

    def groups_json(self) -> list[JSON]:
        return [self.group_json(log) for log in self.logs.values() if log.id in self._stored]

    def messages_json(
        self, group_id: str, limit: int = 500, *, before: str | None = None, after: str | None = None
    ) -> list[JSON]:
        """The latest ``limit`` messages in our delivery order (the order every
        page of this member shows), or the ``limit`` before / after one."""
        log = self._log(group_id)
        messages = log.readable()
        cursor = before if before is not None else after
        if cursor is None:
            page = messages[-limit:]
        else:
            index = next((i for i, m in enumerate(messages) if f"{m.sender}:{m.seq}" == cursor), None)
            if index is None:
                raise ApiError(404, f"no message {cursor} in this group")
            page = (
                messages[max(0, index - limit) : index]
                if before is not None
                else messages[index + 1 : index + 1 + limit]
            )
        return [self.message_json(log, m) for m in page]

    def changes_json(self, group_id: str) -> list[JSON]:
        """Every membership change of the group, in the order all members apply
        them, as the ``change`` of a "group" event (the page's lines)."""
        return [self._change(op, applied) for op, applied in self._log(group_id).timeline()]

    def group_json(self, log: GroupLog) -> JSON:
        me = self.context.my_id
        return {
            "id": log.id,
            "name": log.state.name,
            "members": sorted(log.state.members),
            "admins": sorted(log.state.admins),
            "member": me in log.state.members,
            "created_by": log.create.author,
            "held_for_key_change": log.held_for_key(),
            "created": log.create.at / 1000,
        }

    def message_json(self, log: GroupLog, message: GroupMessage) -> JSON:
        return {
            "id": f"{message.sender}:{message.seq}",
            "group": log.id,
            "from": message.sender,
            "seq": message.seq,
            "text": message.text,
            "time": message.at / 1000,
            "delivered_to": self.delivered_to(log.id, message),
        }

    def delivered_to(self, group_id: str, message: GroupMessage) -> list[int]:
        """The members that reported having delivered ``message`` (besides us)."""
        seen = self.seen.get(group_id, {})
        return sorted(peer for peer, vector in seen.items() if vector.get(message.sender, 0) >= message.seq)

    @staticmethod
    def _change(op: Op, applied: bool) -> JSON:
        return {
            "kind": op.kind.value,
            "by": op.author,
            "members": [m.peer for m in op.members],
            "target": op.target or None,
            "name": op.name or None,
            "time": op.at / 1000,
            "applied": applied,
        }

    # ------------------------------------------------------------ the links' side

    def on_frame(self, link: PeerLink, frame: Frame, now: float) -> bool:
        """A group frame from a peer; False if it is not one.  FrameError for a
        malformed one; an op or message the group refuses is counted and dropped."""
        content = decode(frame)
        if content is None:
            return False
        peer = link.peer_id
        assert peer is not None
        try:
            if isinstance(content, Op):
                self._on_op(peer, content, now)
            elif isinstance(content, GroupMessage):
                self._on_message(peer, content, now)
            else:
                self._on_summary(peer, content, now)
        except GroupError as error:
            self.stats["group_refused"] += 1
            logger.info("refused a group frame from peer %d: %s", peer, error)
        return True

    def link_ready(self, peer: int, now: float) -> None:
        """A new link to ``peer``: exchange summaries for every group we share."""
        me = self.context.my_id
        self._owed.pop(peer, None)
        for key in [key for key in self._asking if key[1] == peer]:
            self._asked_again.pop(key, None)
            del self._asking[key]  # what we asked on an earlier link may never have come
        for log in self.logs.values():
            if peer in log.state.members and me in log.state.members:
                self._ask(log.id, peer, now)

    def trust_changed(self, peer: int, now: float) -> None:
        """The user decided about ``peer``'s key (or its trusted key came back):
        its group messages held for the new key are delivered, or dropped if blocked."""
        for log in list(self.logs.values()):
            if peer in log.held_for_key():
                self._accepted(log, log.recheck(), peer, now)
                if log.id in self._stored:
                    self.context.publish(GroupChanged(self.group_json(log), None))
        if self.context.may_send(peer) and self.context.session(peer).ready_link is not None:
            self.link_ready(peer, now)  # what it was not sent while its key was in doubt

    def registered(self, now: float) -> None:
        """We are (again) at the server: catch up with every group's members
        (connecting to them; each new link exchanges summaries)."""
        me = self.context.my_id
        for log in self.logs.values():
            if me in log.state.members:
                for peer in log.state.members:
                    if peer != me:
                        self._reach(peer, now)

    def _on_op(self, peer: int, op: Op, now: float) -> None:
        group_id = op.id if op.kind is OpKind.CREATE else op.group
        log = self.logs.get(group_id)
        if log is None:
            if op.kind is not OpKind.CREATE:
                self._ask(group_id, peer, now)  # a group new to us: the whole of it
                return
            log = GroupLog(op, key_view=self.context.current_key)  # checks its signature first
            foreign = [group for group in self.logs if group not in self._stored]
            if len(foreign) >= MAX_FOREIGN:
                self.stats["group_foreign_dropped"] += 1
                del self.logs[foreign[0]]
            self.logs[log.id] = log
            self._accepted(log, Update(ops=[op]), peer, now)
            return
        self._accepted(log, log.add_op(op), peer, now)

    def _on_message(self, peer: int, message: GroupMessage, now: float) -> None:
        log = self.logs.get(message.group)
        if log is None:
            self._ask(message.group, peer, now)
            return
        log.reader = self.context.my_id
        waiting = log.held_for_key()
        self._accepted(log, log.add_message(message), peer, now)
        if log.held_for_key() != waiting and log.id in self._stored:
            self.context.publish(GroupChanged(self.group_json(log), None))  # the page says whose messages wait

    def _on_summary(self, peer: int, frame: SummaryFrame, now: float) -> None:
        log = self.logs.get(frame.group)
        if log is None:
            # A member telling us of a group we do not have (we were added while
            # away, or its first frames found no link): ask for all of it.
            self._ask(frame.group, peer, now)
            return
        seen = self.seen.setdefault(log.id, {})
        before = seen.get(peer, {})
        seen[peer] = theirs = dict(frame.summary.delivered)
        me = self.context.my_id
        if me is not None and theirs.get(me, 0) > before.get(me, 0):
            # Per sender in order: the peer has everything of ours up to that one.
            latest = theirs[me]
            members = sorted(p for p, vector in seen.items() if vector.get(me, 0) >= latest)
            self.context.publish(GroupDelivery(log.id, f"{me}:{latest}", members))
        if frame.want:
            ops, messages = log.lacking(frame.summary, peer, FILL_LIMIT)
            out = self._outbox.setdefault(peer, [])
            out += [op_frame(op) for op in ops]
            out += [message_frame(m) for m in messages]
            out.append(summary_frame(log.id, log.summary(), want=False))
            return
        asked = self._asking.pop((log.id, peer), (None, 0.0))[0]
        self._asked_again.pop((log.id, peer), None)
        behind = any(seq > log.delivered_seq(sender) for sender, seq in theirs.items())
        if asked is not None and log.progress > asked and (behind or log.missing() != (set(), {})):
            self._ask(log.id, peer, now)  # the answer was a page of a longer list: the next

    def _accepted(self, log: GroupLog, update: Update, peer: int, now: float) -> None:
        me = self.context.my_id
        if update.dropped:
            self.stats["group_refused"] += update.dropped
        if log.id not in self._stored and me is not None and log.was_member(me):
            # We were added: the whole group is ours to keep from now on.
            self._stored.add(log.id)
            self._unsaved_ops[log.id] = [op for op, _ in log.timeline()]
            self._unsaved_messages[log.id] = log.delivered()
            self.context.publish(GroupChanged(self.group_json(log), None))
        elif log.id in self._stored:
            self._unsaved_ops.setdefault(log.id, []).extend(update.ops)
            self._unsaved_messages.setdefault(log.id, []).extend(update.messages)
        if log.id in self._stored:
            applied = dict((op.id, ok) for op, ok in log.timeline()) if update.ops else {}
            for op in update.ops:
                self.context.publish(GroupChanged(self.group_json(log), self._change(op, applied.get(op.id, False))))
            for message in update.messages:
                if not message.withheld:  # a placeholder for one written while we were out: not shown
                    self.context.publish(GroupMessageAdded(self.message_json(log, message)))
                    self._acks.add((log.id, message.sender))
        if log.missing() != (set(), {}):
            self._ask(log.id, peer, now)

    def _ask(self, group_id: str, peer: int, now: float) -> None:
        """Send ``peer`` our summary of the group, asking for what we lack (once at a time)."""
        log = self.logs.get(group_id)
        if (group_id, peer) in self._asking or len(self._asking) >= MAX_ASKING:
            return
        self._asking[(group_id, peer)] = (log.progress if log is not None else 0, now + ASK_AGAIN)
        summary = log.summary() if log is not None else Summary((), ())
        self._outbox.setdefault(peer, []).append(summary_frame(group_id, summary, want=True))
        self._reach(peer, now)

    def _fan_out(self, log: GroupLog, frame: Frame, members: set[int], now: float) -> None:
        me = self.context.my_id
        for peer in sorted(members):
            if peer != me:
                self._outbox.setdefault(peer, []).append(frame)
                self._reach(peer, now)

    def _reach(self, peer: int, now: float) -> None:
        session = self.context.session(peer)
        if session.ready_link is None:
            self.context.connect(session, now)  # its link_ready exchange will carry what we hold for it

    # ------------------------------------------------------------ the flush

    def store(self) -> None:
        """Inside the flush's transaction: store what was accepted; owe reports."""
        for group_id, ops in self._unsaved_ops.items():
            if ops and group_id in self._stored:
                self.history.add_group_ops(group_id, [(op.id, _body(op.to_fields())) for op in ops])
        for group_id, messages in self._unsaved_messages.items():
            if messages and group_id in self._stored:
                self.history.add_group_messages(group_id, [(m.sender, m.seq, _body(m.to_fields())) for m in messages])
        me = self.context.my_id
        for group_id, writer in self._acks:
            log = self.logs[group_id]
            if writer != me:
                self._outbox.setdefault(writer, []).append(summary_frame(group_id, log.summary(), want=False))
        self._acks.clear()

    def committed(self, now: float) -> None:
        """The flush is on disk: what it stored may be announced to the others."""
        self._unsaved_ops.clear()
        self._unsaved_messages.clear()
        outbox, self._outbox = self._outbox, {}
        for peer, frames in outbox.items():
            if not self.context.may_send(peer):
                continue  # a new key not accepted (or blocked): trust_changed exchanges again on acceptance
            link = self.context.session(peer).ready_link
            if link is not None:
                link.send_frames(frames, now)
            elif peer not in self._owed:
                # The next link's summary exchange carries it; until one opens, try again.
                self._owed[peer] = (now + RETRY_FIRST, RETRY_FIRST * 2)

    def deadline(self) -> float | None:
        owed = (when for when, _ in self._owed.values())
        asks = (when for _, when in self._asking.values())
        return min((*owed, *asks), default=None)

    def handle_timer(self, now: float) -> None:
        """Try again to reach the members we hold something for, and ask
        again where an answer did not come."""
        for (group_id, peer), (_, when) in list(self._asking.items()):
            if when <= now:
                del self._asking[(group_id, peer)]
                tries = self._asked_again.get((group_id, peer), 0)
                if tries < ASK_TRIES and self.context.session(peer).ready_link is not None:
                    self._asked_again[(group_id, peer)] = tries + 1
                    self._ask(group_id, peer, now)
                else:
                    self._asked_again.pop((group_id, peer), None)
                # else: the next link to it asks anew (link_ready)
        me = self.context.my_id
        for peer, (when, wait) in list(self._owed.items()):
            if when > now:
                continue
            if not any(peer in log.state.members and me in log.state.members for log in self.logs.values()):
                del self._owed[peer]  # no group we share any more
                continue
            self._owed[peer] = (now + wait, min(wait * 2, RETRY_MAX))
            session = self.context.session(peer)
            if session.ready_link is None:
                self.context.connect(session, now)
            else:
                self.link_ready(peer, now)  # a link opened without telling us: exchange now

    def rolled_back(self) -> None:
        """The commit failed: what was accepted stays unsaved, and the frames
        stay held, until a later flush stores it and commits."""
