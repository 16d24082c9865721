"""One group's replicated state: its signed operations and its messages (pure).

Membership.  Every change (create, add, remove, promote, leave, rename) is
an :class:`~webpeer.group_codec.Op` signed by its author's identity key and
naming as parents the ops its author had applied, so the ops form a DAG
rooted at the create op (whose id is the group's id).  An op is accepted
only if, in the state its own parents give (its causal past), its author is
a member with the key it signed with and is allowed to make it (admins add,
remove, promote and rename; any member leaves).  That check depends on
nothing but the op and its ancestors, so every member accepts or refuses
the same ops whatever order they arrive in; a forged op (wrong key, a
non-admin's, another group's) is refused everywhere, and a replayed one has
the id it had the first time and changes nothing.

Concurrent changes.  The current state is the accepted ops replayed in one
total order every member computes the same way: parents first, and among
the ops ready at once, removals and leaves first, then by op id.  Each op
is checked again as it is replayed, so an admin's change concurrent with
that admin's removal is ignored when the removal comes first (it stays in
the log, marked ignored, so the page can say so).  Two admins removing each
other at once: the op with the smaller id wins, on every member.

Messages.  Each carries its sender's sequence number (1, 2, 3 ...), what the
sender had delivered from the others (a vector clock, ``deps``) and the ops
it had applied (``heads``).  A message is delivered when its heads are known,
its sender was a member under them, its signature holds, it is the next
from its sender and everything in its deps was delivered: per-sender order
and causal order across senders.  Anything early is held (bounded) and
:meth:`GroupLog.missing` says what is lacking; :meth:`GroupLog.lacking`
answers another member's :meth:`GroupLog.summary` with the ops and messages
it lacks, so a member can fill gaps from any other.  A member removed under
a message's heads is never given that message; a member now (added again,
or added late) is given its *withheld copy* instead: signed over the text's
hash, it keeps the sender's order and the deps deliverable without the text.
A removal's cut-off (the removed member's last message its author accepts)
turns what the removed member writes later, without having seen it, into
withheld copies too.  A message signed by the sender's new key (not the one
the group names) waits for the user's decision on that key (``key_view``).

No I/O, no clock: times come in as arguments, signing as a callable.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from webpeer.group_codec import MAX_MEMBERS, GroupError, GroupMessage, Member, Op, OpKind
from webpeer.identity import verify

Signer = Callable[[bytes], bytes]
"""Signs a payload with our identity key (``Identity.sign``)."""

KeyView = Callable[[int], "tuple[bytes, bool] | None"]
"""The key this member's user now has for a peer (webpeer/trust.py) when it is
not the one the group names, and whether the user accepted it; None if none."""


class KeyPending(GroupError):
    """A message signed by its sender's new key, which the user has not
    accepted yet: held (like one-to-one messages from a changed key), not refused."""


MAX_HELD_OPS = 1000
"""Ops kept while their parents are missing."""
MAX_HELD_MESSAGES = 5000
"""Messages kept while their causes are missing (one group)."""
MAX_AHEAD = 2000
"""How far past a sender's delivered seq a message may be and still be held."""

# Removals first among ops ready at once: a removed admin's concurrent changes do not land.
_PRIORITY = {OpKind.REMOVE: 0, OpKind.LEAVE: 0}


@dataclass
class GroupState:
    """Name, members and admins.  The log hands out shared ones: copy before changing."""

    name: str
    members: dict[int, bytes]  # peer id -> identity key
    admins: frozenset[int]

    def copy(self) -> GroupState:
        return GroupState(self.name, dict(self.members), self.admins)


@dataclass
class Update:
    """What one call added: ops newly accepted (in the order they were
    accepted) and messages newly delivered (in delivery order)."""

    ops: list[Op] = field(default_factory=list)
    messages: list[GroupMessage] = field(default_factory=list)
    dropped: int = 0  # held things that turned out bad once their causes came

    def extend(self, other: Update) -> None:
        self.ops += other.ops
        self.messages += other.messages
        self.dropped += other.dropped


@dataclass(frozen=True)
class Summary:
    """What a member has, to ask another for what it lacks."""

    heads: tuple[str, ...]
    delivered: tuple[tuple[int, int], ...]  # (sender, highest seq delivered in order)


def _initial(create: Op) -> GroupState:
    return GroupState(create.name, {m.peer: m.key for m in create.members}, frozenset({create.author}))


