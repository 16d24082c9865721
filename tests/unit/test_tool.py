"""rendezvous.tool: the help's examples parse, and stats reads a registry file."""

from __future__ import annotations

import time
from pathlib import Path

from rendezvous.sqlite_registry import SqliteRegistry
from rendezvous.tool import build_parser, stats


def test_options_go_before_or_after_the_command() -> None:
    parser = build_parser()
    after = parser.parse_args(["register", "--name", "alice", "--server", "127.0.0.1:9"])
    before = parser.parse_args(["--name", "alice", "--server", "127.0.0.1:9", "register"])
    for args in (after, before):
        assert (args.command, args.name, args.server) == ("register", "alice", ("127.0.0.1", 9))
    assert parser.parse_args(["list"]).name == "operator"  # a command's copies do not reset defaults
    assert parser.parse_args(["--name", "x", "list"]).name == "x"


async def test_stats_of_a_new_registry(tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite3"
    registry = SqliteRegistry(db)
    await registry.open()
    await registry.close()
    lines = stats(db, time.time())
    assert lines[1:] == ["ids given out 0 (highest 0)", "online now    0", "seen in 24 h  0"]
