"""The offline mailbox in the registry's Redis database (docs/PROTOCOL.md 5.11).

Keys (``P`` is the registry's prefix)
-------------------------------------
``P mail:<recipient>``      sorted set of MAIL-IDs waiting, score = deposit time
                            (ties go by MAIL-ID: the FETCH order)
``P mailmsg:<recipient>``   hash MAIL-ID -> u32 sender || f64 deposit time || sealed
``P mailsender:<sender>``   sorted set of u32 recipient || MAIL-ID, score = deposit
                            time: what the sender's quota counts
``P mailages``              the same members over everyone, for the age purge

Each operation is one Lua script, so a quota check and its write are atomic
across instances.  The scripts name the per-peer keys they derive
(``mailsender:<sender>`` from a stored value), so they need every key on one
node: a Redis Cluster would need hash tags here (not done).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from .mailbox import MAILBOX_FULL, SENDER_QUOTA, Mail, MailboxFull, MailLimits

_VALUE = struct.Struct("!Id")  # sender, deposit time; the sealed bytes follow

# u32 big-endian at position i of a string, and the three removals of one message.
_COMMON = """
local function u32(s, i)
  local a, b, c, d = string.byte(s, i, i + 3)
  return ((a * 256 + b) * 256 + c) * 256 + d
end
local function remove(prefix, recipient, rbytes, id)
  local msgs = prefix .. 'mailmsg:' .. recipient
  local v = redis.call('HGET', msgs, id)
  if not v then return 0 end
  redis.call('HDEL', msgs, id)
  redis.call('ZREM', prefix .. 'mail:' .. recipient, id)
  redis.call('ZREM', prefix .. 'mailsender:' .. string.format('%d', u32(v, 1)), rbytes .. id)
  redis.call('ZREM', prefix .. 'mailages', rbytes .. id)
  return 1
end
"""

# KEYS: mail:<r>, mailmsg:<r>, mailsender:<s>, mailages
# ARGV: mail id, u32 recipient || mail id, value, deposit time, counted since,
#       max messages, max bytes, sender max messages, sender max bytes, prefix
# -> 1 stored, 0 duplicate, -1 recipient's quota, -2 sender's quota
_DEPOSIT = (
    _COMMON
    + """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 0 end
local size = string.len(ARGV[3]) - 12
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[5], '+inf')
local bytes = 0
for _, id in ipairs(ids) do bytes = bytes + redis.call('HSTRLEN', KEYS[2], id) - 12 end
if #ids + 1 > tonumber(ARGV[6]) or bytes + size > tonumber(ARGV[7]) then return -1 end
local sent = redis.call('ZRANGEBYSCORE', KEYS[3], ARGV[5], '+inf')
bytes = 0
for _, m in ipairs(sent) do
  local len = redis.call('HSTRLEN', ARGV[10] .. 'mailmsg:' .. string.format('%d', u32(m, 1)), string.sub(m, 5))
  if len > 0 then bytes = bytes + len - 12 end
end
if #sent + 1 > tonumber(ARGV[8]) or bytes + size > tonumber(ARGV[9]) then return -2 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[2])
return 1
"""
)

# KEYS: mail:<r>, mailmsg:<r>
# ARGV: mail id to delete or '', recipient (decimal), u32 recipient, oldest time kept, prefix
# -> {count} or {count, mail id, value}
_FETCH = (
    _COMMON
    + """
if ARGV[1] ~= '' then remove(ARGV[5], ARGV[2], ARGV[3], ARGV[1]) end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[4])) do
  remove(ARGV[5], ARGV[2], ARGV[3], id)
end
local n = redis.call('ZCARD', KEYS[1])
if n == 0 then return {0} end
local first = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
return {n, first, redis.call('HGET', KEYS[2], first)}
"""
)

# KEYS: mailages   ARGV: before, limit, prefix   -> messages deleted
_PURGE = (
    _COMMON
    + """
local n = 0
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))) do
  n = n + remove(ARGV[3], string.format('%d', u32(m, 1)), string.sub(m, 1, 4), string.sub(m, 5))
  redis.call('ZREM', KEYS[1], m)
end
return n
"""
)


class RedisMailbox:
    """:class:`rendezvous.mailbox.Mailbox` on the registry's Redis.  Made by
    :meth:`RedisRegistry.mailbox`: ``client`` gives its connection, ``call``
    runs one command turning failures into RegistryError, ``prefix`` is its."""

    def __init__(self, client: Callable[[], Any], call: Callable[[Any], Any], prefix: str) -> None:
        self._client = client
        self._call = call
        self._prefix = prefix
        self._scripts: dict[str, Any] = {}

    def _script(self, source: str) -> Any:
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self._client().register_script(source)
        return script

    def _key(self, *parts: str | int) -> str:
        return self._prefix + ":".join(str(p) for p in parts)

    async def deposit(self, mail: Mail, limits: MailLimits) -> bool:
        member = struct.pack("!I", mail.recipient) + mail.mail_id
        result = await self._call(
            self._script(_DEPOSIT)(
                keys=[
                    self._key("mail", mail.recipient),
                    self._key("mailmsg", mail.recipient),
                    self._key("mailsender", mail.sender),
                    self._key("mailages"),
                ],
                args=[
                    mail.mail_id,
                    member,
                    _VALUE.pack(mail.sender, mail.deposited_at) + mail.sealed,
                    repr(mail.deposited_at),
                    repr(mail.deposited_at - limits.max_age),
                    limits.max_messages,
                    limits.max_bytes,
                    limits.sender_max_messages,
                    limits.sender_max_bytes,
                    self._prefix,
                ],
            )
        )
        if result == -1:
            raise MailboxFull(MAILBOX_FULL)
        if result == -2:
            raise MailboxFull(SENDER_QUOTA)
        return bool(result == 1)

    async def fetch(self, recipient: int, delete: bytes | None, now: float, max_age: float) -> tuple[Mail | None, int]:
        result = await self._call(
            self._script(_FETCH)(
                keys=[self._key("mail", recipient), self._key("mailmsg", recipient)],
                args=[delete or b"", recipient, struct.pack("!I", recipient), repr(now - max_age), self._prefix],
            )
        )
        count = int(result[0])
        if count == 0:
            return None, 0
        mail_id, value = bytes(result[1]), bytes(result[2])
        sender, deposited_at = _VALUE.unpack_from(value)
        return Mail(recipient, sender, mail_id, value[_VALUE.size :], deposited_at), count

    async def purge(self, before: float, limit: int = 1000) -> int:
        result = await self._call(
            self._script(_PURGE)(keys=[self._key("mailages")], args=[repr(before), limit, self._prefix])
        )
        return int(result)
