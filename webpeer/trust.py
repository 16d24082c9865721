"""Trust in other peers' keys (pure): the key-change gate and verification.

The registry says which key a peer id has; the store remembers the first
one (trust on first use) and notices when it changes (store.py,
``remember_peer``).  This component turns that into what the peer does:

    trusted  the registry's key is the one the user trusts: messages go
    changed  the registry gives a new key the user has not accepted: outgoing
             messages are ``held`` ("key changed"), no link is opened to the
             new key (one we opened is closed); what the new key sends us is
             stored hidden and shown only once the user accepts the key
    blocked  the user refused the key: nothing is sent to it (held messages
             fail, "key blocked"), its links are closed and nothing it sends
             is stored or acknowledged

    trusted --registry gives a new key--> changed --accept--> trusted
    changed --the trusted key comes back (RESTORED)--> trusted
    changed | trusted --block--> blocked --accept--> trusted

``verified``: the user compared the safety number (:func:`safety_number`)
with the peer out of band and marked the key verified.  A verified peer
whose key changes is flagged louder (``verified_key_changed``).

The state lives in the store (it survives restarts); this component caches
what it read per peer (the message path asks per frame) and drops the cache
whenever it writes or the flush's transaction rolls back.  It reaches the
engine only through :class:`TrustContext`: when a peer's trust changes, the
engine closes the links that :func:`link_verdict` condemns and holds or
releases the peer's messages (webpeer/message_flow.py).
"""

from __future__ import annotations

import enum
import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from .api import ApiError
from .events import PageEvent, PeerTrustChanged
from .identity import fingerprint
from .link import Role
from .store import KnownPeer, Status, TrustResult

logger = logging.getLogger("webpeer")

JSON = dict[str, Any]

KEY_CHANGED = "key changed"
KEY_BLOCKED = "key blocked"

# The safety number, after Signal's "numeric fingerprint": per key, SHA-512
# iterated so that finding a key whose number matches a given one costs
# 2^(100 bits of the number) x 5200 hashes; 30 digits per key; the two
# halves sorted, so both peers show the same 60 digits.
SAFETY_VERSION = b"\x00\x01peerlink-safety"
SAFETY_ITERATIONS = 5200
SAFETY_GROUPS = 12
SAFETY_GROUP_DIGITS = 5


class TrustState(enum.StrEnum):
    TRUSTED = "trusted"
    CHANGED = "changed"
    BLOCKED = "blocked"


class Action(enum.StrEnum):
    """What the user may do about a peer's key (POST /api/peers/N/trust)."""

    ACCEPT = "accept"  # trust the current key (it was compared); releases held messages
    BLOCK = "block"  # never send to or take anything from the current key
    VERIFY = "verify"  # the safety number matched: the current key is verified (and accepted)
    UNVERIFY = "unverify"


@dataclass(frozen=True, slots=True)
class PeerTrust:
    """One peer's trust, as read from the store."""

    state: TrustState
    current_key: bytes | None  # what the registry last gave
    trusted_key: bytes | None  # what the user trusts (== current_key when trusted)
    previous_key: bytes | None  # while changed: the trusted key; after: the key before the last change
    verified: bool  # the current key is trusted and is the one the user verified
    verified_key_changed: bool  # a verified key was replaced by one the user did not accept

    def to_json(self) -> JSON:
        """The fields a peer's JSON gets (api.py, "peer")."""
        return {
            "trust": str(self.state),
            "key_changed": self.state is TrustState.CHANGED,
            "verified": self.verified,
            "verified_key_changed": self.verified_key_changed,
        }


UNKNOWN = PeerTrust(TrustState.TRUSTED, None, None, None, False, False)
"""A peer never seen: its first key will be trusted."""


def assess(known: KnownPeer | None) -> PeerTrust:
    """What the store's record means."""
    if known is None:
        return UNKNOWN
    if known.blocked:
        state = TrustState.BLOCKED
    elif known.key_changed:
        state = TrustState.CHANGED
    else:
        state = TrustState.TRUSTED
    trusted = known.trusted_key
    verified_key = known.verified_key
    return PeerTrust(
        state=state,
        current_key=known.public_key,
        trusted_key=trusted,
        previous_key=known.previous_key,
        verified=state is TrustState.TRUSTED and verified_key is not None and verified_key == known.public_key,
        verified_key_changed=(
            state is not TrustState.TRUSTED
            and verified_key is not None
            and verified_key == trusted
            and verified_key != known.public_key
        ),
    )


