"""Many commands at once on a real ``redis-server``: they wait for a
connection instead of failing (redis-py's default pool refused the 101st
with "Too many connections", which the registry took for an outage)."""

from __future__ import annotations

import asyncio

from rendezvous.redis_registry import MAX_CONNECTIONS, RedisRegistry


async def test_more_commands_in_flight_than_connections_all_succeed(redis_server) -> None:
    registry = RedisRegistry(redis_server.url, prefix="pool:", timeout=10)
    await registry.open()
    try:
        identities = [i.to_bytes(32, "big") for i in range(1, 4 * MAX_CONNECTIONS + 200)]
        ids = await asyncio.gather(*(registry.assign_id(identity) for identity in identities))
        assert sorted(ids) == list(range(1, len(identities) + 1))
        # Uncached look-ups, all at once: each is one HGET on its own connection.
        fresh = RedisRegistry(redis_server.url, prefix="pool:", timeout=10)
        await fresh.open()
        try:
            looked_up = await asyncio.gather(*(fresh.lookup_id(identity) for identity in identities))
        finally:
            await fresh.close()
        assert looked_up == ids
    finally:
        await registry.close()
