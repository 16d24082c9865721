"""Files between two real peer nodes over loopback UDP and QUIC, driven
through the real web layer (pytest-aiohttp's ``aiohttp_client``)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import test_nodes
from test_nodes import wait_for

from webpeer.node import PeerNode
from webpeer.web import WebConfig, create_app

# The loopback rendezvous and in-process nodes of test_nodes.py.
rendezvous = test_nodes.rendezvous
nodes = test_nodes.nodes

TOKEN = "files-test-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
DEADLINE = 30.0  # generous: other tests load the machine

Client = Any  # aiohttp.test_utils.TestClient


@pytest.fixture
def web(aiohttp_client: Callable[..., Awaitable[Client]]) -> Callable[[PeerNode], Awaitable[Client]]:
    async def make(node: PeerNode) -> Client:
        return await aiohttp_client(create_app(WebConfig(port=0, token=TOKEN), node))

    return make


async def send_files(client: Client, to: int, files: list[tuple[str, bytes | Path, str]]) -> list[dict[str, Any]]:
    form = aiohttp.FormData()
    form.add_field("to", str(to))
    for name, content, mime in files:
        body = content.open("rb") if isinstance(content, Path) else content
        form.add_field("file", body, filename=name, content_type=mime)
    response = await client.post("/api/files", data=form, headers=BEARER)
    assert response.status == 201, await response.text()
    return list(await response.json())


async def post(client: Client, path: str) -> tuple[int, dict[str, Any]]:
    response = await client.post(path, headers=BEARER)
    return response.status, await response.json()


async def one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


def status_of(node: PeerNode, file_id: str) -> str | None:
    record = node.store.get_file(file_id)
    return record.status if record else None


async def connected_pair(nodes: Any, **b_options: Any) -> tuple[PeerNode, PeerNode]:
    a = await nodes("a")
    b = await nodes("b", **b_options)
    await wait_for(lambda: a.peer_state(b.registration.peer_id).online, DEADLINE, "a sees b")
    return a, b


def big_file(tmp_path: Path, size: int) -> Path:
    path = tmp_path / "upload.bin"
    with path.open("wb") as file:
        block = os.urandom(1024 * 1024)
        for start in range(0, size, len(block)):
            file.write(block[: size - start] if size - start < len(block) else block)
            block = hashlib.sha256(block).digest() * (len(block) // 32)  # cheap, not repeating
    return path


# The 50 MiB: both peers share this process, so about 10 s on a quiet
# core (aioquic moves ~1,200-byte packets in Python: bench/FILES.md); the
# completion deadline below leaves room for a loaded CI machine.
BIG_MIB = 50


async def test_a_big_file_arrives_byte_identical_and_is_served_back(nodes, web, tmp_path: Path) -> None:
    a, b = await connected_pair(nodes)
    client_a, client_b = await web(a), await web(b)
    events_b = b.subscribe()
    size = BIG_MIB * 1024 * 1024
    upload = big_file(tmp_path, size)
    [sent] = await send_files(client_a, b.registration.peer_id, [("big.bin", upload, "application/x-test")])
    assert sent["size"] == size and sent["status"] == "offered" and sent["direction"] == "out"
    assert sent["sha256"] == hashlib.sha256(upload.read_bytes()).hexdigest()
    await wait_for(lambda: status_of(b, sent["id"]) == "offered", DEADLINE, "the offer")
    status, accepted = await post(client_b, f"/api/files/{sent['id']}/accept")
    assert status == 200 and accepted["status"] == "accepted"
    await wait_for(lambda: status_of(b, sent["id"]) == "complete", 120, "the file complete")
    await wait_for(lambda: status_of(a, sent["id"]) == "complete", DEADLINE, "the sender told")
    response = await client_b.get(f"/api/files/{sent['id']}", headers=BEARER)
    assert response.status == 200
    assert hashlib.sha256(await response.read()).hexdigest() == sent["sha256"]
    assert response.headers["Content-Disposition"].startswith("attachment;")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    kinds = []
    while not events_b.empty():
        event = events_b.get_nowait()
        if event["type"] == "file":
            kinds.append(event["kind"])
    assert kinds[0] == "offer" and kinds[-1] == "complete" and "progress" in kinds


async def test_ten_files_in_one_request_all_arrive(nodes, web) -> None:
    a, b = await connected_pair(nodes)
    client_a, client_b = await web(a), await web(b)
    contents = [os.urandom(30_000 + i) for i in range(10)]
    sent = await send_files(
        client_a, b.registration.peer_id, [(f"f{i}.txt", c, "text/plain") for i, c in enumerate(contents)]
    )
    assert len(sent) == 10
    await wait_for(lambda: all(status_of(b, s["id"]) == "offered" for s in sent), DEADLINE, "offers")
    for s in sent:
        assert (await post(client_b, f"/api/files/{s['id']}/accept"))[0] == 200
    await wait_for(lambda: all(status_of(b, s["id"]) == "complete" for s in sent), DEADLINE, "all complete")
    for s, content in zip(sent, contents, strict=True):
        response = await client_b.get(f"/api/files/{s['id']}", headers=BEARER)
        assert await response.read() == content


async def test_hostile_names_are_stored_safely_and_html_is_an_attachment(nodes, web) -> None:
    a, b = await connected_pair(nodes)
    client_b = await web(b)
    sent = [
        await a.send_file(b.registration.peer_id, name, mime, one_chunk(content))
        for name, content, mime in [
            ("../../etc/passwd", b"root", "text/plain"),
            ("a\nb", b"ab", "text/plain"),  # a browser sends it percent-encoded; a hostile peer as is
            ("x.html", b"<b>", "text/html"),
        ]
    ]
    await wait_for(lambda: all(status_of(b, s["id"]) == "offered" for s in sent), DEADLINE, "offers")
    for s in sent:
        await post(client_b, f"/api/files/{s['id']}/accept")
    await wait_for(lambda: all(status_of(b, s["id"]) == "complete" for s in sent), DEADLINE, "all complete")
    files_dir = b.config.data_dir / "files"
    stored = {p.name: p.read_bytes() for p in files_dir.iterdir()}
    assert stored == {"____etc_passwd": b"root", "a_b": b"ab", "x.html": b"<b>"}
    response = await client_b.get(f"/api/files/{sent[2]['id']}", headers=BEARER)
    assert response.headers["Content-Disposition"].startswith("attachment;")
    assert response.headers["X-Content-Type-Options"] == "nosniff"


async def test_a_picture_is_served_inline(nodes, web) -> None:
    a, b = await connected_pair(nodes)
    client_a, client_b = await web(a), await web(b)
    [sent] = await send_files(client_a, b.registration.peer_id, [("p.png", b"\x89PNG fake", "image/png")])
    await wait_for(lambda: status_of(b, sent["id"]) == "offered", DEADLINE, "offer")
    response = await client_b.get(f"/api/files/{sent['id']}", headers=BEARER)
    assert response.status == 404  # not received yet
    await post(client_b, f"/api/files/{sent['id']}/accept")
    await wait_for(lambda: status_of(b, sent["id"]) == "complete", DEADLINE, "complete")
    response = await client_b.get(f"/api/files/{sent['id']}", headers=BEARER)
    assert response.headers["Content-Type"] == "image/png"
    assert response.headers["Content-Disposition"].startswith("inline;")


async def test_an_oversize_offer_is_refused_on_both_sides(nodes, web) -> None:
    a, b = await connected_pair(nodes, max_file_size=10_000)
    client_a, client_b = await web(a), await web(b)
    events_a = a.subscribe()
    [sent] = await send_files(client_a, b.registration.peer_id, [("big.bin", os.urandom(10_001), "")])
    await wait_for(lambda: status_of(a, sent["id"]) == "failed", DEADLINE, "refused")
    for node in (a, b):
        record = node.store.get_file(sent["id"])
        assert record is not None and record.status == "failed" and "too large" in (record.error or "")
    failed = []
    while not events_a.empty():
        event = events_a.get_nowait()
        if event["type"] == "file" and event["kind"] == "failed":
            failed.append(event)
    assert failed and "too large" in failed[0]["file"]["error"]
    status, body = await post(client_b, f"/api/files/{sent['id']}/accept")
    assert status == 409


async def test_an_upload_over_our_own_limit_is_refused_and_removed(nodes, web) -> None:
    a = await nodes("a", max_file_size=1000)
    b = await nodes("b")
    client_a = await web(a)
    form = aiohttp.FormData()
    form.add_field("to", str(b.registration.peer_id))
    form.add_field("file", os.urandom(1001), filename="x.bin")
    response = await client_a.post("/api/files", data=form, headers=BEARER)
    assert response.status == 413
    assert "too large" in (await response.json())["error"]
    assert not any((a.config.data_dir / "files").iterdir())


@pytest.mark.parametrize("who", ["sender", "receiver"])
async def test_a_cancel_on_either_side_stops_both(nodes, web, tmp_path: Path, who: str) -> None:
    a, b = await connected_pair(nodes)
    client_a, client_b = await web(a), await web(b)
    [sent] = await send_files(client_a, b.registration.peer_id, [("big.bin", big_file(tmp_path, 16 << 20), "")])
    await wait_for(lambda: status_of(b, sent["id"]) == "offered", DEADLINE, "offer")
    await post(client_b, f"/api/files/{sent['id']}/accept")
    await wait_for(lambda: b.stats["file_bytes_received"] > 256 << 10, DEADLINE, "some bytes")
    status, body = await post(client_a if who == "sender" else client_b, f"/api/files/{sent['id']}/cancel")
    assert status == 200 and body["status"] == "cancelled"
    await wait_for(
        lambda: status_of(a, sent["id"]) == "cancelled" and status_of(b, sent["id"]) == "cancelled",
        DEADLINE,
        "both cancelled",
    )
    await wait_for(lambda: not a.engine.files._sending, DEADLINE, "the sender's stream stopped")
    received = b.stats["file_bytes_received"]
    await asyncio.sleep(0.5)
    assert b.stats["file_bytes_received"] == received < 16 << 20


async def test_a_relayed_transfer_completes(nodes, web) -> None:
    a = await nodes("a", relay_only=True)
    b = await nodes("b", relay_only=True)
    await wait_for(lambda: a.peer_state(b.registration.peer_id).online, DEADLINE, "a sees b")
    client_a, client_b = await web(a), await web(b)
    content = os.urandom(200_000)
    [sent] = await send_files(client_a, b.registration.peer_id, [("r.bin", content, "")])
    await wait_for(lambda: status_of(b, sent["id"]) == "offered", DEADLINE, "offer")
    await post(client_b, f"/api/files/{sent['id']}/accept")
    await wait_for(lambda: status_of(b, sent["id"]) == "complete", 60, "complete")
    assert b.peer_state(a.registration.peer_id).relayed
    response = await client_b.get(f"/api/files/{sent['id']}", headers=BEARER)
    assert await response.read() == content


async def test_a_peers_auto_accept_size_is_set_through_the_api_and_its_files_need_no_accept(nodes, web) -> None:
    a, b = await connected_pair(nodes)
    client_a, client_b = await web(a), await web(b)
    a_id = a.registration.peer_id
    response = await client_b.put(f"/api/peers/{a_id}/settings", json={"auto_accept_bytes": 50_000}, headers=BEARER)
    assert response.status == 204, await response.text()
    response = await client_b.get("/api/peers", headers=BEARER)
    [listed] = [p for p in await response.json() if p["id"] == a_id]
    assert listed["auto_accept_bytes"] == 50_000
    for bad in ({"auto_accept_bytes": -1}, {"auto_accept_bytes": "5"}, {"auto_accept_bytes": True}, {"other": 1}):
        response = await client_b.put(f"/api/peers/{a_id}/settings", json=bad, headers=BEARER)
        assert response.status == 400, bad
    small, big = os.urandom(50_000), os.urandom(50_001)
    sent = await send_files(client_a, b.registration.peer_id, [("s.bin", small, "x/y"), ("b.bin", big, "x/y")])
    await wait_for(lambda: status_of(b, sent[0]["id"]) == "complete", DEADLINE, "the small file, by itself")
    await wait_for(lambda: status_of(b, sent[1]["id"]) == "offered", DEADLINE, "the big offer")
    response = await client_b.get(f"/api/files/{sent[0]['id']}", headers=BEARER)
    assert await response.read() == small
    assert status_of(b, sent[1]["id"]) == "offered"  # over the size: the user decides


@contextlib.contextmanager
def small_disk(directory: Path, size: str) -> Iterator[Callable[[str], None]]:
    """A tmpfs of ``size`` at ``directory`` (root only: skipped otherwise);
    yields a function that resizes it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(directory)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace').strip()}")

    def resize(new_size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={new_size}", str(directory)], check=True)

    try:
        yield resize
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)  # lazy: the node may still hold a file


