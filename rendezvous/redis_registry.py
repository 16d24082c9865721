"""The Redis registry backend: several rendezvous instances, one registry.

``rendezvous --registry redis://HOST:PORT/DB`` (or ``rediss://``), or a Redis
Cluster: ``redis+cluster://HOST:PORT`` (or ``rediss+cluster://``), any one
node; the client learns the others from it.  Every instance on the same Redis
database shares the ids, the secret (so a SESSION minted by one is good at
another) and the online records.

Redis Cluster
-------------
Every script below touches several keys atomically (the ids hash, the
counter, the sorted sets and peer hashes), and Cluster runs a script only on
keys of one hash slot.  So on a Cluster the prefix is a hash tag,
``{peerlink}:``, and all of the registry's keys live in that one slot: one
master holds the registry (a million peers is a few hundred MB, bench/README.md),
its replicas take over when it fails; the other masters carry nothing of
ours.  Cluster pipelines cannot carry EVALSHA or PUBLISH (redis-py refuses
them), so every batch is one script call over many items (up to
``BATCH`` each) in both modes, and the datagrams forwarded to other
instances are PUBLISHed by a script too.  Pub/sub on a Cluster is the
classic kind, which every node relays to every other, so an instance may
subscribe through any node.

Keys (``P`` is the prefix, ``peerlink:`` by default)
----------------------------------------------------
``P next_id``          the last id handed out (INCR)
``P ids``              hash identity -> id: the sticky binding
``P peer:<id>``        hash: ``identity``, ``state`` (JSON: nickname, addresses,
                       times), ``expires_at``, ``last_seen``, ``home`` (the
                       instance the peer is registered with)
``P online``           sorted set of the ids saved with a state, score = id, so
                       loads walk it in id order; they skip the expired ones
                       and drop those expired for long (STALE_AFTER)
``P secret``           the 32-byte server secret (SET NX)
``P seen``             sorted set of ids, score = when the key was last seen
                       (saved, or handed its id): what ``release_unseen`` walks
``P free``             sorted set of released ids (score = id), taken lowest
                       first by new keys before ``next_id`` grows

Channels: ``P presence`` carries every batch of records an instance wrote;
``P instance:<name>`` carries the introductions and relayed DATA
indications forwarded to instance ``<name>`` (4-byte target id, datagram) (docs/ARCHITECTURE.md, "Several instances, one registry").

Durability
----------
``assign_id`` runs one Lua script (look up, else INCR and HSET, atomically:
two instances racing for one new key get one id, and no id is wasted) and
returns once Redis has answered, so the binding is in Redis before REGISTER
is answered: killing the *instance* cannot lose it.  Surviving the death of
*Redis* is Redis's configuration: ``appendonly yes`` with ``appendfsync
always`` (or ``everysec``: up to a second of new ids may be handed out again,
like SQLite's power-loss case).  :meth:`RedisRegistry.open` logs a warning
when persistence is off.  Like SqliteRegistry, new identities arriving in one
loop iteration share one script call, one round trip (group commit), and
``save`` (the write-behind of refreshes, every 2 s) is one call per batch
(per ``BATCH`` records).

Outages
-------
Every call fails fast (short socket timeouts) with
:class:`~rendezvous.registry.RegistryUnavailable`; the first failure logs one
WARNING line and the first success after it one INFO line.  Ids this
instance has seen are cached, so known peers can register again while Redis
is away (only then: a key's id changes when it is released after long unseen,
so ``assign_id`` asks Redis whenever it can).  The pub/sub listener reconnects with
backoff and reloads the online records when it is back, and also when
redis-py reconnected it quietly (Redis confirms a subscription again).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import os
import struct
import time
from collections.abc import Container, Iterable, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisClusterException, RedisError

from .redis_mailbox import RedisMailbox
from .registry import (
    IntroductionHandler,
    PeerRecord,
    RecordsHandler,
    RegistryError,
    RegistryFull,
    RegistryUnavailable,
)
from .sqlite_registry import _address_from_json

logger = logging.getLogger("rendezvous")

SECRET_SIZE = 32
SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")
# Items (identities, records, datagrams) per script call: one call keeps
# Redis busy for its whole run, so a big batch is sent as several.
BATCH = 500
# Online records per start-up load call (one script run: ~1 ms of Redis's time).
LOAD_PAGE = 1000
# A cached id per identity seen; past this the cache starts over (it is only
# a shortcut for outages and repeat registrations).
ID_CACHE_SIZE = 1 << 20
# A cached id is used without asking Redis for this long (an id released
# meanwhile would go to another key; keys are released only after days).
ID_CACHE_TRUST = 3600.0
# Records older than this past their expiry leave the online index when a
# load walks over them (their home stopped writing: it died).
STALE_AFTER = 120.0
# What a call to an unreachable Redis raises: redis-py's RedisClusterException
# ("Redis Cluster cannot be connected") is not a RedisError.
FAILURES = (RedisError, RedisClusterException, OSError)
# Pub/sub reconnection backoff.
LISTEN_BACKOFF = (0.2, 10.0)
# Connections to one Redis.  Past them a command waits for one to be free (a
# blocking pool): redis-py's default pool instead fails the command at 100
# with "Too many connections", which 512 REGISTERs in flight reached and
# which looked like an outage.
MAX_CONNECTIONS = 64

# KEYS: ids hash, next_id counter, seen set, free set.  ARGV: prefix of the
# peer hash keys, max ids (0: no cap), now, then the identities.  Returns
# their ids in order; -1: the registry is full.  A known key counts as seen
# now, atomically: a release running at the same time cannot take the id of
# a key that is back after long.
_ASSIGN = """
local max = tonumber(ARGV[2])
local out = {}
for i = 4, #ARGV do
  local id = redis.call('HGET', KEYS[1], ARGV[i])
  if id then
    redis.call('ZADD', KEYS[3], tonumber(ARGV[3]), id)
    id = tonumber(id)
  elseif max > 0 and redis.call('HLEN', KEYS[1]) >= max then
    id = -1
  else
    local free = redis.call('ZPOPMIN', KEYS[4])
    if free[1] then id = tonumber(free[1]) else id = redis.call('INCR', KEYS[2]) end
    redis.call('HSET', KEYS[1], ARGV[i], id)
    redis.call('HSET', ARGV[1] .. id, 'identity', ARGV[i])
  end
  out[#out + 1] = id
end
return out
"""

# KEYS: seen set, ids hash, free set, online set.  ARGV: before, prefix of
# the peer hash keys, then the candidate ids.  Releases each candidate still
# seen before ``before`` whose record expired before it too (checked again
# here, atomically: the key may have been handed its id since); returns them.
_RELEASE = """
local before = tonumber(ARGV[1])
local out = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local seen = tonumber(redis.call('ZSCORE', KEYS[1], id) or '0')
  local key = ARGV[2] .. id
  local rec = redis.call('HMGET', key, 'identity', 'expires_at')
  if not rec[1] then
    redis.call('ZREM', KEYS[1], id)
  elseif seen > 0 and seen < before and tonumber(rec[2] or '0') < before then
    redis.call('HDEL', KEYS[2], rec[1])
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[4], id)
    redis.call('ZADD', KEYS[3], tonumber(id), id)
    table.insert(out, tonumber(id))
  end
