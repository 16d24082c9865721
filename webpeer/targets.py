"""Which peer ids exist (pure): the server's word on ids the user writes to.

A message to an id the rendezvous never assigned could never be delivered,
so the page is told at once (404 ``unknown peer N``) instead of the message
waiting ``queued`` for ever.  Only the server knows which ids it gave out: a
CONNECT to one it never gave answers ``410 No Such Peer``, to one whose peer
is just offline ``404 Unknown Peer`` (docs/PROTOCOL.md 5.6).

:class:`Targets` keeps the lookups under way and the answers for the node,
which holds the page's sends to an id it asked about until the answer comes
(the engine never waits).  An id we already know (we have its key, or the
server said it is only offline) is not asked about again: ids are never
reused, so "it exists" stays true.  "Never assigned" is not remembered: the
next registration may take that id.
"""

from __future__ import annotations

from dataclasses import dataclass

# A lookup the server has not answered by then is settled as "no word":
# the message is stored and waits queued, as it would for an offline peer.
# (CONNECT's own retransmissions give up sooner; this only guards the node's
# waiting sends against an answer that never comes.)
LOOKUP_WAIT = 10.0


@dataclass(frozen=True, slots=True)
class LookupAnswer:
    """What the server said about ``peer_id``: ``never_assigned`` is True
    only on its 410; a success, a 404 or no answer at all are False."""

    peer_id: int
    never_assigned: bool


class Targets:
    """The lookups of peer ids (see the module docstring)."""

    def __init__(self) -> None:
        self._assigned: set[int] = set()  # ids the server said exist though offline (404)
        self._asking: dict[int, float] = {}  # id -> when to give up waiting for the answer
        self._answers: list[LookupAnswer] = []

    def exists(self, peer_id: int) -> bool:
        """The server said ``peer_id`` was assigned (its peer may be offline)."""
        return peer_id in self._assigned

    def asking(self, peer_id: int) -> bool:
        return peer_id in self._asking

    def ask(self, peer_id: int, now: float) -> None:
        """A lookup (a CONNECT) of ``peer_id`` is under way."""
        self._asking.setdefault(peer_id, now + LOOKUP_WAIT)

    def answered(self, peer_id: int, *, assigned: bool | None) -> None:
        """A CONNECT answer about ``peer_id``: ``assigned`` True (success or
        404), False (410), None (no answer, or an error that says nothing
        about the id)."""
        if assigned:
            self._assigned.add(peer_id)
        if self._asking.pop(peer_id, None) is not None:
            self._answers.append(LookupAnswer(peer_id, assigned is False))

    def deadline(self) -> float | None:
        return min(self._asking.values(), default=None)

    def handle_timer(self, now: float) -> None:
        for peer_id, give_up_at in list(self._asking.items()):
            if give_up_at <= now:
                self.answered(peer_id, assigned=None)

    def take_answers(self) -> list[LookupAnswer]:
        """The lookups settled since the last call, for the node."""
        answers, self._answers = self._answers, []
        return answers