async def test_a_full_disk_on_the_receiver_pauses_both_sides_and_retry_finishes_when_there_is_room(
    nodes, web, tmp_path: Path
) -> None:
    with small_disk(tmp_path / "b" / "files", "512k") as resize:  # b's files/ (test_nodes: data dir tmp_path / name)
        a, b = await connected_pair(nodes)
        client_a, client_b = await web(a), await web(b)
        content = os.urandom(1536 * 1024)
        [sent] = await send_files(client_a, b.registration.peer_id, [("big.bin", content, "x/y")])
        await wait_for(lambda: status_of(b, sent["id"]) == "offered", DEADLINE, "the offer")
        assert (await post(client_b, f"/api/files/{sent['id']}/accept"))[0] == 200
        await wait_for(lambda: status_of(a, sent["id"]) == "paused", DEADLINE, "the sender told of the full disk")
        for node in (a, b):
            record = node.store.get_file(sent["id"])
            assert record is not None and record.status == "paused" and record.error == "the receiver's disk is full"
        record = b.store.get_file(sent["id"])
        assert record is not None
        held = (tmp_path / "b" / "files" / record.path).stat().st_size
        assert 0 < held < len(content)  # the part is kept
        resize("4m")
        status, retried = await post(client_b, f"/api/files/{sent['id']}/retry")
        assert status == 200 and retried["status"] == "accepted"
        await wait_for(lambda: status_of(a, sent["id"]) == "complete", DEADLINE, "the rest, once there is room")
        assert status_of(b, sent["id"]) == "complete"
        response = await client_b.get(f"/api/files/{sent['id']}", headers=BEARER)
        assert await response.read() == content
        assert b.engine.stats["file_bytes_received"] == len(content)  # the part held was not written again
