"""The page's reducer (static/state.js) under ``node --test``: no browser needed.

The cases are in tests/js/state.test.mjs, and the files view's rule for late
snapshots (static/views/files.js) in tests/js/files.test.mjs.  static/ has no
package.json (it is served as is), so Node is told to detect ES module syntax
in state.js itself; Node 22.7 and later does that by default.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _node() -> tuple[str, int]:
    node = shutil.which("node")
    if node is None:
        pytest.skip(
            "node is not installed (Debian package nodejs); the reducer is then only tested through the browser tests"
        )
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    match = re.match(r"v(\d+)\.(\d+)", version)
    if match is None or (int(match[1]), int(match[2])) < (20, 10):
        pytest.skip(f"node {version} is too old: node --test with ES module detection needs 20.10 or later")
    return node, int(match[1])


def test_reducer_under_node() -> None:
    node, major = _node()
    detect = ["--experimental-detect-module"] if major < 23 else []
    result = subprocess.run(
        [
            node,
            *detect,
            "--test",
            str(HERE / "state.test.mjs"),
            str(HERE / "files.test.mjs"),
            str(HERE / "group_state.test.mjs"),
            str(HERE / "announce.test.mjs"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=HERE,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^# fail 0$", result.stdout, re.M), result.stdout