def _safety_half(public_key: bytes) -> str:
    digest = hashlib.sha512(SAFETY_VERSION + public_key).digest()
    for _ in range(SAFETY_ITERATIONS - 1):
        digest = hashlib.sha512(digest + public_key).digest()
    # Six 5-byte chunks, each reduced to 5 digits (as Signal does).
    return "".join(f"{int.from_bytes(digest[i : i + 5], 'big') % 100_000:05d}" for i in range(0, 30, 5))


def safety_number(key_a: bytes, key_b: bytes) -> str:
    """The pair's safety number: 12 groups of 5 digits, separated by spaces.
    The same whichever key comes first, so both peers see the same one."""
    digits = "".join(sorted((_safety_half(key_a), _safety_half(key_b))))
    return " ".join(digits[i : i + SAFETY_GROUP_DIGITS] for i in range(0, len(digits), SAFETY_GROUP_DIGITS))


def send_gate(trust: PeerTrust) -> tuple[Status, str] | None:
    """Where a peer's outgoing messages go instead of out, and why; None: they may go."""
    if trust.state is TrustState.CHANGED:
        return Status.HELD, KEY_CHANGED
    if trust.state is TrustState.BLOCKED:
        return Status.FAILED, KEY_BLOCKED
    return None


def link_verdict(trust: PeerTrust, link_key: bytes | None, role: Role) -> str | None:
    """Why a link to a peer with this trust must close, or None to keep it.

    A link to a blocked key goes.  While a change is pending, a link we
    opened to the new key goes (we send nothing to it); one the new key
    opened to us stays, to receive what it sends (stored hidden).  Once a key
    is trusted again, a link to any other key goes."""
    if link_key is None or trust.current_key is None:
        return None  # not authenticated yet: its hello is checked against the trust then
    if trust.state is TrustState.BLOCKED:
        return KEY_BLOCKED if link_key == trust.current_key else None
    if link_key == trust.trusted_key:
        return None
    if trust.state is TrustState.CHANGED:
        return KEY_CHANGED if role is Role.CONNECTOR else None
    return "the peer's key is no longer the trusted one"


class TrustHistory(Protocol):
    """What trust needs of the history store (webpeer.store.Store)."""

    def remember_peer(self, peer_id: int, public_key: bytes, name: str, now: float) -> TrustResult: ...

    def known_peer(self, peer_id: int) -> KnownPeer | None: ...

    def accept_key_change(self, peer_id: int) -> bool: ...

    def block_key(self, peer_id: int, public_key: bytes, now: float) -> bool: ...

    def unblock_key(self, peer_id: int, public_key: bytes) -> bool: ...

    def set_verified_key(self, peer_id: int, public_key: bytes | None) -> bool: ...

    def reveal_messages(self, peer: int) -> int: ...

    def drop_hidden_messages(self, peer: int) -> int: ...


class TrustContext(Protocol):
    """What trust may ask of the engine."""

    @property
    def my_public_key(self) -> bytes: ...

    def publish(self, event: PageEvent) -> None: ...

    def trust_changed(self, peer_id: int, now: float) -> None:
        """Act on the peer's new trust: close the links :func:`link_verdict`
        condemns, then hold, fail or release its messages."""


