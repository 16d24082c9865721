"""How the browser tests launch Debian's Chromium (headless, as root, offline)."""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM_ARGS = [
    "--no-sandbox",  # root in a container: no user namespaces for the sandbox
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # No DNS at all.  For page loads the rules apply to IP literals too, so
    # the loopback is excluded by name; everything else fails at once.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]


def chromium_path() -> str:
    """$PEERLINK_CHROMIUM, else Debian's chromium; missing: skip unless root (then fail)."""
    path = os.environ.get("PEERLINK_CHROMIUM") or shutil.which("chromium")
    if path:
        return path
    hint = "chromium is not installed (Debian package chromium); scripts/system-deps.sh installs it"
    if os.geteuid() != 0:
        pytest.skip(f"{hint} when run as root")
    pytest.fail(f"{hint}: run it (we are root, so this is not skipped)")