end
return out
"""

# KEYS: online set, seen set.  ARGV: prefix of the peer hash keys, now,
# home, then five per record: peer id, identity, state, expires_at,
# last_seen.  Returns 1 per record written, 0 per record ignored: ids bound
# to another identity (as SQLite does), and a live record of another
# instance is never overwritten with an older one: a peer that moved from A
# to B must not be taken offline by A writing its expiry afterwards.
_SAVE = """
local now = tonumber(ARGV[2])
local home = ARGV[3]
local out = {}
for i = 4, #ARGV, 5 do
  local id, key = ARGV[i], ARGV[1] .. ARGV[i]
  local stored = redis.call('HMGET', key, 'identity', 'home', 'expires_at', 'last_seen')
  local written = 0
  if stored[1] == ARGV[i + 1] and not (stored[2] and stored[2] ~= home
      and tonumber(stored[3] or '0') > now and tonumber(stored[4] or '0') > tonumber(ARGV[i + 4])) then
    redis.call('HSET', key, 'state', ARGV[i + 2], 'expires_at', ARGV[i + 3], 'last_seen', ARGV[i + 4], 'home', home)
    redis.call('ZADD', KEYS[1], tonumber(id), id)
    redis.call('ZADD', KEYS[2], 'GT', tonumber(ARGV[i + 4]), id)
    written = 1
  end
  out[#out + 1] = written
end
return out
"""

# KEYS: online set.  ARGV: prefix of the peer hash keys, the id to start
# after, how many.  One page of the online index in id order, as one string
# (not a reply of thousands of elements: redis-py parses each element of a
# reply in Python, which made start-up ~100 us a peer): per peer, six
# big-endian 32-bit lengths, then the id and its ``identity, state,
# expires_at, last_seen, home`` fields back to back; a missing field's length
# is 0xFFFFFFFF and it has no bytes.
_LOAD_PAGE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[2], '+inf', 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
local missing = 4294967295
for _, id in ipairs(ids) do
  local f = redis.call('HMGET', ARGV[1] .. id, 'identity', 'state', 'expires_at', 'last_seen', 'home')
  local sizes = {#id}
  for j = 1, 5 do
    if f[j] then sizes[j + 1] = #f[j] else sizes[j + 1] = missing; f[j] = '' end
  end
  out[#out + 1] = struct.pack('>I4I4I4I4I4I4', unpack(sizes))
  out[#out + 1] = id .. f[1] .. f[2] .. f[3] .. f[4] .. f[5]
end
return table.concat(out)
"""
# The head of each peer in a _LOAD_PAGE reply, and its "missing" length.
_PAGE_HEAD = struct.Struct(">6I")
_MISSING = 0xFFFFFFFF

# KEYS: any key of the registry (on a Cluster it routes the call to the
# registry's node; pub/sub reaches every node from there).  ARGV: channel,
# message, channel, message...  Returns the receivers of each.
_PUBLISH = """
local out = {}
for i = 1, #ARGV, 2 do out[#out + 1] = redis.call('PUBLISH', ARGV[i], ARGV[i + 1]) end
return out
"""


class RedisObserver(Protocol):
    """What :class:`RedisRegistry` reports of its calls (the metrics'
    :class:`rendezvous.metrics.RedisMetrics`); ``op`` names what a call was for."""

    def command(self, op: str, seconds: float) -> None: ...

    def failed(self, op: str, error: BaseException) -> None: ...

    def connected(self, up: bool) -> None: ...


def check_url(url: str) -> str:
    """``url`` if it names a Redis server redis-py can reach, else RegistryError."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise RegistryError(
            f"--registry {redacted(url)!r}: expected redis://HOST:PORT/DB, rediss://HOST:PORT/DB "
            "or redis+cluster://HOST:PORT"
        )
    if parts.scheme != "unix" and not parts.hostname:
        raise RegistryError(f"--registry {redacted(url)!r}: no host")
    try:
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError as exc:
        raise RegistryError(f"--registry {redacted(url)!r}: {exc}") from None
    if is_cluster(url) and parts.path not in ("", "/", "/0"):
        raise RegistryError(f"--registry {redacted(url)!r}: a Redis Cluster has database 0 only")
    return url


def is_cluster(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://``, ``rediss+cluster://``)."""
    return urlsplit(url).scheme.endswith("+cluster")


def cluster_prefix(prefix: str) -> str:
    """``prefix`` as a hash tag (``peerlink:`` -> ``{peerlink}:``), so that
    every key of the registry lands in one Cluster slot; kept as it is when
    it has a tag already."""
    if "{" in prefix and "}" in prefix.split("{", 1)[1]:
        return prefix
    tag = prefix[:-1] if prefix.endswith(":") else prefix
    return "{" + tag + "}" + (":" if prefix.endswith(":") else "")


def redacted(url: str) -> str:
    """The URL without its password, for log lines."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()


def _state(record: PeerRecord) -> str:
    return json.dumps(
        [
            record.nickname,
            # [host, port] and [[host, port], ...], as sqlite_registry's encode_address(es)
            # write them, without a JSON round trip each (a save writes every refreshed peer).
            list(record.observed),
            [list(address) for address in record.local],
            record.first_seen,
            record.online_since,
        ],
        separators=(",", ":"),
        ensure_ascii=False,
    )


def _record(peer_id: int, fields: Sequence[bytes | None]) -> PeerRecord | None:
    """A record from the ``identity, state, expires_at, last_seen, home`` fields."""
    identity, state, expires_at, last_seen, home = fields
    if identity is None:
        return None
    if state is None:  # bound, never saved
        return PeerRecord(peer_id, bytes(identity), "", ("", 0), (), 0.0, 0.0, 0.0, 0.0)
    try:
        nickname, observed, local, first_seen, online_since = json.loads(state)
        return PeerRecord(
            peer_id=peer_id,
            identity=bytes(identity),
            nickname=str(nickname),
            observed=_address_from_json(observed),
            local=_addresses_from_json(local),
            first_seen=float(first_seen),
            last_seen=float(last_seen or 0),
            expires_at=float(expires_at or 0),
            online_since=float(online_since),
            home=(home or b"").decode(),
        )
    except (ValueError, TypeError) as exc:
        raise RegistryError(f"stored record of peer {peer_id} is damaged: {exc}") from exc


def _unpack_page(data: bytes) -> list[tuple[int, list[bytes | None]]]:
    """The (id, fields) of each peer in a ``_LOAD_PAGE`` reply; RegistryError if it is cut short."""
    out: list[tuple[int, list[bytes | None]]] = []
    end = len(data)
    pos = 0
    while pos < end:
        if pos + _PAGE_HEAD.size > end:
            raise RegistryError(f"load page cut short at byte {pos} of {end}")
        sizes = _PAGE_HEAD.unpack_from(data, pos)
        pos += _PAGE_HEAD.size
        fields: list[bytes | None] = []
        for size in sizes:
            if size == _MISSING:
                fields.append(None)
                continue
            if pos + size > end:
                raise RegistryError(f"load page cut short at byte {pos} of {end}")
            fields.append(data[pos : pos + size])
            pos += size
        peer_id = fields.pop(0)
        if peer_id is None or not peer_id.isdigit():
            raise RegistryError(f"load page holds a bad id {peer_id!r:.40}")
        out.append((int(peer_id), fields))
    return out


def _addresses_from_json(value: Any) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, list):
        raise RegistryError(f"stored address list is not a list: {value!r:.80}")
    return tuple(_address_from_json(item) for item in value)


def encode_records(records: Iterable[PeerRecord]) -> bytes:
    """A presence message: the records' full state, JSON."""
    return json.dumps(
        [[r.peer_id, r.identity.hex(), _state(r), r.expires_at, r.last_seen, r.home] for r in records],
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()


def decode_records(data: bytes) -> list[PeerRecord]:
    """Inverse of :func:`encode_records`; raises RegistryError."""
    try:
        rows = json.loads(data)
        out = []
        for peer_id, identity, state, expires_at, last_seen, home in rows:
            record = _record(
                int(peer_id),
                (
                    bytes.fromhex(identity),
                    state.encode(),
                    str(expires_at).encode(),
                    str(last_seen).encode(),
                    home.encode(),
                ),
            )
            if record is not None:
                out.append(record)
        return out
    except (ValueError, TypeError, AttributeError) as exc:
        raise RegistryError(f"bad presence message: {exc}") from exc


class RedisRegistry:
    """:class:`rendezvous.registry.Registry` and
    :class:`rendezvous.registry.Presence` on one Redis database."""

    def __init__(
        self, url: str, *, prefix: str = "peerlink:", timeout: float = 1.0, max_ids: int | None = None
    ) -> None:
        self._url = check_url(url)
        self._cluster = is_cluster(url)
        self._max_ids = max_ids
        self._prefix = cluster_prefix(prefix) if self._cluster else prefix
        self._timeout = timeout
        self._redis: aioredis.Redis | RedisCluster | None = None
        self._secret: bytes | None = None
        self._ids: dict[bytes, tuple[int, float]] = {}  # identity -> (id, when cached, monotonic)
        self._pending: dict[bytes, list[asyncio.Future[int]]] = {}
        self._flush_task: asyncio.Task[None] | None = None
        self._down = False
        self._instance = ""
        self._listener: asyncio.Task[None] | None = None
        self._assign: Any = None
        self._save: Any = None
        self._release: Any = None
        self._publish: Any = None
        self._load_page: Any = None
        self.round_trips = 0  # script calls, pipelines and commands sent (tests, metrics)
        # Told of every call's duration and failure (rendezvous.metrics.RedisMetrics).
        self.observer: RedisObserver | None = None

    @property
    def url(self) -> str:
        return self._url

    @property
    def prefix(self) -> str:
        """What every key and channel name starts with (a hash tag on a Cluster)."""
        return self._prefix

    @property
    def instance(self) -> str:
        return self._instance

    def _key(self, *parts: str | int) -> str:
        return self._prefix + ":".join(str(p) for p in parts)

    # -- lifecycle -------------------------------------------------------

    async def open(self) -> None:
        """Connect and check that Redis answers; RegistryError if it does not."""
        if self._redis is not None:
            return
        options: dict[str, Any] = dict(
            decode_responses=False,
            socket_connect_timeout=self._timeout,
            socket_timeout=self._timeout,
            # One quick retry for a dropped connection; outages are ours to handle.
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
        )
        client: aioredis.Redis | RedisCluster
        try:
            if self._cluster:
                # redis-py's own scheme; the node named is only where it starts.
                plain = self._url.replace("+cluster://", "://", 1)
                client = RedisCluster.from_url(plain, **options)
            else:
                pool = aioredis.BlockingConnectionPool.from_url(
                    self._url, max_connections=MAX_CONNECTIONS, timeout=self._timeout, **options
                )
                client = aioredis.Redis.from_pool(pool)
        except (ValueError, *FAILURES) as exc:
            raise RegistryError(f"--registry {redacted(self._url)}: {exc}") from None
        try:
            if isinstance(client, RedisCluster):
                await client.initialize()  # learns the nodes and slots; fails if the cluster is down
            await client.ping()
        except FAILURES as exc:
            await client.aclose()
            raise RegistryError(f"cannot reach Redis at {redacted(self._url)}: {exc}") from None
        try:
            persistence = await client.info("persistence")
        except FAILURES:  # INFO may be forbidden (ACL, managed Redis): then we cannot tell
            persistence = {"aof_enabled": 1}
        if not persistence.get("aof_enabled"):
            logger.warning(
                "Redis at %s has no append-only file (appendonly no): ids handed out since its last "
                "snapshot are lost if Redis dies",
                redacted(self._url),
            )
        self._assign = client.register_script(_ASSIGN)
        self._release = client.register_script(_RELEASE)
        self._save = client.register_script(_SAVE)
        self._publish = client.register_script(_PUBLISH)
        self._load_page = client.register_script(_LOAD_PAGE)
        self._redis = client
        if self.observer is not None:
            self.observer.connected(True)

    async def close(self) -> None:
        """Commit the ids still waiting, stop listening, disconnect.  Idempotent."""
        if self._redis is None:
            return
        if self._flush_task is not None:
            await asyncio.gather(self._flush_task, return_exceptions=True)
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None
        client, self._redis = self._redis, None
        self._secret = None
        await client.aclose()

    async def __aenter__(self) -> RedisRegistry:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _client(self) -> aioredis.Redis | RedisCluster:
        if self._redis is None:
            raise RegistryError(f"registry {redacted(self._url)} is not open")
        return self._redis

    def _failed(self, exc: BaseException, op: str) -> RegistryError:
        """The error to raise for a failed call made for ``op``, logging the outage once."""
        if isinstance(exc, RegistryError):
            return exc
        if self.observer is not None:
            self.observer.failed(op, exc)
            self.observer.connected(False)
        if not self._down:
            self._down = True
            logger.warning(
                "Redis at %s unreachable (%s): serving the peers this instance knows, retrying",
                redacted(self._url),
                exc,
            )
        return RegistryUnavailable(f"Redis at {redacted(self._url)} unreachable: {exc}")

    def _succeeded(self, op: str, seconds: float) -> None:
        self.round_trips += 1
        if self.observer is not None:
            self.observer.command(op, seconds)
            self.observer.connected(True)
        if self._down:
            self._down = False
            logger.info("Redis at %s reachable again", redacted(self._url))

    # -- ids -------------------------------------------------------------

    async def assign_id(self, identity: bytes) -> int:
        """The id bound to ``identity``, binding the next one if it has none.
        Returns once Redis holds the binding."""
        identity = bytes(identity)
        # Always asked (in the batch's one round trip), never answered from the
        # cache while Redis is there: the script marks the key seen, which is
        # what keeps a release from taking the id of a key back after long.
        self._client()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        self._pending.setdefault(identity, []).append(future)
        if self._flush_task is None:
            self._flush_task = asyncio.ensure_future(self._flush_ids())
        try:
            return await future
        except RegistryUnavailable:
            if (cached := self._cached(identity, any_age=True)) is not None:
                return cached  # Redis is away: the id it had is the best we know
            raise

    async def _flush_ids(self) -> None:
        """One script call for every identity that arrived in this loop iteration."""
        await asyncio.sleep(0)
        self._flush_task = None
        pending, self._pending = self._pending, {}
        if not pending:
            return
        results: list[Any] = []
        error: RegistryError | None = None
        try:
            keys = [self._key("ids"), self._key("next_id"), self._key("seen"), self._key("free")]
            head = [self._key("peer", ""), self._max_ids or 0, repr(time.time())]
            results = await self._batched(self._assign, keys, head, [[identity] for identity in pending], "assign")
        except RegistryError as exc:
            error = exc
        for index, (identity, futures) in enumerate(pending.items()):
            peer_id = int(results[index]) if error is None else -1
            if peer_id > 0:
                self._remember(identity, peer_id)
            for future in futures:
                if future.done():
                    continue
                if error is not None:
                    future.set_exception(error)
                elif peer_id < 0:
                    future.set_exception(RegistryFull(f"the registry holds its maximum of {self._max_ids} ids"))
                else:
                    future.set_result(peer_id)

    def _remember(self, identity: bytes, peer_id: int) -> None:
        if len(self._ids) >= ID_CACHE_SIZE:
            self._ids.clear()
        self._ids[identity] = (peer_id, time.monotonic())

    def _cached(self, identity: bytes, *, any_age: bool = False) -> int | None:
        """The cached id of ``identity``: one cached within ID_CACHE_TRUST
        (a released key's id goes to another key, so an old entry is asked
        again), or of any age while Redis is away."""
        entry = self._ids.get(identity)
        if entry is None or not (any_age or time.monotonic() - entry[1] < ID_CACHE_TRUST):
            return None
        return entry[0]

    async def release_unseen(self, before: float, limit: int = 1000, *, keep: Container[int] = ()) -> list[int]:
        """Release the ids of keys unseen since ``before`` (Registry contract)."""
        raw = await self._call(
            self._client().zrangebyscore(self._key("seen"), "(0", f"({before!r}", start=0, num=2 * limit), "release"
        )
        candidates = [int(i) for i in raw if int(i) not in keep][:limit]
        if not candidates:
            return []
        released = await self._call(
            self._release(
                keys=[self._key("seen"), self._key("ids"), self._key("free"), self._key("online")],
                args=[repr(before), self._key("peer", ""), *candidates],
            ),
            "release",
        )
        if released:
            self._ids.clear()  # which identities they were is gone with them
        return sorted(int(i) for i in released)

    async def lookup_id(self, identity: bytes) -> int | None:
        identity = bytes(identity)
        if (cached := self._cached(identity)) is not None:
            return cached
        try:
            value = await self._call(self._client().hget(self._key("ids"), identity), "lookup")
        except RegistryUnavailable:
            if (cached := self._cached(identity, any_age=True)) is not None:
                return cached
            raise
        if value is None:
            return None
        self._remember(identity, int(value))
        return int(value)

    def mailbox(self) -> RedisMailbox:
        """The offline mailbox, in this database (rendezvous/redis_mailbox.py has its keys)."""
        return RedisMailbox(self._client, functools.partial(self._call, op="mail"), self._prefix)

    async def _batched(
        self, script: Any, keys: list[str], head: list[Any], items: Sequence[list[Any]], op: str
    ) -> list[Any]:
        """``script`` over ``items`` (each a list of ARGV), ``BATCH`` items a
        call after the ``head`` ARGV; the results of all calls, in order.
        Sequential calls rather than a pipeline: a Cluster pipeline cannot
        carry EVALSHA (see the module's docstring)."""
        results: list[Any] = []
        for start in range(0, len(items), BATCH):
            args = [*head, *(value for item in items[start : start + BATCH] for value in item)]
            results += await self._call(script(keys=keys, args=args), op)
        return results

    async def _call(self, awaitable: Any, op: str) -> Any:
        """Await one Redis call made for ``op`` (the metrics' label): its
        failure becomes RegistryError, its duration goes to the observer."""
        started = time.perf_counter()
        try:
            result = await awaitable
        except FAILURES as exc:
            raise self._failed(exc, op) from None
        self._succeeded(op, time.perf_counter() - started)
        return result

    # -- state -----------------------------------------------------------

    async def save(self, records: Iterable[PeerRecord]) -> None:
        """Write the records this instance is home to, in one script call, then
        tell the other instances (``P presence``) about those that were written."""
        records = list(records)
        if not records:
            return
        client = self._client()
        # Live means expires_at is after the wall clock (record times are wall times).
        wall = time.time()
        rows = [
            [record.peer_id, bytes(record.identity), _state(record), repr(record.expires_at), repr(record.last_seen)]
            for record in records
        ]
        keys = [self._key("online"), self._key("seen")]
        head = [self._key("peer", ""), repr(wall), self._instance]
        written = await self._batched(self._save, keys, head, rows, "save")
        announced = [_homed(record, self._instance) for record, ok in zip(records, written, strict=True) if ok]
        if announced and self._instance:
            await self._call(client.publish(self._key("presence"), encode_records(announced)), "publish")

    async def load_online(self, now: float, after_id: int = 0, limit: int | None = None) -> list[PeerRecord]:
        """Records with ``expires_at`` after ``now``, in id order, after ``after_id``."""
        client = self._client()
        out: list[PeerRecord] = []
        page = LOAD_PAGE if limit is None else max(1, min(limit, LOAD_PAGE))
        cursor = after_id
        while limit is None or len(out) < limit:
            # One round trip a page: the index and the records together.
            raw = await self._call(
                self._load_page(keys=[self._key("online")], args=[self._key("peer", ""), cursor, page]), "load"
            )
            rows = _unpack_page(raw)
            if not rows:
                break
            stale = []
            for peer_id, fields in rows:
                record = self._local(_record(peer_id, fields))
                if record is None or record.expires_at <= now - STALE_AFTER:
                    stale.append(peer_id)
                elif record.expires_at > now:
                    out.append(record)
                    if limit is not None and len(out) >= limit:
                        break
            if stale:
                await self._call(client.zrem(self._key("online"), *stale), "load")
            cursor = rows[-1][0]
        return out

    async def _fetch(self, ids: Sequence[int]) -> list[PeerRecord | None]:
        fields = ("identity", "state", "expires_at", "last_seen", "home")
        started = time.perf_counter()
        try:
            async with self._client().pipeline(transaction=False) as pipe:
                for peer_id in ids:
                    pipe.hmget(self._key("peer", peer_id), fields)
                rows = await pipe.execute()
        except FAILURES as exc:
            raise self._failed(exc, "fetch") from None
        self._succeeded("fetch", time.perf_counter() - started)
        return [self._local(_record(peer_id, row)) for peer_id, row in zip(ids, rows, strict=True)]

    def _local(self, record: PeerRecord | None) -> PeerRecord | None:
        """Records homed at this instance are its own: ``home`` "" (see PeerRecord)."""
        if record is not None and record.home == self._instance:
            record.home = ""
        return record

    async def get(self, peer_id: int) -> PeerRecord | None:
        return (await self._fetch([peer_id]))[0]

    async def count(self) -> int:
        return int(await self._call(self._client().hlen(self._key("ids")), "count"))

    async def highest_id(self) -> int:
        """The highest id handed out by any instance (the INCR counter: released ids are reused below it)."""
        value = await self._call(self._client().get(self._key("next_id")), "highest_id")
        return int(value) if value is not None else 0

    async def secret(self) -> bytes:
        """The 32-byte secret shared by every instance: the first one to ask creates it."""
        if self._secret is None:
            client = self._client()
            await self._call(client.set(self._key("secret"), os.urandom(SECRET_SIZE), nx=True), "secret")
            value = await self._call(client.get(self._key("secret")), "secret")
            if not isinstance(value, bytes) or len(value) != SECRET_SIZE:
                raise RegistryError(f"stored secret in {redacted(self._url)} is not {SECRET_SIZE} bytes")
            self._secret = value
        return self._secret

    # -- presence --------------------------------------------------------

    async def start(self, instance: str, on_records: RecordsHandler, on_introduction: IntroductionHandler) -> None:
        """Take the name ``instance``, subscribe, and keep listening (reconnecting) until closed."""
        self._instance = instance
        client = self._client()
        pubsub: Any = client.pubsub()  # redis-py leaves aclose untyped
        try:
            await pubsub.subscribe(self._key("presence"), self._key("instance", instance))
        except FAILURES as exc:
            await pubsub.aclose()
            raise self._failed(exc, "subscribe") from None
        self._listener = asyncio.create_task(self._listen(pubsub, on_records, on_introduction))

    async def _listen(self, pubsub: Any, on_records: RecordsHandler, on_introduction: IntroductionHandler) -> None:
        presence = self._key("presence").encode()
        delay = LISTEN_BACKOFF[0]
        resync = False
        # Channels whose subscription Redis confirmed since the last (re)load.
        # redis-py reconnects a dropped connection and subscribes again by
        # itself, raising nothing: a channel confirmed twice is that, and
        # what was published in between is lost, so it reloads too.
        confirmed: set[bytes] = set()
        while True:
            try:
                if resync:
                    # Messages published while we were away are lost: reload.
                    confirmed.clear()
                    await pubsub.subscribe(self._key("presence"), self._key("instance", self._instance))
                    on_records(await self.load_online(time.time()))
                    resync = False
                    delay = LISTEN_BACKOFF[0]
                message = await pubsub.get_message(ignore_subscribe_messages=False, timeout=1.0)
                if message is None:
                    continue
                if message["type"] == "subscribe":
                    channel = bytes(message["channel"])
                    if channel in confirmed:
                        logger.info("Redis pub/sub reconnected: reloading the online records")
                        confirmed = {channel}
                        on_records(await self.load_online(time.time()))
                    else:
                        confirmed.add(channel)
                    continue
                if message["type"] != "message":
                    continue
                data = message["data"]
                if message["channel"] == presence:
                    records = [r for r in decode_records(data) if r.home != self._instance]
                    if records:
                        on_records(records)
                elif len(data) > 4:
                    on_introduction(int.from_bytes(data[:4], "big"), bytes(data[4:]))
            except asyncio.CancelledError:
                await pubsub.aclose()
                raise
            except RegistryError as exc:
                if isinstance(exc, RegistryUnavailable):
                    resync = True
                    await asyncio.sleep(delay)
                    delay = min(2 * delay, LISTEN_BACKOFF[1])
                else:
                    logger.warning("ignored a presence message: %r", str(exc))
            except FAILURES as exc:
                self._failed(exc, "listen")
                resync = True
                try:
                    await pubsub.aclose()  # the next subscribe reconnects
                except FAILURES:
                    pass
                await asyncio.sleep(delay)
                delay = min(2 * delay, LISTEN_BACKOFF[1])
            except Exception:
                # A handler's bug must not end the listening for good.
                logger.exception("presence listener: a message could not be applied")

    async def forward_many(self, items: Sequence[tuple[str, int, bytes]]) -> None:
        """One round trip per ``BATCH``: a script PUBLISHes each datagram on its home's channel."""
        if not items:
            return
        self._client()
        messages = [
            [self._key("instance", home), target_id.to_bytes(4, "big") + data] for home, target_id, data in items
        ]
        await self._batched(self._publish, [self._key("presence")], [], messages, "forward")


def _homed(record: PeerRecord, instance: str) -> PeerRecord:
    """A copy of a local record with its home spelled out, for other instances."""
    return dataclasses.replace(record, home=instance, verified_session=None)
