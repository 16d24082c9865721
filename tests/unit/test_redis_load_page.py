"""The start-up load's one-string pages (``_LOAD_PAGE`` in rendezvous/redis_registry.py):
the script on a real ``redis-server`` and the parser on hand-made bytes."""

from __future__ import annotations

import struct

import pytest
import redis.asyncio as aioredis

from rendezvous.redis_registry import _LOAD_PAGE, RedisRegistry, _unpack_page
from rendezvous.registry import PeerRecord, RegistryError

IDENTITY = bytes(range(256))[:32]  # every byte value a separator could have been


def page_of(*peers: tuple[bytes, list[bytes | None]]) -> bytes:
    out = b""
    for peer_id, fields in peers:
        sizes = [len(peer_id)] + [0xFFFFFFFF if f is None else len(f) for f in fields]
        out += struct.pack(">6I", *sizes) + peer_id + b"".join(f for f in fields if f is not None)
    return out


def test_unpack_page_reads_binary_fields_and_missing_ones() -> None:
    data = page_of(
        (b"7", [b"\n\x00" + IDENTITY, b'["a"]', b"1.5", None, b"h:1"]),
        (b"12", [IDENTITY, None, None, None, None]),
    )
    assert _unpack_page(data) == [
        (7, [b"\n\x00" + IDENTITY, b'["a"]', b"1.5", None, b"h:1"]),
        (12, [IDENTITY, None, None, None, None]),
    ]
    assert _unpack_page(b"") == []


@pytest.mark.parametrize("cut", [1, 23, 30, 50])
def test_unpack_page_cut_short_is_a_registry_error(cut: int) -> None:
    data = page_of((b"7", [IDENTITY, b"[]", b"1.5", b"1.0", b"h:1"]))
    with pytest.raises(RegistryError, match="cut short"):
        _unpack_page(data[: len(data) - cut])


def test_unpack_page_refuses_an_id_that_is_not_digits() -> None:
    with pytest.raises(RegistryError, match="bad id"):
        _unpack_page(page_of((b"x1", [IDENTITY, None, None, None, None])))


async def test_the_script_pages_through_the_online_index_in_id_order(redis_server) -> None:
    registry = RedisRegistry(redis_server.url, prefix="page:")
    await registry.open()
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        ids = [await registry.assign_id(bytes([n]) * 32) for n in range(1, 6)]
        records = [
            PeerRecord(i, bytes([n]) * 32, f"p{i}", ("127.0.0.1", 4000 + i), (), 10.0, 20.0, 1e12, 10.0)
            for n, i in enumerate(ids, start=1)
        ]
        await registry.save(records)
        await client.hdel(f"page:peer:{ids[2]}", "home")  # a missing field comes back as None
        script = client.register_script(_LOAD_PAGE)
        first = _unpack_page(await script(keys=["page:online"], args=["page:peer:", 0, 2]))
        rest = _unpack_page(await script(keys=["page:online"], args=["page:peer:", first[-1][0], 10]))
        assert [peer_id for peer_id, _ in first + rest] == ids
        by_id = dict(first + rest)
        assert by_id[ids[0]][0] == bytes([1]) * 32
        assert by_id[ids[0]][2] == repr(1e12).encode()
        assert by_id[ids[2]][4] is None
        assert (await registry.load_online(100.0, after_id=ids[1])) == records[2:]
    finally:
        await client.aclose()
        await registry.close()
