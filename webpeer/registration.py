"""The peer's side of the rendezvous protocol, as a sans-IO state machine.

Messages in (already decoded, from the server's address) and ``now``;
datagrams for the server and events out.  It registers (challenge, then a
signed REGISTER), refreshes well before the TTL runs out, registers again
when the server has forgotten it (401 on refresh, e.g. after a server
restart) or when the server stops answering, watches its contacts'
presence (WATCH, then the server's PRESENCE requests: docs/PROTOCOL.md 5.9),
asks for introductions, acknowledges the server's INTRODUCE and PRESENCE
requests and unregisters on a clean exit.

Presence costs what the contacts cost, not what the server's population
does: one WATCH per 10 contacts at registration and every
:data:`WATCH_REPAIR` seconds (which also repairs a PRESENCE the server gave
up on), a PRESENCE when one of them changes (contacts added many at once are
gathered into full WATCHes under a token bucket: :data:`WATCH_RATE`), and a heartbeat every
``list_interval`` seconds (an empty WATCH, or, while someone looks at the
directory view, every :data:`DIRECTORY_EVERY` th one the first LIST page:
:meth:`RegistrationMachine.show_directory`; with no one looking, the page is
fetched only on demand, :meth:`RegistrationMachine.directory_on_demand`).  Against a server
that does not know WATCH (400 Unknown method) the machine falls back to the
old walk of the whole LIST, paged, every ``list_interval`` seconds.

It also says how the server is doing (:attr:`RegistrationMachine.server_state`):
``connecting`` until it answers, ``unreachable`` once requests have gone
unanswered for :data:`SILENCE_NOTICE` seconds (:class:`ServerSilent`, and
:class:`ServerAnswered` when it answers again), ``registered`` when it has
given us an id.  A silent server is retried every second or so for as long
as it stays silent, so that peers register again within about two seconds
of its return however long it was away; a server that answers but refuses
is retried with an exponential backoff.

Several servers (``webpeer --server a:3478,b:3478``, or one name that
resolved to several addresses; the node resolves them, in order): the peer
registers with the first that answers.  When the server in use stops
answering (a REFRESH, a heartbeat or a registration times out), it moves on
to the next at once, with a fresh conversation, and registers there (the
registry gives it the same id).  While on any but the first, it asks the
first for a Binding every :data:`PRIMARY_RECHECK` seconds and moves back
when it answers: operators list their preferred server first.  When the
servers' addresses include both IPv4 and IPv6, the peer also asks the first
of the family it does not register over for a Binding (dual_stack.py), with
every REGISTER and REFRESH, and registers what it learns as one more local
candidate: its address in that family.

Happy Eyeballs (RFC 8305): when one server's addresses (those of one name:
A and AAAA records) include both families, a registration with a server not
known to answer (at the start, after silence, after a fail-over) sends its
first REGISTER to the address in use (at first the first in getaddrinfo's
order, IPv6 first on most hosts) and, if nothing has come back after :data:`CONNECTION_ATTEMPT_DELAY`
(or that send failed at once: :meth:`RegistrationMachine.send_failed`), the
same first REGISTER to the first address of the other family too.  The
first to answer wins: the registration goes on over that address, the other
attempt is dropped and its late answer is ignored (counted in
:attr:`RegistrationMachine.late_race_answers`).  So a name whose IPv6 path
silently drops packets costs 250 ms and a round trip, not the ~4.75 s of a
fail-over.  Registering again with a server that has just answered (a 401,
new candidates) races nothing: a slow answer must not move the peer to the
other family.  Addresses given as separate servers (``--server 192.0.2.1,[2001:db8::1]``)
are not raced: they are fail-over servers, tried in the order given.

The protocol itself (building and signing REGISTER, retransmission, matching
answers, acknowledging INTRODUCE once) is rendezvous.client_protocol's, shared
with the asyncio client; this machine decides when to register, refresh,
list and back off.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from rendezvous.client_protocol import (
    INTERACTIVE_POLICY,
    Answer,
    Introduction,
    PeerInfo,
    PresenceNotice,
    RegisterHandshake,
    RegisterRefused,
    RelayData,
    ServerConversation,
    error_of,
    relay_indication,
    session_request,
)
from rendezvous.ratelimit import TokenBucket
from rendezvous.stun import (
    MAX_IDS_PER_ATTRIBUTE,
    MAX_RELAY_PAYLOAD,
    MAX_WATCH_IDS,
    Address,
    Attr,
    MailItem,
    Message,
    MessageClass,
    Method,
    PeerEntry,
    encode,
)
from rendezvous.transactions import RetransmitPolicy

from .dual_stack import OtherFamilyProbe, family, other_family_server
from .identity import Identity

POLICY = INTERACTIVE_POLICY
REFRESH_FRACTION = 0.35  # refresh at 35% of the TTL: 21 s of 60
# A server that answers "no" is asked again later and later, up to this.
MAX_BACKOFF = 30.0
# A silent server is asked again this soon after an attempt times out (a
# random point in the range, so that the peers of a server that comes back
# do not all arrive in the same millisecond).  With the attempt's own
# retransmissions (gaps of 0.25 to 2 s) nothing we send is ever more than
# 2 s apart, whatever the length of the outage: one attempt (5 datagrams)
# every ~5.5 s costs the server about what a registered peer's LISTs do.
SILENT_RETRY = (0.5, 1.0)
# Requests unanswered this long: the server is said to be unreachable.
SILENCE_NOTICE = 3.0
# The whole watched set is sent again this often: the server's PRESENCE
# survives the loss of six datagrams in a row by retransmission; beyond that
# (a long outage of our path) it gives up, and this brings the truth back.
WATCH_REPAIR = 60.0
# The server's cap on watched ids per peer (docs/PROTOCOL.md 5.9).  Past it
# the engine hands us the contacts it most needs (most recent activity) and
# the ids that fall out of that set are unwatched (UNWATCH-IDS, up to
# MAX_IDS_PER_ATTRIBUTE in one WATCH) to make room.
MAX_WATCHED = 256
# The directory view (who else is online, for the page to pick from): the
# first LIST page only, every this many heartbeats, and only while a page (or
# the terminal) is open to show it.  One request and one reply of at most
# 1200 bytes, whatever the server's population, but that reply is ~80% of an
# idle peer's bytes from the server (bench/PRESENCE.md): not paid for no one.
DIRECTORY_EVERY = 2
# Contacts added many at once (a page adding 300, say) are not watched one
# WATCH each: the server allows a peer 50 requests a second, burst 100
# (ServerConfig.requests_per_second), shared with its CONNECTs and LISTs, and
# what it refused waited for the next WATCH_REPAIR.  New ids are gathered: a
# full request (MAX_WATCH_IDS) goes at once, fewer go at once only if no
# WATCH went in the last WATCH_GATHER seconds (a single add is not delayed),
# else at that point, with whatever came meanwhile.  Under that, a token
# bucket: WATCH_BURST requests at once, enough for the whole watched set
# (MAX_WATCHED / MAX_WATCH_IDS = 26), then WATCH_RATE a second, a fifth of
# the server's rate.  So an id waits at most WATCH_GATHER, or one refill of
# the bucket (WATCH_BURST / WATCH_RATE = 3 s) after a burst, never the repair.
WATCH_RATE = 10.0
WATCH_BURST = 30.0
WATCH_GATHER = 0.25
# While registered with a fall-back server, the first is asked this often
# whether it is back (one Binding: 20 bytes each way).
PRIMARY_RECHECK = 30.0
# RFC 8305's recommended Connection Attempt Delay: how long the first REGISTER
# to one family has alone before the same goes to the other family too.
CONNECTION_ATTEMPT_DELAY = 0.25


class ServerState(enum.Enum):
    """What the page and /api/me say about the server."""

    CONNECTING = "connecting"  # not registered, and the server is not known to be silent
    UNREACHABLE = "unreachable"  # requests unanswered for SILENCE_NOTICE seconds
    REGISTERED = "registered"


class RegState(enum.Enum):
    IDLE = "idle"
    CHALLENGING = "challenging"  # unsigned REGISTER sent, waiting for a challenge
    REGISTERING = "registering"  # signed REGISTER sent
    REGISTERED = "registered"
    BACKING_OFF = "backing-off"  # the server did not answer; try again later
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True)
class RegEvent:
    """Base of the registration machine's events."""


