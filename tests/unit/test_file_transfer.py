"""Files between peers through the pure engines (tests/unit/peer_net.py,
literal times; the files themselves are real, in the test's directory)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from collections.abc import Iterator

import pytest
from peer_net import Peer, PeerNet

from webpeer import file_transfer
from webpeer.api import ApiError
from webpeer.events import FileChanged
from webpeer.file_transfer import DISK_FULL, PROGRESS_INTERVAL, STORED_NAME_BYTES, sanitize_name
from webpeer.store import StoreError


@pytest.fixture
def slow_sender(monkeypatch: pytest.MonkeyPatch) -> None:
    """Streams topped up a 4 KiB read at a time, only to 4 KiB unacknowledged: under 1 MB/s over
    peer_net's 10 ms round trip, so a transfer of a few hundred KB lasts
    long enough (in literal time) to be interrupted, and takes few datagrams."""
    monkeypatch.setattr(file_transfer, "SEND_BUFFER", 4 * 1024)
    monkeypatch.setattr(file_transfer, "CHUNK", 4 * 1024)


def pair(net: PeerNet, **config: object) -> tuple[Peer, Peer]:
    alice = net.add("alice", **config)
    bob = net.add("bob", **config)
    net.run_until(lambda: alice.engine.my_id is not None and bob.engine.my_id is not None, 2)
    net.run_until(lambda: alice.engine.session(bob.peer_id).online and bob.engine.session(alice.peer_id).online, 5)
    return alice, bob


def offer(sender: Peer, to: Peer, name: str, content: bytes, sha256: str | None = None) -> str:
    """The page uploads ``content`` as ``name`` and offers it (as PeerNode.send_file does)."""
    path = sender.files.create(name)
    sender.files.write(path, 0, content)
    digest = sha256 or hashlib.sha256(content).hexdigest()
    with sender.store.batch():
        record = sender.engine.files.offer(to.peer_id, name, path, len(content), digest, "image/png", sender.net.now)
    sender.flush()
    return record.id


def accept(peer: Peer, file_id: str) -> None:
    with peer.store.batch():
        peer.engine.files.accept(file_id, peer.net.now)
    peer.flush()


def cancel(peer: Peer, file_id: str) -> None:
    with peer.store.batch():
        peer.engine.files.cancel(file_id, peer.net.now)
    peer.flush()


def status(peer: Peer, file_id: str) -> str:
    record = peer.store.get_file(file_id)
    return record.status if record is not None else "absent"


def stored(peer: Peer, file_id: str) -> bytes:
    record = peer.store.get_file(file_id)
    assert record is not None and record.path
    return (peer.files.directory / record.path).read_bytes()


def file_events(peer: Peer, file_id: str) -> list[FileChanged]:
    return [e for e in peer.events if isinstance(e, FileChanged) and e.file["id"] == file_id]


def content_of(size: int) -> bytes:
    return os.urandom(size)


# ------------------------------------------------------------ names


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        ("../../etc/passwd", "____etc_passwd"),
        ("a\nb", "a_b"),
        ("..", "_"),
        ("", "file"),
        ("C:\\Windows\\x.exe", "C__Windows_x.exe"),
        (".bashrc", "bashrc"),
        ("re\u202eport.txt", "re_port.txt"),  # a right-to-left override would disguise the extension
        ("photo.jpg", "photo.jpg"),
    ],
)
def test_an_offered_name_is_made_safe_to_store(offered: str, expected: str) -> None:
    assert sanitize_name(offered) == expected


def test_a_long_name_is_cut_to_the_limit_keeping_its_extension() -> None:
    name = sanitize_name("é" * 300 + ".tar.gz")
    assert len(name.encode()) <= STORED_NAME_BYTES
    assert name.endswith(".gz") and name.startswith("é")


# ------------------------------------------------------------ offer, accept, complete


def test_an_accepted_file_arrives_byte_identical_and_both_sides_say_complete(net: PeerNet) -> None:
    alice, bob = pair(net)
    content = content_of(200_000)
    file_id = offer(alice, bob, "photo.png", content)
    net.run_until(lambda: status(bob, file_id) == "offered", 2)
    assert status(alice, file_id) == "offered"
    offered = file_events(bob, file_id)[0]
    assert offered.kind == "offer" and offered.file["name"] == "photo.png" and offered.file["size"] == len(content)
    net.run(1)
    assert status(bob, file_id) == "offered"  # nothing moves before the user accepts
    assert bob.engine.stats["file_bytes_received"] == 0
    accept(bob, file_id)
    net.run_until(lambda: status(alice, file_id) == "complete", 20)
    assert status(bob, file_id) == "complete"
    assert stored(bob, file_id) == content
    assert [e.kind for e in file_events(alice, file_id)][-1] == "complete"
    kinds = [e.kind for e in file_events(bob, file_id)]
    assert kinds[0] == "offer" and kinds[1] == "accepted" and kinds[-1] == "complete"


def test_the_receiver_hashes_as_it_writes_and_reads_nothing_again_at_the_end(
    net: PeerNet, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob = pair(net)
    content = content_of(150_000)
    file_id = offer(alice, bob, "x.bin", content)
    net.run_until(lambda: status(bob, file_id) == "offered", 2)

    def no_rereading(path: str) -> str:
        raise AssertionError("the whole file was read again")

    monkeypatch.setattr(bob.files, "sha256", no_rereading)
    accept(bob, file_id)
    net.run_until(lambda: status(alice, file_id) == "complete", 10)
    assert status(bob, file_id) == "complete" and stored(bob, file_id) == content


def test_offers_past_the_limit_per_peer_are_refused(net: PeerNet, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(file_transfer, "MAX_OFFERS_PER_PEER", 3)
    alice, bob = pair(net)
    ids = [offer(alice, bob, f"f{i}", b"x") for i in range(4)]
    net.run_until(lambda: status(alice, ids[3]) == "failed", 5)
    assert [status(bob, i) for i in ids] == ["offered", "offered", "offered", "absent"]
    assert "too many offers" in (alice.store.get_file(ids[3]).error or "")  # type: ignore[union-attr]


def test_progress_events_carry_bytes_and_rate_at_most_ten_a_second(net: PeerNet, slow_sender: None) -> None:
    alice, bob = pair(net)
    size = 300_000
    file_id = offer(alice, bob, "big.bin", content_of(size))
    net.run_until(lambda: status(bob, file_id) == "offered", 2)
    accept(bob, file_id)
    started = net.now
    net.run_until(lambda: status(bob, file_id) == "complete", 30)
    progress = [e for e in file_events(bob, file_id) if e.kind == "progress"]
    assert progress, "no progress event"
    times_apart = (net.now - started) / PROGRESS_INTERVAL + 1
    assert len(progress) <= times_apart
    sizes = [e.to_json()["bytes"] for e in progress]
    assert len(progress) >= 2  # the transfer took a few tenths of a second
    assert sizes == sorted(sizes) and 0 < sizes[-1] < size
    assert all(e.to_json()["rate"] >= 0 for e in progress) and any(e.rate > 0 for e in progress)


def test_an_offer_made_before_any_link_goes_once_one_is_ready(net: PeerNet) -> None:
    alice, bob = pair(net)
    assert alice.engine.session(bob.peer_id).link is None
    file_id = offer(alice, bob, "late.txt", b"hello")
    net.run_until(lambda: status(bob, file_id) == "offered", 10)
    accept(bob, file_id)
    net.run_until(lambda: status(alice, file_id) == "complete", 10)
    assert stored(bob, file_id) == b"hello"


def test_an_empty_file_completes(net: PeerNet) -> None:
    alice, bob = pair(net)
    file_id = offer(alice, bob, "empty", b"")
    net.run_until(lambda: status(bob, file_id) == "offered", 2)
    accept(bob, file_id)
    net.run_until(lambda: status(alice, file_id) == "complete" and status(bob, file_id) == "complete", 5)
    assert stored(bob, file_id) == b""


def test_hostile_names_are_stored_inside_files_and_never_overwrite(net: PeerNet) -> None:
    alice, bob = pair(net)
    (bob.files.directory).mkdir(parents=True, exist_ok=True)
    (bob.files.directory / "____etc_passwd").write_bytes(b"mine")
    ids = [offer(alice, bob, name, name.encode()) for name in ("../../etc/passwd", "a\nb", "../../etc/passwd")]
    net.run_until(lambda: all(status(bob, i) == "offered" for i in ids), 2)
    for file_id in ids:
        accept(bob, file_id)
    net.run_until(lambda: all(status(bob, i) == "complete" for i in ids), 10)
    paths = [bob.store.get_file(i).path for i in ids]  # type: ignore[union-attr]
    assert paths == ["____etc_passwd (1)", "a_b", "____etc_passwd (2)"]
    assert (bob.files.directory / "____etc_passwd").read_bytes() == b"mine"
    assert sorted(p.name for p in bob.files.directory.iterdir()) == sorted(["____etc_passwd", *paths])
    assert stored(bob, ids[1]) == b"a\nb"


def test_several_files_at_once_all_arrive(net: PeerNet) -> None:
    alice, bob = pair(net)
    contents = [content_of(20_000 + i * 1000) for i in range(10)]
    ids = [offer(alice, bob, f"f{i}.bin", content) for i, content in enumerate(contents)]
    net.run_until(lambda: all(status(bob, i) == "offered" for i in ids), 2)
    for file_id in ids:
        accept(bob, file_id)
    net.run_until(lambda: all(status(alice, i) == "complete" for i in ids), 20)
    assert [stored(bob, i) for i in ids] == contents


# ------------------------------------------------------------ refusals, cancels, failures


def test_an_oversize_offer_is_refused_with_the_reason_on_both_sides(net: PeerNet) -> None:
    alice, bob = pair(net, max_file_size=1000)
    file_id = offer(alice, bob, "big.bin", content_of(1001))
    net.run_until(lambda: status(alice, file_id) == "failed", 2)
    assert status(bob, file_id) == "failed"
    for peer in (alice, bob):
        record = peer.store.get_file(file_id)
        assert record is not None and "too large" in (record.error or "") and "1000" in (record.error or "")
        assert file_events(peer, file_id)[-1].kind == "failed"
    with pytest.raises(ApiError) as refused:
        accept(bob, file_id)
    assert refused.value.status == 409
    assert not bob.files.directory.exists() or not any(bob.files.directory.iterdir())


@pytest.mark.parametrize("who", ["receiver", "sender"])
def test_a_cancel_on_either_side_mid_transfer_stops_both(net: PeerNet, who: str, slow_sender: None) -> None:
    alice, bob = pair(net)
    size = 300_000
    file_id = offer(alice, bob, "big.bin", content_of(size))
    net.run_until(lambda: status(bob, file_id) == "offered", 2)
    accept(bob, file_id)
    net.run_until(lambda: bob.engine.stats["file_bytes_received"] > 50_000, 10)
    assert status(bob, file_id) == "accepted"
    cancel(bob if who == "receiver" else alice, file_id)
    net.run_until(lambda: status(alice, file_id) == "cancelled" and status(bob, file_id) == "cancelled", 2)
    net.run(0.5)  # what was in flight lands (and is dropped)
    received = bob.engine.stats["file_bytes_received"]
    net.run(3)
    assert bob.engine.stats["file_bytes_received"] == received < size
    assert alice.engine.files._sending == {}
    other = alice if who == "receiver" else bob
    assert other.store.get_file(file_id).error == "cancelled by the other side"  # type: ignore[union-attr]


def test_a_cancel_before_the_accept_reaches_the_receiver(net: PeerNet) -> None:
    alice, bob = pair(net)
    file_id = offer(alice, bob, "x.txt", b"x")
    net.run_until(lambda: status(bob, file_id) == "offered", 2)
    cancel(alice, file_id)
    net.run_until(lambda: status(bob, file_id) == "cancelled", 2)
    with pytest.raises(ApiError):
        accept(bob, file_id)


def test_a_file_that_does_not_match_its_hash_fails_on_both_sides(net: PeerNet) -> None:
    alice, bob = pair(net)
    content = content_of(200_000)
    file_id = offer(alice, bob, "x.bin", content, sha256=hashlib.sha256(b"something else").hexdigest())
    net.run_until(lambda: status(bob, file_id) == "offered", 2)
    accept(bob, file_id)
    net.run_until(lambda: status(bob, file_id) == "failed" and status(alice, file_id) == "failed", 10)
    for peer in (alice, bob):
        assert "SHA-256" in (peer.store.get_file(file_id).error or "")  # type: ignore[union-attr]
    assert bob.engine.stats["file_bytes_received"] == len(content)


def test_an_offer_from_a_new_key_not_accepted_yet_is_refused_and_not_stored(net: PeerNet) -> None:
    alice, bob = pair(net)
    bob_id = bob.peer_id
    bob2 = net.new_key(bob)
    net.run_until(lambda: alice.engine.trust.of(bob_id).state.value == "changed", 10)
    file_id = offer(bob2, alice, "from the new key.txt", b"hello")
    net.run_until(lambda: status(bob2, file_id) == "failed", 10)
    assert "new key" in (bob2.store.get_file(file_id).error or "")  # type: ignore[union-attr]
    assert status(alice, file_id) == "absent"


def test_a_file_for_an_id_the_server_never_assigned_fails(net: PeerNet) -> None:
    alice, bob = pair(net)
    path = alice.files.create("x")
    with alice.store.batch():
        record = alice.engine.files.offer(99, "x", path, 0, hashlib.sha256(b"").hexdigest(), "text/plain", net.now)
    alice.flush()
    net.run_until(lambda: status(alice, record.id) == "failed", 5)
    assert alice.store.get_file(record.id).error == "unknown peer 99"  # type: ignore[union-attr]


# ------------------------------------------------------------ auto-accept


def test_offers_up_to_the_peers_auto_accept_size_are_accepted_without_the_user(net: PeerNet) -> None:
    alice, bob = pair(net)
    bob.engine.set_auto_accept(alice.peer_id, 100_000)
    at_limit, small, big = content_of(100_000), content_of(5_000), content_of(100_001)
    at_id, small_id, big_id = (offer(alice, bob, n, c) for n, c in (("a", at_limit), ("b", small), ("c", big)))
    net.run_until(lambda: status(alice, at_id) == "complete" and status(alice, small_id) == "complete", 20)
    assert stored(bob, at_id) == at_limit and stored(bob, small_id) == small
    assert [e.kind for e in file_events(bob, small_id)][:2] == ["offer", "accepted"]
    net.run(1)
    assert status(bob, big_id) == "offered" and status(alice, big_id) == "offered"  # one byte over: the user decides
    assert bob.engine.stats["files_auto_accepted"] == 2


def test_auto_accept_is_per_peer_stored_and_zero_turns_it_off(net: PeerNet) -> None:
    alice, bob = pair(net)
    carol = net.add("carol")
    net.run_until(lambda: carol.engine.my_id is not None, 2)
    bob.engine.set_auto_accept(alice.peer_id, 1_000_000)
    assert bob.store.auto_accept(alice.peer_id) == 1_000_000 and bob.store.auto_accept(carol.peer_id) == 0
    [listed] = [p for p in bob.engine.peers_json() if p["id"] == alice.peer_id]
    assert listed["auto_accept_bytes"] == 1_000_000
    from_carol = offer(carol, bob, "c.bin", content_of(1_000))
    net.run_until(lambda: status(bob, from_carol) == "offered", 5)
    net.run(1)
    assert status(bob, from_carol) == "offered"  # carol's files still ask
    bob.engine.set_auto_accept(alice.peer_id, 0)
    assert bob.store.auto_accept(alice.peer_id) == 0
    from_alice = offer(alice, bob, "a.bin", content_of(1_000))
    net.run_until(lambda: status(bob, from_alice) == "offered", 5)
    net.run(1)
    assert status(bob, from_alice) == "offered"


def test_an_auto_accepted_file_that_cannot_be_created_waits_for_the_user(
    net: PeerNet, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob = pair(net)
    bob.engine.set_auto_accept(alice.peer_id, 10_000)

    def no_room(name: str) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bob.files, "create", no_room)
    file_id = offer(alice, bob, "x.bin", content_of(1_000))
    net.run_until(lambda: status(bob, file_id) == "offered", 5)
    net.run(1)
    assert status(bob, file_id) == "offered" and status(alice, file_id) == "offered"


# ------------------------------------------------------------ a full disk on the receiver


class Disk:
    """The receiver's files/ through its port: full while ``full`` is set
    (each write past it raises ENOSPC, as os.pwrite does)."""

    def __init__(self, peer: Peer, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = False
        self.refused = 0
        write = peer.files.write

        def checked_write(path: str, offset: int, data: bytes) -> None:
            if self.full:
                self.refused += 1
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            write(path, offset, data)

        monkeypatch.setattr(peer.files, "write", checked_write)


def error_of(peer: Peer, file_id: str) -> str | None:
    record = peer.store.get_file(file_id)
    assert record is not None
    return record.error


def pause_half_way(net: PeerNet, alice: Peer, bob: Peer, disk: Disk, size: int) -> tuple[str, bytes, int]:
    """A transfer that fills bob's disk half way; returns the file id, its
    content and the bytes bob holds."""
    content = content_of(size)
    file_id = offer(alice, bob, "big.bin", content)
    net.run_until(lambda: status(bob, file_id) == "offered", 2)
    accept(bob, file_id)
    net.run_until(lambda: bob.engine.stats["file_bytes_received"] >= size // 2, 20)
    disk.full = True
    net.run_until(lambda: status(bob, file_id) == "paused" and status(alice, file_id) == "paused", 10)
    held = bob.engine.stats["file_bytes_received"]
    assert 0 < held < size
    assert error_of(bob, file_id) == DISK_FULL and error_of(alice, file_id) == DISK_FULL  # said on both sides
    assert [e.kind for e in file_events(alice, file_id)][-1] == "paused"
    record = bob.store.get_file(file_id)
    assert record is not None and (bob.files.directory / record.path).stat().st_size == held  # kept
    return file_id, content, held


def test_a_full_disk_pauses_both_sides_keeps_the_part_and_retry_resumes_from_it(
    net: PeerNet, slow_sender: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob = pair(net)
    disk = Disk(bob, monkeypatch)
    size = 200_000
    file_id, content, held = pause_half_way(net, alice, bob, disk, size)
    refused = disk.refused
    net.run(3)
    assert disk.refused == refused  # the sender stopped: no more bytes to refuse
    assert status(alice, file_id) == "paused" and status(bob, file_id) == "paused"
    with pytest.raises(ApiError) as refused_retry:
        bob.engine.files.retry("0" * 32, net.now)
    assert refused_retry.value.status == 404
    disk.full = False
    with bob.store.batch():
        bob.engine.files.retry(file_id, net.now)
    bob.flush()
    net.run_until(lambda: status(alice, file_id) == "complete", 20)
    assert status(bob, file_id) == "complete" and stored(bob, file_id) == content
    assert bob.engine.stats["file_bytes_received"] == size  # the part held was not written again
    with pytest.raises(ApiError) as not_paused:
        bob.engine.files.retry(file_id, net.now)
    assert not_paused.value.status == 409


def test_a_paused_file_resumes_when_the_sender_retries(
    net: PeerNet, slow_sender: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob = pair(net)
    disk = Disk(bob, monkeypatch)
    file_id, content, _ = pause_half_way(net, alice, bob, disk, 120_000)
    disk.full = False
    with alice.store.batch():
        alice.engine.files.retry(file_id, net.now)
    alice.flush()
    net.run_until(lambda: status(bob, file_id) == "complete" and status(alice, file_id) == "complete", 20)
    assert stored(bob, file_id) == content


def test_a_paused_file_resumes_by_itself_on_the_next_link(
    net: PeerNet, slow_sender: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob = pair(net)
    disk = Disk(bob, monkeypatch)
    size = 120_000
    file_id, content, held = pause_half_way(net, alice, bob, disk, size)
    bob.crash()  # the user frees space and restarts the peer
    net.run(1)
    bob2 = net.start_again(bob, last_id=bob.peer_id)
    net.run_until(lambda: status(bob2, file_id) == "complete" and status(alice, file_id) == "complete", 60)
    assert stored(bob2, file_id) == content
    assert bob2.engine.stats["file_bytes_received"] == size - held


# ------------------------------------------------------------ control frames wait for the commit


def test_file_done_leaves_only_after_the_receivers_commit_holds_the_complete_file(
    net: PeerNet, slow_sender: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob = pair(net)
    size = 100_000
    content = content_of(size)
    file_id = offer(alice, bob, "f.bin", content)
    net.run_until(lambda: status(bob, file_id) == "offered", 2)
    accept(bob, file_id)
    net.run_until(lambda: bob.engine.stats["file_bytes_received"] >= size // 2, 20)
    failing = True
    batch = bob.store.batch

    @contextlib.contextmanager
    def commit_fails() -> Iterator[None]:
        # Everything inside is done, then the commit fails (a full disk, an
        # I/O error): the transaction rolls back.
        with batch():
            yield
            if failing:
                raise StoreError("disk I/O error")

    monkeypatch.setattr(bob.store, "batch", commit_fails)
    net.run_until(lambda: bob.engine.stats["file_bytes_received"] == size, 20)
    net.run(3)
    assert status(bob, file_id) == "accepted"  # what the history holds
    assert status(alice, file_id) == "accepted"  # so the sender was not told "done"
    failing = False
    net.run_until(lambda: status(alice, file_id) == "complete", 20)  # the next commit, then file_done
    assert status(bob, file_id) == "complete" and stored(bob, file_id) == content


def test_an_accept_leaves_only_after_its_commit(net: PeerNet, monkeypatch: pytest.MonkeyPatch) -> None:
    alice, bob = pair(net)
    file_id = offer(alice, bob, "f.bin", content_of(10_000))
    net.run_until(lambda: status(bob, file_id) == "offered", 2)
    with pytest.raises(StoreError), bob.store.batch():
        bob.engine.files.accept(file_id, net.now)
        raise StoreError("disk I/O error")  # the accept's commit fails
    bob.engine.rolled_back()  # as the node does
    assert status(bob, file_id) == "offered"
    net.run(2)  # timers flush bob: its next commit writes the accept again, then it leaves
    net.run_until(lambda: status(alice, file_id) == "complete", 20)
    assert status(bob, file_id) == "complete"


# ------------------------------------------------------------ resume


def test_a_receiver_killed_half_way_resumes_after_restart_without_sending_much_again(
    net: PeerNet, slow_sender: None
) -> None:
    alice, bob = pair(net)
    size = 300_000
    content = content_of(size)
    file_id = offer(alice, bob, "big.bin", content)
    net.run_until(lambda: status(bob, file_id) == "offered", 2)
    accept(bob, file_id)
    net.run_until(lambda: bob.engine.stats["file_bytes_received"] >= size // 2, 20)
    before = bob.engine.stats["file_bytes_received"]
    assert before < size
    bob.crash()
    net.run(1)
    bob2 = net.start_again(bob, last_id=bob.peer_id)
    net.run_until(lambda: status(bob2, file_id) == "complete", 60)
    assert stored(bob2, file_id) == content
    net.run_until(lambda: status(alice, file_id) == "complete", 5)
    again = bob2.engine.stats["file_bytes_received"]
    assert before + again == size  # only what was missing was written again
    # The bytes that came over the wire after the restart, duplicates
    # included: the sender restarted from what the receiver held.
    assert bob2.engine.stats["file_stream_bytes"] <= size - before + size // 10
    assert alice.engine.stats["file_streams_opened"] == 2
