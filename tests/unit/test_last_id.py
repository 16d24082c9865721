"""webpeer/last_id.py: the id of the last registration, kept in the data dir."""

from __future__ import annotations

from pathlib import Path

from webpeer import last_id

SERVER = ("127.0.0.1", 3478)


def test_saved_id_comes_back_for_the_same_server_only(tmp_path: Path) -> None:
    assert last_id.load(tmp_path, SERVER) is None
    last_id.save(tmp_path, SERVER, 42)
    assert last_id.load(tmp_path, SERVER) == 42
    assert last_id.load(tmp_path, ("127.0.0.1", 3479)) is None  # another server gives other ids
    last_id.save(tmp_path, SERVER, 43)
    assert last_id.load(tmp_path, SERVER) == 43
    assert [p.name for p in tmp_path.iterdir()] == [last_id.FILE_NAME]  # no temporary left behind


def test_a_broken_file_counts_as_none(tmp_path: Path) -> None:
    path = tmp_path / last_id.FILE_NAME
    for content in [b"", b"{", b"[]", b'{"server": "127.0.0.1:3478", "id": 0}', b'{"server": "127.0.0.1:3478", "id": true}',
                    b'{"server": "127.0.0.1:3478", "id": "7"}', b"\xff", b" " * 5000]:  # fmt: skip
        path.write_bytes(content)
        assert last_id.load(tmp_path, SERVER) is None, content