class Trust:
    def __init__(self, context: TrustContext, history: TrustHistory) -> None:
        self.context = context
        self.history = history
        self._cache: dict[int, PeerTrust] = {}

    # ------------------------------------------------------------ queries

    def of(self, peer_id: int) -> PeerTrust:
        trust = self._cache.get(peer_id)
        if trust is None:
            trust = self._cache[peer_id] = assess(self.history.known_peer(peer_id))
        return trust

    def send_gate(self, peer_id: int) -> tuple[Status, str] | None:
        return send_gate(self.of(peer_id))

    def may_connect(self, peer_id: int) -> bool:
        """We may open a link (and ask the server to introduce us)."""
        return self.of(peer_id).state is TrustState.TRUSTED

    def refuses(self, peer_id: int | None, public_key: bytes | None) -> bool:
        """A link from this key is refused: nothing from it is stored or acknowledged."""
        if peer_id is None or public_key is None:
            return False
        trust = self.of(peer_id)
        return trust.state is TrustState.BLOCKED and public_key == trust.current_key

    def hides(self, peer_id: int | None, public_key: bytes | None) -> bool:
        """A message over a link authenticated with this key is stored hidden
        (its key is not the trusted one, and the user has not decided yet)."""
        if peer_id is None:
            return False
        trust = self.of(peer_id)
        return trust.state is not TrustState.TRUSTED and public_key != trust.trusted_key

    def check_send(self, peer_id: int) -> None:
        """The page's new message: refused for a blocked key (a held one is taken)."""
        if self.of(peer_id).state is TrustState.BLOCKED:
            raise ApiError(409, f"peer {peer_id}'s key is blocked: nothing is sent to it (accept the key to unblock)")

    def safety(self, peer_id: int) -> JSON:
        """GET /api/peers/N/safety (api.py, "safety")."""
        trust = self.of(peer_id)
        if trust.current_key is None:
            raise ApiError(404, f"no key is known for peer {peer_id} yet")
        mine = self.context.my_public_key
        return {
            "peer": peer_id,
            "safety_number": safety_number(mine, trust.current_key),
            "my_fingerprint": fingerprint(mine),
            "their_fingerprint": fingerprint(trust.current_key),
            "previous_fingerprint": fingerprint(trust.previous_key) if trust.previous_key else None,
            **trust.to_json(),
        }

    # ------------------------------------------------------------ the registry's word

    def remember(self, peer_id: int, public_key: bytes, name: str, now: float) -> TrustResult:
        """The registry gave ``public_key`` for ``peer_id``: record it and act on a change."""
        result = self.history.remember_peer(peer_id, public_key, name, now)
        if result is TrustResult.SAME:
            return result
        self._cache.pop(peer_id, None)
        if result is TrustResult.CHANGED:
            logger.warning(
                "peer %d now has a different key (fingerprint %s): sending to it is held until the user accepts it",
                peer_id,
                fingerprint(public_key),
            )
        elif result is TrustResult.RESTORED:
            logger.info("peer %d has its trusted key again: what was held goes", peer_id)
            # The key change ended without acceptance: what that key sent is dropped.
            self.history.drop_hidden_messages(peer_id)
        if result is not TrustResult.NEW:
            self._changed(peer_id, now)
        return result

    def forget(self, peer_ids: Iterable[int]) -> None:
        """The store forgot these strangers (Store.prune_strangers): so do we."""
        for peer_id in peer_ids:
            self._cache.pop(peer_id, None)

    # ------------------------------------------------------------ the user's word

    def act(self, peer_id: int, action: Action, now: float) -> JSON:
        """Accept, block, verify or unverify the peer's current key; returns
        the new :meth:`safety`.  ApiError 404 for a peer with no known key,
        409 for an action that does not apply to its state."""
        known = self.history.known_peer(peer_id)
        if known is None:
            raise ApiError(404, f"no key is known for peer {peer_id} yet")
        trust = assess(known)
        key = known.public_key
        if action is Action.ACCEPT:
            if trust.state is TrustState.TRUSTED:
                raise ApiError(409, f"peer {peer_id}'s key is already trusted: no change to accept")
            self._accept(peer_id, key)
        elif action is Action.BLOCK:
            if trust.state is TrustState.BLOCKED:
                raise ApiError(409, f"peer {peer_id}'s key is already blocked")
            self.history.block_key(peer_id, key, now)
            self.history.drop_hidden_messages(peer_id)
        elif action is Action.VERIFY:
            if trust.state is TrustState.BLOCKED:
                raise ApiError(409, f"peer {peer_id}'s key is blocked: accept it before verifying it")
            if trust.state is TrustState.CHANGED:
                self._accept(peer_id, key)  # the safety number matched: a stronger accept
            self.history.set_verified_key(peer_id, key)
        else:
            self.history.set_verified_key(peer_id, None)
        logger.info("peer %d: the user chose %s for key %s", peer_id, action, fingerprint(key))
        self._changed(peer_id, now)
        return self.safety(peer_id)

    def rolled_back(self) -> None:
        """The transaction the cache was read in (or written by) is undone."""
        self._cache.clear()

    # ------------------------------------------------------------ internals

    def _accept(self, peer_id: int, key: bytes) -> None:
        self.history.unblock_key(peer_id, key)
        self.history.accept_key_change(peer_id)
        self.history.reveal_messages(peer_id)

    def _changed(self, peer_id: int, now: float) -> None:
        self._cache.pop(peer_id, None)
        trust = self.of(peer_id)
        self.context.publish(PeerTrustChanged(peer_id, str(trust.state), trust.verified, trust.verified_key_changed))
        self.context.trust_changed(peer_id, now)