@dataclass(frozen=True)
class Registered(RegEvent):
    peer_id: int
    observed: Address
    ttl: int


@dataclass(frozen=True)
class RegistrationLost(RegEvent):
    reason: str


@dataclass(frozen=True)
class PeersListed(RegEvent):
    entries: tuple[PeerEntry, ...]


@dataclass(frozen=True)
class PresenceChanged(RegEvent):
    """The server's word on watched ids (a WATCH answer or a PRESENCE):
    LIST's entries for those online, the ids of those offline."""

    online: tuple[PeerEntry, ...]
    offline: tuple[int, ...]


@dataclass(frozen=True)
class DirectoryListed(RegEvent):
    """The first page of the server's online list (the directory view)."""

    entries: tuple[PeerEntry, ...]


@dataclass(frozen=True)
class Introduced(RegEvent):
    """The server says ``info.peer_id`` wants to talk to us."""

    info: PeerInfo


@dataclass(frozen=True)
class ConnectAnswered(RegEvent):
    peer_id: int
    info: PeerInfo | None
    error: str | None
    # The server's error code, when it answered with one: 404 (the id's peer
    # is offline) and 410 (the id was never assigned) mean different things.
    code: int | None = None


@dataclass(frozen=True)
class Relayed(RegEvent):
    peer_id: int
    payload: bytes


@dataclass(frozen=True)
class Stopped(RegEvent):
    pass


@dataclass(frozen=True)
class ServerSilent(RegEvent):
    """Our requests have gone unanswered for SILENCE_NOTICE seconds.
    ``ever_answered``: False when the server has never answered us yet."""

    ever_answered: bool


@dataclass(frozen=True)
class ServerAnswered(RegEvent):
    """The server answers again after a :class:`ServerSilent`."""


@dataclass(frozen=True)
class MailDeposited(RegEvent):
    """The answer to our DEPOSIT of ``mail_id`` for ``peer_id`` (docs/PROTOCOL.md
    5.11): stored when ``error`` is None; else the server's code (None: no answer)."""

    peer_id: int
    mail_id: bytes
    error: str | None
    code: int | None = None


@dataclass(frozen=True)
class MailFetched(RegEvent):
    """The answer to our FETCH (5.12): the oldest message waiting, if any,
    and how many wait; or ``error`` (no answer, or the server's)."""

    item: MailItem | None
    count: int
    error: str | None = None


@dataclass
class _Request:
    kind: str
    peer_id: int = 0
    mail_id: bytes = b""
    pages: list[PeerEntry] = field(default_factory=list)
    ids: tuple[int, ...] = ()  # a WATCH's ids
    unwatched: tuple[int, ...] = ()  # a WATCH's UNWATCH-IDS