def _apply(state: GroupState, op: Op) -> str | None:
    """Apply ``op`` to ``state`` in place, or say why it may not be."""
    author = op.author
    if author not in state.members:
        return f"peer {author} is not a member"
    if op.kind is OpKind.LEAVE:
        del state.members[author]
        state.admins = state.admins - {author}
        return None
    if author not in state.admins:
        return f"peer {author} is not an admin"
    if op.kind is OpKind.ADD:
        joining = [m for m in op.members if m.peer not in state.members]
        if not joining:
            return "everyone added is a member already"
        if len(state.members) + len(joining) > MAX_MEMBERS:
            return f"a group holds at most {MAX_MEMBERS} members"
        for member in joining:
            state.members[member.peer] = member.key
        return None
    if op.kind is OpKind.REMOVE:
        if op.target == author:
            return "a member leaves rather than removes itself"
        if op.target not in state.members:
            return f"peer {op.target} is not a member"
        del state.members[op.target]
        state.admins = state.admins - {op.target}
        return None
    if op.kind is OpKind.PROMOTE:
        if op.target not in state.members:
            return f"peer {op.target} is not a member"
        if op.target in state.admins:
            return f"peer {op.target} is an admin already"
        state.admins = state.admins | {op.target}
        return None
    if op.kind is OpKind.RENAME:
        state.name = op.name
        return None
    return "a group has one create operation"