class RegistrationMachine:
    """One peer's registration at the server (see the module docstring)."""

    def __init__(
        self,
        identity: Identity,
        *,
        servers: tuple[Address, ...] = (("127.0.0.1", 3478),),
        nickname: str = "",
        local: tuple[Address, ...] = (),
        ttl: int = 60,
        list_interval: float = 3.0,
        policy: RetransmitPolicy = POLICY,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.identity = identity
        self.nickname = nickname
        self.local = local
        self.mapped: tuple[Address, ...] = ()  # router port mappings: registered as local candidates too
        # Our address in the family we do not register over (dual_stack.py),
        # learned from the server's address of that family: a local candidate too.
        self.other_family: tuple[Address, ...] = ()
        self._other = OtherFamilyProbe(random_bytes)
        self.registered_local: tuple[Address, ...] = ()  # the local candidates the server has
        self.ttl = ttl
        self.list_interval = list_interval
        self.state = RegState.IDLE
        self.peer_id: int | None = None
        self.observed: Address | None = None
        self.granted_ttl = ttl
        self._session: bytes | None = None
        self._random = random_bytes
        self._policy = policy
        self._conversation: ServerConversation[_Request] = ServerConversation(policy)
        self._handshake: RegisterHandshake | None = None
        self._events: list[RegEvent] = []
        self._wake_at: float | None = None  # next refresh, retry or list
        self._next_list: float | None = None
        self._backoff = 1.0
        self._retry_on_any_answer = False  # backing off because the server was silent
        self._listing = False
        # Presence: the ids to watch (set by the engine), those the server's
        # set holds as far as we know (a WATCH of this session carried them,
        # none unwatched them since), and whether the server knows WATCH
        # (None: not known yet; False: an old server, walk the LIST instead)
        # and UNWATCH-IDS (False: a server that answered it 420; its set only
        # grows, so what falls out of the contacts stays watched).
        self._contacts: tuple[int, ...] = ()
        self._watched: set[int] = set()
        self.watch_supported: bool | None = None
        self.unwatch_supported: bool | None = None
        self._next_watch: float | None = None
        # New contacts waiting for their WATCH (see WATCH_RATE), when to look
        # again, when the last WATCH went, and the bucket.
        self._watch_queue: dict[int, None] = {}
        self._watch_flush_at: float | None = None
        self._last_watch_at: float | None = None
        self._watch_bucket: TokenBucket | None = None  # made full at its first use
        self.watch_requests = 0  # WATCH requests sent (heartbeats not counted)
        self._heartbeats = 0
        # The directory view: whether someone looks at it (the heartbeat then
        # carries its page every DIRECTORY_EVERY th time), and when its last
        # page came (for asking on demand only when it is stale).
        self.directory_shown = False
        self.directory_at: float | None = None
        # A directory page is on its way (asked apart from the heartbeat's
        # _listing, so that asking on demand is not refused for an empty
        # WATCH in flight).
        self._directory_pending = False
        self.servers: tuple[Address, ...] = ()
        self.server_names: tuple[str, ...] = ()
        self._server_index = 0
        # Asking the first server whether it is back (see the module docstring).
        self._next_probe: float | None = None
        self._probe_id: bytes | None = None
        self._probes: list[tuple[bytes, Address]] = []
        # Happy Eyeballs (see the module docstring): when the REGISTER goes to
        # the other family too, the racing attempt (the index of its address,
        # its own conversation, its transaction id); the transaction id of the first REGISTER in
        # use (for telling its late answer once it has lost); the attempt that
        # lost (address, transaction id).
        self._race_at: float | None = None
        self._racer: tuple[int, ServerConversation[_Request], bytes] | None = None
        self._first_transaction = b""
        self._loser: tuple[Address, bytes] | None = None
        self.late_race_answers = 0  # answers of a losing attempt, ignored
        self.races_won_by_other_family = 0  # registrations that went on over the racing attempt's address
        self.races_started_by_send_error = 0  # racing attempts started by send_failed, not the timer
        self.use_servers(servers)
        self._silent_since: float | None = None  # requests unanswered since then
        self._unreachable = False
        self._ever_answered = False

    @property
    def server(self) -> Address:
        """The server address in use: the datagrams for the server go there,
        and only datagrams from there are the server's."""
        return self.servers[self._server_index]

    def use_servers(self, servers: tuple[Address, ...], names: tuple[str, ...] = ()) -> None:
        """The servers' addresses (those their names resolved to), in the
        order to try them, and optionally the name each came from, for the
        page (call before :meth:`start`).  Addresses of one name are one
        server, whose families are raced; without names all are one server's."""
        if not servers:
            raise ValueError("at least one server address is needed")
        if names and len(names) != len(servers):
            raise ValueError("one name per server address, or none")
        self.servers = servers
        self.server_names = names
        self._server_index = 0

    def _race_partner(self) -> int | None:
        """The index of the first address of the server in use in the other
        family (None: it has none, or names say the others are other servers')."""
        mine = self.server
        name = self.server_name
        for index, address in enumerate(self.servers):
            if family(address) != family(mine) and (name is None or self.server_names[index] == name):
                return index
        return None

    @property
    def server_name(self) -> str | None:
        """The name the server in use was given as (None: not given)."""
        return self.server_names[self._server_index] if self.server_names else None

    def probes_to_send(self) -> list[tuple[bytes, Address]]:
        """Datagrams for a server other than the one in use (Bindings asking
        the first whether it is back, or the server's other-family address
        what our address in that family is)."""
        out, self._probes = self._probes, []
        if self._racer is not None:
            index, conversation, _ = self._racer
            out += [(data, self.servers[index]) for data in conversation.datagrams_to_send()]
        return out + self._other.datagrams_to_send()

    @property
    def candidates(self) -> tuple[Address, ...]:
        """The local candidates we register: interface addresses, router
        mappings, and our address in the other family."""
        return self.local + self.mapped + self.other_family

    def receive_from_other_server(self, message: Message, address: Address, now: float) -> None:
        """A decoded STUN message from one of :attr:`servers` not in use: the
        answer to our probe of the first one moves us back to it, the answer
        from the other family's address tells us our address there; anything
        else (a late answer of a server we left) is ignored.  The racing
        REGISTER's answer (Happy Eyeballs) makes its address the one in use."""
        if self._racer is not None and address == self.servers[self._racer[0]]:
            # (Anything else from there, the other-family Binding's answer say, goes on below.)
            if isinstance(self._racer[1].receive(message), Answer):
                if self.state is RegState.CHALLENGING:
                    self._won_race(message, now)
                return
        if self._loser is not None and self._loser == (address, message.transaction_id):
            self.late_race_answers += 1
            return
        if self._other.owns(message, address):
            found = self._other.receive(message, address)
            self._offer_other_family(() if found is None else (found,), now)
            return
        if (
            address != self.servers[0]
            or self._probe_id is None
            or message.transaction_id != self._probe_id
            or message.method != Method.BINDING
            or message.message_class != MessageClass.SUCCESS
            or self.state in (RegState.STOPPING, RegState.STOPPED)
        ):
            return
        self._probe_id = None
        self._lost(now, "the first server is back")
        self._use_server(0, now)
        self._register(now, race=True)

    def _use_server(self, index: int, now: float) -> None:
        """Talk to ``servers[index]`` from now on, with nothing in flight
        (requests to the old one would reach the new one with a session it
        may not know)."""
        self._server_index = index
        self._conversation = ServerConversation(self._policy)
        self._race_at, self._racer = None, None
        self._listing = False
        self._directory_pending = False
        self._probe_id = None
        self._next_probe = now + PRIMARY_RECHECK if index else None

    def _start_racer(self, now: float) -> None:
        """Nothing back from the first REGISTER in time: the same goes to
        the server's address of the other family too."""
        self._race_at = None
        partner = self._race_partner()
        if partner is None or self._handshake is None or self.state is not RegState.CHALLENGING:
            return
        conversation: ServerConversation[_Request] = ServerConversation(self._policy)
        first = self._handshake.first_request()
        first.transaction_id = self._random(12)
        conversation.request(first, _Request("register"), now)
        self._racer = (partner, conversation, first.transaction_id)

    def _won_race(self, message: Message, now: float) -> None:
        """The racing attempt answered first: go on over its address, with
        its conversation; the first attempt is dropped."""
        assert self._racer is not None
        index, conversation, _ = self._racer
        self._loser = (self.server, self._first_transaction)
        self._racer = None
        self.races_won_by_other_family += 1
        self._use_server(index, now)
        self._conversation = conversation
        if self._group_of_first():
            self._next_probe = None  # the first server's other family: no fail-over to come back from
        # Our address in the family we now register over is no other-family
        # address any more: asked again of the other family (the loser's).
        self.other_family = ()
        if self._handshake is not None:
            self._handshake.local = self.candidates
        self._heard_from_server(now)
        self._on_register(message, now)
        self._ask_other_family(now)

    def _group_of_first(self) -> bool:
        """Whether the address in use is one of the first server's."""
        return not self.server_names or self.server_names[self._server_index] == self.server_names[0]

    def _settle_race(self) -> None:
        """The first attempt answered: the racing one, if any, is dropped."""
        self._race_at = None
        if self._racer is not None:
            index, _, transaction = self._racer
            self._loser = (self.servers[index], transaction)
            self._racer = None

    def send_failed(self, address: Address, now: float) -> None:
        """Sending to ``address`` failed at once (ENETUNREACH, say): a first
        REGISTER waiting for its race goes to the other family now; a racing
        attempt to that address is dropped."""
        if address == self.server and self._race_at is not None:
            self._start_racer(now)
            if self._racer is not None:
                self.races_started_by_send_error += 1
        elif self._racer is not None and address == self.servers[self._racer[0]]:
            self._racer = None

    def _fail_over(self, now: float, reason: str) -> None:
        """The server in use went silent: register with the next one now."""
        self._lost(now, reason)
        self._use_server((self._server_index + 1) % len(self.servers), now)
        self._register(now, race=True)

    @property
    def server_state(self) -> ServerState:
        if self._unreachable:
            return ServerState.UNREACHABLE
        if self.state is RegState.REGISTERED:
            return ServerState.REGISTERED
        return ServerState.CONNECTING

    # ------------------------------------------------------------ outputs

    def datagrams_to_send(self) -> list[bytes]:
        return self._conversation.datagrams_to_send()

    def next_event(self) -> RegEvent | None:
        return self._events.pop(0) if self._events else None

    def get_timer(self) -> float | None:
        timers = (
            self._conversation.get_timer(),
            self._wake_at,
            self._next_list,
            self._next_watch,
            self._watch_flush_at,
            self._next_probe,
            self._other.get_timer(),
            self._race_at,
            self._racer[1].get_timer() if self._racer is not None else None,
        )
        times = [t for t in timers if t is not None]
        if self._silent_since is not None and not self._unreachable:
            times.append(self._silent_since + SILENCE_NOTICE)
        return min(times) if times else None

    # ------------------------------------------------------------ commands

    def start(self, now: float) -> None:
        self._register(now, race=True)

    def stop(self, now: float) -> None:
        """Unregister (best effort: one transaction) and stop."""
        if self._session is not None and self.state is RegState.REGISTERED:
            self.state = RegState.STOPPING
            self._request(session_request(Method.UNREGISTER, self._session), _Request("unregister"), now)
        else:
            self._stopped()
        self._wake_at = self._next_list = self._next_watch = self._next_probe = None
        self._watch_flush_at = None
        self._race_at, self._racer = None, None
        self._silent_since = None
        self._other.start(None, now)

    def offer_mapped(self, mapped: tuple[Address, ...], now: float) -> None:
        """A router port mapping came, changed or went: the server learns it
        in a new REGISTER (whose signature covers the candidates)."""
        if mapped == self.mapped:
            return
        self.mapped = mapped
        if self.state is RegState.REGISTERED:
            self._register(now)

    def _offer_other_family(self, found: tuple[Address, ...], now: float) -> None:
        """Our other-family address came, changed or went: it goes into the
        REGISTER under way if its signature is still to come, else into a new one."""
        if found == self.other_family:
            return
        self.other_family = found
        if self.state is RegState.CHALLENGING and self._handshake is not None:
            self._handshake.local = self.candidates  # the signed REGISTER carries it: no extra round trip
        elif self.state is RegState.REGISTERED:
            self._register(now)

    def connect(self, peer_id: int, now: float) -> bool:
        """Ask the server to introduce us; False when not registered yet."""
        if self._session is None or self.state is not RegState.REGISTERED:
            return False
        request = session_request(Method.CONNECT, self._session, (Attr.PEER_ID, peer_id))
        self._request(request, _Request("connect", peer_id), now)
        return True

    def watch(self, contacts: tuple[int, ...], now: float) -> None:
        """The ids whose presence we want (at most :data:`MAX_WATCHED`; the
        rest are ignored).  New ones are sent at once when registered."""
        self._contacts = tuple(dict.fromkeys(contacts))[:MAX_WATCHED]
        # Not known yet whether the server knows WATCH: sent anyway (an old
        # server's 400 is what the probe would get too).
        if self.state is RegState.REGISTERED and self.watch_supported is not False:
            self._watch_queue.update(dict.fromkeys(i for i in self._contacts if i not in self._watched))
            self._flush_watches(now)

    def _flush_watches(self, now: float) -> None:
        """Send what waits to be watched (and unwatched): full requests at
        once, the rest once WATCH_GATHER has passed since the last WATCH,
        all within the bucket; the timer comes back for what is left."""
        self._watch_flush_at = None
        if self._session is None or self.state is not RegState.REGISTERED or self.watch_supported is False:
            return  # the next registration watches every contact
        contacts = set(self._contacts)
        ids = [i for i in self._watch_queue if i in contacts and i not in self._watched]
        gone = self.unwatch_supported is not False and bool(self._watched - contacts)
        if not ids and not gone:
            self._watch_queue.clear()
            return
        gathered = self._last_watch_at is None or now >= self._last_watch_at + WATCH_GATHER
        if not gathered:
            ids = ids[: len(ids) // MAX_WATCH_IDS * MAX_WATCH_IDS]  # only full requests now
        bucket = self._watch_tokens(now)
        # (The epsilon: a refill computed in floating point lands a hair
        # short of the whole token it was timed for.)
        room = int(bucket.available(now) + 1e-6)
        if room >= 1 and (ids or gathered):
            batch = ids[: room * MAX_WATCH_IDS]
            self._send_watches(batch, now)
            for peer_id in batch:
                del self._watch_queue[peer_id]
        waiting = [i for i in self._watch_queue if i in contacts and i not in self._watched]
        self._watch_queue = dict.fromkeys(waiting)
        if waiting or (self.unwatch_supported is not False and self._watched - contacts):
            bucket_at = bucket.ready_at(1, now)
            gather_at = now if self._last_watch_at is None else self._last_watch_at + WATCH_GATHER
            self._watch_flush_at = max(bucket_at, gather_at, now + 1e-3)

    def _watch_tokens(self, now: float) -> TokenBucket:
        if self._watch_bucket is None:
            self._watch_bucket = TokenBucket(WATCH_RATE, WATCH_BURST, now)
        return self._watch_bucket

    @property
    def watched(self) -> frozenset[int]:
        """The ids the server watches for us, as far as we know."""
        return frozenset(self._watched)

    def _send_watches(self, ids: list[int], now: float, *, probe: bool = False) -> None:
        """WATCH ``ids``, MAX_WATCH_IDS to a request, and unwatch what the
        server watches that is no longer a contact, in the same requests
        (the server takes those out first, so a set at the cap makes room);
        ``probe``: one request even with nothing to say (to learn whether the
        server knows WATCH)."""
        if self._session is None:
            return
        gone = [] if self.unwatch_supported is False else sorted(self._watched - set(self._contacts))
        adds = [tuple(ids[i : i + MAX_WATCH_IDS]) for i in range(0, len(ids), MAX_WATCH_IDS)]
        drops = [tuple(gone[i : i + MAX_IDS_PER_ATTRIBUTE]) for i in range(0, len(gone), MAX_IDS_PER_ATTRIBUTE)]
        count = max(len(adds), len(drops), 1 if probe else 0)
        # Every WATCH draws on the bucket (the whole set at registration and
        # repair too, possibly below zero: new ids then wait for the refill).
        self._watch_tokens(now).spend(count, now)
        self._last_watch_at = now
        self.watch_requests += count
        for k in range(count):
            add = adds[k] if k < len(adds) else ()
            drop = drops[k] if k < len(drops) else ()
            attributes: list[tuple[int, tuple[int, ...]]] = []
            if drop:
                attributes.append((Attr.UNWATCH_IDS, drop))
            if add:
                attributes.append((Attr.WATCH_IDS, add))
            self._watched.difference_update(drop)
            self._watched.update(add)
            request = _Request("watch", ids=add, unwatched=drop)
            self._request(session_request(Method.WATCH, self._session, *attributes), request, now)

    @property
    def listing(self) -> bool:
        """A LIST (the walk, or the directory page) or a heartbeat is waiting for its answer."""
        return self._listing

    @property
    def directory_pending(self) -> bool:
        """A directory page is on its way."""
        return self._directory_pending

    def directory_now(self, now: float) -> bool:
        """Ask for the directory page now (a user asked who is online); False
        if it cannot go (not registered, an old server's walk under way) or
        one is already on its way."""
        if self._session is None or self.state is not RegState.REGISTERED or self._directory_pending:
            return False
        if self._listing and self.watch_supported is False:
            return False  # the walk of an old server's LIST is under way: its first page is this
        self._listing = True
        self._directory_pending = True
        self._request(session_request(Method.LIST, self._session, (Attr.LIMIT, 100)), _Request("directory"), now)
        return True

    def show_directory(self, shown: bool, now: float) -> None:
        """Whether someone looks at the directory view (a page or the
        terminal is connected).  While so, its page rides every
        DIRECTORY_EVERY th heartbeat; when it starts, the page is asked for
        at once (the user should not wait a heartbeat for it)."""
        starts = shown and not self.directory_shown
        self.directory_shown = shown
        if starts and self.watch_supported is not False and not self.directory_now(now):
            self._heartbeats = 0  # a heartbeat on its way (or not registered yet): the next one carries the page

    def directory_on_demand(self, now: float) -> bool:
        """Ask for the directory page if the last one is older than a
        heartbeat interval (``webpeer peers``, GET /api/peers); False when
        nothing went (fresh enough, not registered, one on its way)."""
        if self.directory_at is not None and now - self.directory_at < self.list_interval:
            return False
        return self.directory_now(now)

    def list_now(self, now: float) -> None:
        """Walk the server's whole LIST (paged) once: the fallback against a
        server without WATCH, and a directory view on demand."""
        if self._session is not None and self.state is RegState.REGISTERED and not self._listing:
            self._listing = True
            self._request(session_request(Method.LIST, self._session, (Attr.LIMIT, 100)), _Request("list"), now)

    def send_relayed(self, peer_id: int, payload: bytes) -> bool:
        """Queue a SEND indication: the server forwards ``payload`` to
        ``peer_id`` as DATA.  False when not registered (nothing sent)."""
        if self._session is None or self.state is not RegState.REGISTERED or len(payload) > MAX_RELAY_PAYLOAD:
            return False
        self._conversation.indicate(relay_indication(self._session, peer_id, payload, self._random(12)))
        return True

    def deposit(self, peer_id: int, mail_id: bytes, sealed: bytes, now: float) -> bool:
        """Leave a sealed message in ``peer_id``'s mailbox at the server
        (:class:`MailDeposited` answers); False when not registered."""
        if self._session is None or self.state is not RegState.REGISTERED:
            return False
        request = session_request(
            Method.DEPOSIT, self._session, (Attr.PEER_ID, peer_id), (Attr.MAIL_ID, mail_id), (Attr.SEALED, sealed)
        )
        self._request(request, _Request("deposit", peer_id, mail_id=mail_id), now)
        return True

    def fetch(self, delete: bytes | None, now: float) -> bool:
        """Ask for our oldest mailbox message, deleting ``delete`` (the one
        we stored) first (:class:`MailFetched` answers); False when not registered."""
        if self._session is None or self.state is not RegState.REGISTERED:
            return False
        attributes = ((Attr.MAIL_ID, delete),) if delete is not None else ()
        self._request(session_request(Method.FETCH, self._session, *attributes), _Request("fetch"), now)
        return True

    # ------------------------------------------------------------ input

    def handle_timer(self, now: float) -> None:
        conversation = self._conversation
        for timed_out in conversation.handle_timer(now):
            if self._conversation is not conversation:
                break  # failed over to another server: the old one's requests are moot
            self._on_timeout(timed_out, now)
        if self._race_at is not None and self._race_at <= now:
            self._start_racer(now)
        if self._racer is not None and self._racer[1].handle_timer(now):
            self._racer = None  # unanswered too: the first attempt's timeout decides what next
        if (
            self._silent_since is not None
            and not self._unreachable
            and now >= self._silent_since + SILENCE_NOTICE
            and self.state is not RegState.STOPPED
        ):
            self._unreachable = True
            self._events.append(ServerSilent(self._ever_answered))
        if self._wake_at is not None and self._wake_at <= now:
            self._wake_at = None
            if self.state is RegState.REGISTERED and self._session is not None:
                refresh = session_request(Method.REFRESH, self._session, (Attr.TTL, self.ttl))
                self._request(refresh, _Request("refresh"), now)
            elif self.state is RegState.BACKING_OFF:
                self._register(now, race=True)
        if self._next_list is not None and self._next_list <= now:
            self._next_list = now + self.list_interval
            if self.watch_supported is False:
                self.list_now(now)
            elif not self._listing and self.state is RegState.REGISTERED and self._session is not None:
                # The heartbeat: an empty WATCH (about 50 bytes each way) tells
                # within seconds that the server went silent or forgot us (401),
                # and keeps our NAT's mapping open for its PRESENCE requests.
                self._listing = True
                if self.directory_shown and not self._directory_pending and self._heartbeats % DIRECTORY_EVERY == 0:
                    # The directory view's page doubles as this heartbeat.
                    request = session_request(Method.LIST, self._session, (Attr.LIMIT, 100))
                    self._directory_pending = True
                    self._request(request, _Request("directory"), now)
                else:
                    self._request(session_request(Method.WATCH, self._session), _Request("heartbeat"), now)
                self._heartbeats += 1
        if self._next_probe is not None and self._next_probe <= now:
            self._next_probe = now + PRIMARY_RECHECK
            self._probe_id = self._random(12)
            self._probes.append(
                (encode(Message(Method.BINDING, MessageClass.REQUEST, self._probe_id)), self.servers[0])
            )
        if (other := self._other.get_timer()) is not None and other <= now:
            self._other.handle_timer(now)
            if self._other.gave_up:
                self._offer_other_family((), now)  # that family is not reachable now
        if self._watch_flush_at is not None and self._watch_flush_at <= now:
            self._flush_watches(now)
        if self._next_watch is not None and self._next_watch <= now:
            self._next_watch = now + WATCH_REPAIR
            if self.state is RegState.REGISTERED and self.watch_supported is not False:
                self._send_watches(list(self._contacts), now, probe=True)

    def receive(self, message: Message, now: float) -> None:
        """A decoded STUN message from the server's address."""
        received = self._conversation.receive(message)
        self._heard_from_server(now)
        if isinstance(received, Introduction):
            self._events.append(Introduced(received.info))
        elif isinstance(received, PresenceNotice):
            self._events.append(PresenceChanged(received.online, received.offline))
        elif isinstance(received, RelayData):
            self._events.append(Relayed(received.peer_id, received.payload))
        elif isinstance(received, Answer):
            request = received.context
            if request.kind == "register":
                self._settle_race()
                self._on_register(message, now)
            elif request.kind == "refresh":
                self._on_refresh(message, now)
            elif request.kind == "unregister":
                self._stopped()
            elif request.kind in ("list", "directory"):
                self._on_list(request, message, now)
            elif request.kind in ("watch", "heartbeat"):
                if request.kind == "heartbeat":
                    self._listing = False
                self._on_watch(request, message, now)
            elif request.kind in ("deposit", "fetch"):
                self._on_mail(request, message, now)
            else:
                self._on_connect(request, message, now)
        if self.state is RegState.BACKING_OFF and self._retry_on_any_answer:
            # The silent server is back (whatever it said, even a late answer
            # or an INTRODUCE): register now rather than at the next retry.
            self._wake_at = None
            self._register(now, race=True)

    # ------------------------------------------------------------ internals

    def _request(self, message: Message, context: _Request, now: float) -> None:
        # Ids come from the injected randomness, so tests can fix them.
        message.transaction_id = self._random(12)
        self._conversation.request(message, context, now)
        if self._silent_since is None:
            self._silent_since = now

    def _heard_from_server(self, now: float) -> None:
        self._ever_answered = True
        # Still waiting on other requests: the silence, if any, starts now.
        self._silent_since = now if len(self._conversation) else None
        if self._unreachable:
            self._unreachable = False
            self._events.append(ServerAnswered())

    def _register(self, now: float, *, race: bool = False) -> None:
        """``race``: a registration with a server not known to answer (the
        start, a retry, another server): its families are raced.  A server
        that has just answered (401, new candidates) is not: a slow answer
        there must not move the peer to the other family."""
        # A new handshake each time: nickname, local candidates and TTL are
        # read now (the node fills in local candidates just before start).
        self._handshake = RegisterHandshake(
            self.identity,
            self.identity.public_key,
            nickname=self.nickname,
            local=self.candidates,
            ttl=self.ttl,
        )
        self.state = RegState.CHALLENGING
        first = self._handshake.first_request()
        self._request(first, _Request("register"), now)
        self._first_transaction = first.transaction_id
        self._racer = None
        # Happy Eyeballs: the other family too if this one is slow to answer.
        self._race_at = now + CONNECTION_ATTEMPT_DELAY if race and self._race_partner() is not None else None
        # Beside the first REGISTER: the answer usually comes with the
        # challenge, in time for the signed REGISTER to carry it.
        self._ask_other_family(now)

    def _ask_other_family(self, now: float) -> None:
        if self.state in (RegState.STOPPING, RegState.STOPPED):
            return
        self._other.start(other_family_server(self.servers, self.server), now)

    def _on_register(self, message: Message, now: float) -> None:
        if self._handshake is None or self.state in (RegState.STOPPING, RegState.STOPPED):
            return  # stopped meanwhile: no Registered after Stopped
        step = self._handshake.answer(message)
        if isinstance(step, Message):
            self.state = RegState.REGISTERING
            self._request(step, _Request("register"), now)
            return
        offered, self._handshake = self._handshake.local, None
        if isinstance(step, RegisterRefused):
            self._back_off(now, step.reason)
            return
        self.state = RegState.REGISTERED
        self.registered_local = offered
        self.peer_id, self.observed = step.peer_id, step.observed
        self.granted_ttl, self._session = step.ttl, step.session
        self._backoff = 1.0
        self._retry_on_any_answer = False
        self._wake_at = now + max(1.0, step.ttl * REFRESH_FRACTION)
        self._events.append(Registered(step.peer_id, step.observed, step.ttl))
        # A new session has no subscription: watch every contact again (and
        # with none, ask anyway, to learn whether the server knows WATCH).
        self._watched = set()
        self._watch_queue.clear()  # every contact goes below
        self._watch_flush_at = None
        if self.watch_supported is False:
            self._next_list = now  # an old server: list right away, then every list_interval
        else:
            self._send_watches(list(self._contacts), now, probe=True)
            # The heartbeat, the first one now: it is the directory view's page.
            self._next_list = now
            self._heartbeats = 0
        self._next_watch = now + WATCH_REPAIR
        if offered != self.candidates:
            self._register(now)  # a port mapping or our other-family address changed meanwhile

    def _on_refresh(self, message: Message, now: float) -> None:
        error = error_of(message)
        if error is not None:
            # 401: the server forgot us (restart, expiry) or we moved: register again.
            self._lost(now, f"refresh refused: {error.code} {error.reason}")
            self._register(now)
            return
        observed = message.get(Attr.XOR_MAPPED_ADDRESS)
        ttl = message.get(Attr.TTL)
        if isinstance(ttl, int):
            self.granted_ttl = ttl
        if observed is not None and observed != self.observed:
            # Our NAT mapping changed: the session is bound to the old address.
            self.observed = observed
            self._lost(now, "public address changed")
            self._register(now)
            return
        self._wake_at = now + max(1.0, self.granted_ttl * REFRESH_FRACTION)
        self._ask_other_family(now)  # it may have changed too (IPv6 temporary addresses do)

    def _on_list(self, request: _Request, message: Message, now: float) -> None:
        error = error_of(message)
        if request.kind == "directory":
            self._directory_pending = False
        if error is not None and error.code == 401 and self.state is RegState.REGISTERED:
            # The server forgot us (it was down longer than our TTL, say):
            # register now, not at the next refresh up to 21 s later.
            self._listing = False
            self._lost(now, f"list refused: {error.code} {error.reason}")
            self._register(now)
            return
        if error is not None or self._session is None:
            self._listing = False
            return
        if request.kind == "directory":
            self._listing = False
            self.directory_at = now
            self._events.append(DirectoryListed(tuple(message.get_all(Attr.PEER_ENTRY))))
            return
        request.pages.extend(message.get_all(Attr.PEER_ENTRY))
        cursor = message.get(Attr.CURSOR)
        if cursor is not None and len(request.pages) < 10_000:
            follow = session_request(Method.LIST, self._session, (Attr.LIMIT, 100), (Attr.CURSOR, cursor))
            self._request(follow, request, now)
            return
        self._listing = False
        self._events.append(PeersListed(tuple(request.pages)))

    def _on_watch(self, request: _Request, message: Message, now: float) -> None:
        error = error_of(message)
        if error is None:
            self.watch_supported = True
            asked = set(request.ids)
            # Only what we asked about: an answer is no place for other ids.
            online = tuple(e for e in message.get_all(Attr.PEER_ENTRY) if e.peer_id in asked)
            offline = tuple(i for i in message.get(Attr.OFFLINE_IDS, ()) if i in asked)
            if online or offline:
                self._events.append(PresenceChanged(online, offline))
            return
        self._watched.difference_update(request.ids)  # not watched: asked again at the next repair
        self._watched.update(request.unwatched)  # perhaps still watched: unwatched again then
        if error.code == 420 and request.unwatched:
            # A server from before UNWATCH-IDS: its set only grows.  What this
            # request asked is asked again soon without it.
            self.unwatch_supported = False
            self._watch_again_soon(now)
        elif error.code == 400 and error.reason == "Too Many Watched" and self.unwatch_supported is not False:
            # Overtaken by the request that unwatches to make room (datagrams
            # may arrive out of order): try again shortly.
            self._watch_again_soon(now)
        elif error.code == 400 and error.reason.startswith("Unknown method"):
            # A server from before WATCH: walk its LIST as peers always did.
            if self.watch_supported is not False:
                self.watch_supported = False
                if self.state is RegState.REGISTERED:
                    self._next_list = now
        elif error.code == 401 and self.state is RegState.REGISTERED:
            self._lost(now, f"watch refused: {error.code} {error.reason}")
            self._register(now)

    def _watch_again_soon(self, now: float) -> None:
        if self._next_watch is not None:
            self._next_watch = min(self._next_watch, now + 1.0)

    def _on_connect(self, request: _Request, message: Message, now: float) -> None:
        error = error_of(message)
        if error is not None:
            self._events.append(ConnectAnswered(request.peer_id, None, f"{error.code} {error.reason}", error.code))
            if error.code == 401:
                self._lost(now, "session refused")
                self._register(now)
            return
        info = PeerInfo.from_message(message)
        if info.peer_id != request.peer_id or not info.complete:
            self._events.append(ConnectAnswered(request.peer_id, None, "malformed answer"))
            return
        self._events.append(ConnectAnswered(request.peer_id, info, None))

    def _on_mail(self, request: _Request, message: Message, now: float) -> None:
        error = error_of(message)
        if request.kind == "deposit":
            if error is None:
                self._events.append(MailDeposited(request.peer_id, request.mail_id, None))
            else:
                text = f"{error.code} {error.reason}"
                self._events.append(MailDeposited(request.peer_id, request.mail_id, text, error.code))
        elif error is None:
            self._events.append(MailFetched(message.get(Attr.MAIL_ITEM), message.get(Attr.MAIL_COUNT, 0)))
        else:
            self._events.append(MailFetched(None, 0, f"{error.code} {error.reason}"))
        if error is not None and error.code == 401 and self.state is RegState.REGISTERED:
            self._lost(now, f"{request.kind} refused: {error.code} {error.reason}")
            self._register(now)

    def _on_timeout(self, request: _Request, now: float) -> None:
        if (
            len(self.servers) > 1
            and request.kind in ("register", "refresh", "heartbeat", "directory", "list")
            and self.state in (RegState.REGISTERED, RegState.CHALLENGING, RegState.REGISTERING)
        ):
            self._fail_over(now, "the server did not answer")
            return
        if request.kind == "unregister":
            self._stopped()
        elif request.kind in ("list", "heartbeat", "directory"):
            self._listing = False
            if request.kind == "directory":
                self._directory_pending = False
            if self._next_list is not None:
                # List again at once: while the server is silent this keeps
                # something on its way to it, so its return is seen within
                # the retransmission gaps (2 s at most), not a list interval later.
                self._next_list = now
        elif request.kind == "connect":
            self._events.append(ConnectAnswered(request.peer_id, None, "the server did not answer"))
        elif request.kind == "deposit":
            self._events.append(MailDeposited(request.peer_id, request.mail_id, "the server did not answer"))
        elif request.kind == "fetch":
            self._events.append(MailFetched(None, 0, "the server did not answer"))
        elif request.kind == "watch":
            # Unanswered: those ids are asked again soon (not at once: the
            # REFRESH already tells a silent server from a lossy path).
            self._watched.difference_update(request.ids)
            self._watched.update(request.unwatched)
            self._watch_again_soon(now)
        elif request.kind in ("register", "refresh"):
            if request.kind == "register" and self.state is RegState.CHALLENGING:
                # Not even a challenge came back: perhaps this address of the
                # server's name is unreachable (IPv6 without a route, say), so
                # the next attempt tries the next one.
                self._server_index = (self._server_index + 1) % len(self.servers)
            self._lost(now, "the server did not answer")
            self._back_off(now, "the server did not answer", silent=True)

    def _lost(self, now: float, reason: str) -> None:
        if self.state is RegState.REGISTERED:
            self._events.append(RegistrationLost(reason))
        self._session = None
        self._next_list = None
        self._next_watch = None
        self._watch_flush_at = None  # the next registration watches every contact

    def _back_off(self, now: float, reason: str, *, silent: bool = False) -> None:
        self.state = RegState.BACKING_OFF
        self._session = None
        self._retry_on_any_answer = silent
        if silent:
            low, high = SILENT_RETRY
            self._wake_at = now + low + (high - low) * int.from_bytes(self._random(2), "big") / 0xFFFF
        else:
            self._wake_at = now + self._backoff
            self._backoff = min(MAX_BACKOFF, self._backoff * 2)

    def _stopped(self) -> None:
        if self.state is not RegState.STOPPED:
            self.state = RegState.STOPPED
            self._session = None
            self._silent_since = None
            self._events.append(Stopped())