class GroupLog:
    """One group as this member knows it."""

    def __init__(self, create: Op, *, check_signatures: bool = True, key_view: KeyView | None = None) -> None:
        if create.kind is not OpKind.CREATE or create.group or create.parents:
            raise GroupError("a group starts with a create operation")
        keys = {m.peer: m.key for m in create.members}
        if create.author not in keys:
            raise GroupError("a create operation's author must be among its members")
        self._check = check_signatures  # off only to rebuild from our own store
        self.reader: int | None = None  # our id, once known: who may take withheld copies
        self._key_view = key_view
        if self._check and not verify(keys[create.author], create.sig, create.signed_bytes()):
            raise GroupError("bad signature on the create operation")
        self.id = create.id
        self.create = create
        self._ops: dict[str, Op] = {create.id: create}
        self._heads: set[str] = {create.id}
        self._held_ops: dict[str, Op] = {}
        self._states: dict[frozenset[str], GroupState] = {}
        self._linear: list[str] = [create.id]
        self._ignored: set[str] = set()
        self.state = _initial(create)
        self._delivered: dict[int, int] = {}
        self._messages: dict[tuple[int, int], GroupMessage] = {}
        self._order: list[tuple[int, int]] = []
        self._position: dict[tuple[int, int], int] = {}  # delivered message -> its index in _order
        self._held: dict[tuple[int, int], GroupMessage] = {}
        self._verified: set[tuple[int, int]] = set()  # held ones whose sender and signature were checked
        self._removals: dict[int, list[Op]] = {}  # peer -> accepted ops removing it (their cut-offs)
        self._pending: set[tuple[int, int]] = set()  # held ones signed by a new key the user has not accepted

    # -- making things (ours) ---------------------------------------------------------------------------------

    @classmethod
    def create_group(
        cls,
        sign: Signer,
        me: Member,
        name: str,
        others: Iterable[Member],
        nonce: str,
        at: int,
        *,
        key_view: KeyView | None = None,
    ) -> GroupLog:
        members = {m.peer: m for m in others}
        members[me.peer] = me
        op = Op("", OpKind.CREATE, me.peer, (), at, name=name, members=tuple(members[p] for p in sorted(members)))
        op = replace(op, nonce=nonce)
        return cls(replace(op, sig=sign(op.signed_bytes())), key_view=key_view)

    def make_op(
        self,
        sign: Signer,
        me: int,
        kind: OpKind,
        at: int,
        *,
        name: str = "",
        members: tuple[Member, ...] = (),
        target: int = 0,
    ) -> Op:
        """Our own op on top of everything we have, accepted here at once
        (GroupError if we may not make it: the page's mistake)."""
        op = Op(
            self.id,
            kind,
            me,
            tuple(sorted(self._heads)),
            at,
            name=name if kind is OpKind.RENAME else "",
            members=members if kind is OpKind.ADD else (),
            target=target if kind in (OpKind.REMOVE, OpKind.PROMOTE) else 0,
            # The cut-off: what we have of the target's is all of it we accept unless it comes back.
            upto=self._delivered.get(target, 0) if kind is OpKind.REMOVE else 0,
        )
        op = replace(op, sig=sign(op.signed_bytes()))
        self.add_op(op)
        return op

    def post(self, sign: Signer, me: int, text: str, at: int) -> GroupMessage:
        """Our next message, delivered here at once."""
        if me not in self.state.members:
            raise GroupError("you are not a member of this group")
        members = self.state.members
        deps = tuple((s, q) for s, q in sorted(self._delivered.items()) if s != me and s in members)
        seq = self._delivered.get(me, 0) + 1
        message = GroupMessage(self.id, me, seq, deps, tuple(sorted(self._heads)), at, text)
        message = replace(message, sig=sign(message.signed_bytes()))
        self._deliver(message)
        return message

    # -- ops ------------------------------------------------------------------------------------------------

    def has_op(self, op_id: str) -> bool:
        return op_id in self._ops

    def add_op(self, op: Op) -> Update:
        """Accept another member's op (or hold it until its parents come).
        Raises GroupError for an op no member accepts; a duplicate is no news."""
        update = Update()
        if op.id in self._ops or op.id in self._held_ops:
            return update  # the create op included
        if op.group != self.id:
            raise GroupError("an operation of another group")
        if any(parent not in self._ops for parent in op.parents):
            if len(self._held_ops) >= MAX_HELD_OPS:
                raise GroupError(f"more than {MAX_HELD_OPS} operations wait for their parents")
            self._held_ops[op.id] = op
            return update
        self._accept(op)
        update.ops.append(op)
        update.extend(self._release_held_ops())
        self._recompute()
        update.extend(self._deliver_ready())
        return update

    def _accept(self, op: Op) -> None:
        past = self.state_at(op.parents)
        key = past.members.get(op.author)
        if key is None:
            raise GroupError(f"operation by peer {op.author}, not a member when it was made")
        if self._check and not verify(key, op.sig, op.signed_bytes()):
            raise GroupError(f"bad signature on an operation by peer {op.author}")
        reason = _apply(past.copy(), op)
        if reason is not None:
            raise GroupError(f"operation refused: {reason}")
        self._ops[op.id] = op
        if op.kind is OpKind.REMOVE:
            self._removals.setdefault(op.target, []).append(op)
        self._heads.difference_update(op.parents)
        self._heads.add(op.id)

    def _release_held_ops(self) -> Update:
        update = Update()
        progress = True
        while progress:
            progress = False
            for op_id, op in list(self._held_ops.items()):
                if all(parent in self._ops for parent in op.parents):
                    del self._held_ops[op_id]
                    progress = True
                    try:
                        self._accept(op)
                    except GroupError:
                        update.dropped += 1
                    else:
                        update.ops.append(op)
        return update

    def _ancestors(self, heads: Iterable[str]) -> set[str]:
        seen: set[str] = set()
        stack = [h for h in heads if h in self._ops]
        while stack:
            op_id = stack.pop()
            if op_id not in seen:
                seen.add(op_id)
                stack.extend(self._ops[op_id].parents)
        return seen

    def _linearize(self, subset: set[str]) -> list[str]:
        """The ops in ``subset`` (closed under parents) in the one order every member replays."""
        waiting = {op_id: sum(1 for p in set(self._ops[op_id].parents) if p in subset) for op_id in subset}
        children: dict[str, list[str]] = {}
        for op_id in subset:
            for parent in set(self._ops[op_id].parents):
                children.setdefault(parent, []).append(op_id)
        ready = [(_PRIORITY.get(self._ops[i].kind, 1), i) for i, n in waiting.items() if n == 0]
        heapq.heapify(ready)
        order: list[str] = []
        while ready:
            _, op_id = heapq.heappop(ready)
            order.append(op_id)
            for child in children.get(op_id, ()):
                waiting[child] -= 1
                if waiting[child] == 0:
                    heapq.heappush(ready, (_PRIORITY.get(self._ops[child].kind, 1), child))
        return order

    def _replay(self, order: list[str]) -> tuple[GroupState, set[str]]:
        state = _initial(self.create)
        ignored: set[str] = set()
        for op_id in order[1:]:  # the create op is first: it is every op's ancestor
            if _apply(state, self._ops[op_id]) is not None:
                ignored.add(op_id)
        return state, ignored

    def state_at(self, heads: Iterable[str]) -> GroupState:
        """The state the ops ``heads`` and their ancestors give (all must be known)."""
        key = frozenset(heads)
        state = self._states.get(key)
        if state is None:
            state, _ = self._replay(self._linearize(self._ancestors(key)))
            self._states[key] = state  # the ancestors of a set of ops never change
        return state

    def _recompute(self) -> None:
        self._linear = self._linearize(set(self._ops))
        self.state, self._ignored = self._replay(self._linear)

    def timeline(self) -> list[tuple[Op, bool]]:
        """Every accepted op in the replay order, and whether it took effect."""
        return [(self._ops[i], i not in self._ignored) for i in self._linear]

    @property
    def heads(self) -> tuple[str, ...]:
        return tuple(sorted(self._heads))

    # -- messages -------------------------------------------------------------------------------------------

    def add_message(self, message: GroupMessage) -> Update:
        """Take another member's message: delivered now with whatever it
        unblocks, held until its causes come, or GroupError if forged.  A
        withheld copy (no text) stands for a message :attr:`reader` (we) was
        not a member for when it was written: it is delivered as a placeholder
        that keeps the sender's order and what follows it deliverable."""
        if message.group != self.id:
            raise GroupError("a message of another group")
        key = message.key
        known = self._messages.get(key) or (self._held.get(key) if key in self._verified else None)
        if known is not None:
            if known.without_text() != message.without_text():
                raise GroupError(f"peer {message.sender} sent two different messages as number {message.seq}")
            return Update()  # the same again (or its withheld copy)
        if message.seq <= self._delivered.get(message.sender, 0):
            return Update()  # delivered before this log was rebuilt without it: nothing to do
        if message.seq > self._delivered.get(message.sender, 0) + MAX_AHEAD:
            raise GroupError(f"message number {message.seq} from peer {message.sender} is too far ahead")
        if key not in self._held and len(self._held) >= MAX_HELD_MESSAGES:
            raise GroupError(f"more than {MAX_HELD_MESSAGES} messages wait for what they follow")
        if all(h in self._ops for h in message.heads):
            try:
                self._check_message(message)  # raises for a forgery: nothing is held
            except KeyPending:
                self._held[key] = message  # checked again when the user decides (recheck)
                self._pending.add(key)
                return Update()
            self._held[key] = message
            self._verified.add(key)
        elif key not in self._held:
            self._held[key] = message  # checked once its heads come
        return self._deliver_ready()

    def _check_message(self, message: GroupMessage) -> None:
        members = self.state_at(message.heads).members
        key = members.get(message.sender)
        if key is None:
            raise GroupError(f"message from peer {message.sender}, not a member when it was written")
        if (
            message.withheld
            and self._check
            and (self.reader is None or self.reader in members)
            and not self._cut(message)
        ):
            raise GroupError(f"a withheld copy of a message from peer {message.sender} we may read")
        if not self._check or verify(key, message.sig, message.signed_bytes()):
            return
        # The sender's key changed since the group named it: the user's decision on the new key decides.
        view = self._key_view(message.sender) if self._key_view is not None else None
        if view is not None and view[0] != key and verify(view[0], message.sig, message.signed_bytes()):
            if view[1]:
                return
            raise KeyPending(f"a message from peer {message.sender}'s new key, not accepted yet")
        raise GroupError(f"bad signature on a message from peer {message.sender}")

    def _deliver_ready(self) -> Update:
        update = Update()
        progress = True
        while progress:
            progress = False
            for sender in {s for s, _ in self._held}:
                key = (sender, self._delivered.get(sender, 0) + 1)
                message = self._held.get(key)
                if message is None:
                    continue
                if key not in self._verified:
                    if not all(h in self._ops for h in message.heads):
                        continue
                    try:
                        self._check_message(message)
                    except KeyPending:
                        self._pending.add(key)  # stays held until the user decides (recheck)
                        continue
                    except GroupError:
                        del self._held[key]  # a forgery that waited for its heads
                        update.dropped += 1
                        continue
                    self._verified.add(key)
                if all(self._delivered.get(s, 0) >= q for s, q in message.deps):
                    del self._held[key]
                    self._verified.discard(key)
                    if self._cut(message):
                        message = message.without_text()  # kept in order, never shown
                    self._deliver(message)
                    update.messages.append(message)
                    progress = True
        return update

    def recheck(self) -> Update:
        """The user decided about a key: deliver what waited for it (a key
        accepted), or drop it (a key blocked); keep it while still undecided."""
        update = Update()
        for key in sorted(self._pending):
            message = self._held[key]
            try:
                self._check_message(message)
            except KeyPending:
                continue
            except GroupError:
                del self._held[key]
                update.dropped += 1
            else:
                self._verified.add(key)
            self._pending.discard(key)
        update.extend(self._deliver_ready())
        return update

    def held_for_key(self) -> list[int]:
        """The senders whose messages wait for the user to accept their new key."""
        return sorted({sender for sender, _ in self._pending})

    def _cut(self, message: GroupMessage) -> bool:
        """Written by a member past the cut-off of a removal (that took effect)
        it had not seen: so a removed member cannot go on writing "concurrently"."""
        removals = self._removals.get(message.sender)
        if not removals:
            return False
        past: set[str] | None = None
        for op in removals:
            if message.seq > op.upto and op.id not in self._ignored:
                past = self._ancestors(message.heads) if past is None else past
                if op.id not in past:
                    return True
        return False

    def _deliver(self, message: GroupMessage) -> None:
        self._messages[message.key] = message
        self._position[message.key] = len(self._order)
        self._order.append(message.key)
        self._delivered[message.sender] = message.seq

    def delivered(self) -> list[GroupMessage]:
        """Every delivered message (withheld copies too), in this member's delivery order."""
        return [self._messages[key] for key in self._order]

    def readable(self) -> list[GroupMessage]:
        """The delivered messages with their text: what the page shows."""
        return [m for m in self.delivered() if not m.withheld]

    @property
    def progress(self) -> int:
        """Grows with every op accepted and every message delivered."""
        return len(self._ops) + len(self._order)

    def delivered_vector(self) -> dict[int, int]:
        return dict(self._delivered)

    def delivered_seq(self, sender: int) -> int:
        return self._delivered.get(sender, 0)

    # -- filling gaps ---------------------------------------------------------------------------------------

    def summary(self) -> Summary:
        return Summary(self.heads, tuple(sorted(self._delivered.items())))

    def missing(self) -> tuple[set[str], dict[int, int]]:
        """What we know we lack: op ids named as parents or heads but unknown,
        and per sender the first seq we wait for (something later is held)."""
        ops = {p for op in self._held_ops.values() for p in op.parents if p not in self._ops}
        ops |= {h for m in self._held.values() for h in m.heads if h not in self._ops}
        gaps: dict[int, int] = {}
        for message in self._held.values():
            for sender, seq in ((message.sender, message.seq - 1), *message.deps):
                if seq > self._delivered.get(sender, 0):
                    gaps[sender] = self._delivered.get(sender, 0) + 1
        return ops, gaps

    def was_member(self, peer: int) -> bool:
        return any(peer in {m.peer for m in op.members} for op in self._ops.values())

    def lacking(self, summary: Summary, asker: int, limit: int = 200) -> tuple[list[Op], list[GroupMessage]]:
        """The ops and at most ``limit`` messages ``asker`` lacks, given its
        summary, in an order it can apply them in.  Nothing for a peer that was
        never a member; no message written under ops that exclude the asker
        (to a member again, its withheld copy)."""
        if not self.was_member(asker):
            return [], []
        have = self._ancestors(summary.heads)
        if summary.heads:
            have.add(self.id)  # it has the create op, even if we know none of its heads
        ops = [self._ops[i] for i in self._linear if i not in have]
        theirs = dict(summary.delivered)
        # Only what is past their vector, in our delivery order (a causal order they can apply).
        wanted = sorted(
            self._position[(sender, seq)]
            for sender, last in self._delivered.items()
            for seq in range(theirs.get(sender, 0) + 1, last + 1)
        )
        messages: list[GroupMessage] = []
        member_now = asker in self.state.members
        for position in wanted:
            if len(messages) >= limit:
                break
            message = self._messages[self._order[position]]
            if asker in self.state_at(message.heads).members:
                if not message.withheld or self._cut(message):  # else another member gives it the text
                    messages.append(message)
            elif member_now:
                # Written while it was out (it was removed, then added again): not
                # the text, but the signed proof that lets what follows be delivered.
                messages.append(message.without_text())
        return ops, messages
