"""Build hook: compiles the rendezvous server's optional fast path.

``rendezvous/_fastpath.c`` becomes ``rendezvous/libfastpath.so``, a plain
shared library that ``rendezvous/fastpath.py`` loads with ctypes (no Python
headers needed).  With the system's ``cc`` (or ``$CC``); when there is none,
or it fails, the build still succeeds and the server runs its pure-Python
path, which answers the same requests with the same bytes.

``pip install -e .`` builds the library in place (the editable install runs
from the source tree); a wheel gets it as an extra file.  Run this file
(``python hatch_build.py``) to rebuild in place after editing the C source.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
SOURCE = ROOT / "rendezvous" / "_fastpath.c"
TARGET = "rendezvous/libfastpath.so"
FLAGS = ["-O2", "-fPIC", "-shared", "-Wall", "-Wextra", "-std=gnu11"]


def compile_library(output: Path) -> str | None:
    """Compile to ``output``; None on success, else why not."""
    if not sys.platform.startswith("linux"):
        return "the fast path needs Linux (recvmmsg/sendmmsg)"
    compiler = shlex.split(os.environ.get("CC", "")) or [shutil.which("cc") or shutil.which("gcc") or ""]
    if not compiler[0]:
        return "no C compiler (cc) found"
    partial = output.with_name(output.name + ".partial")
    try:
        subprocess.run([*compiler, *FLAGS, "-o", str(partial), str(SOURCE)], check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        partial.unlink(missing_ok=True)
        return f"{' '.join(compiler)} failed: {detail.strip()[:500]}"
    partial.replace(output)  # atomically: a running server keeps its mapped copy
    return None


try:
    from hatchling.builders.hooks.plugin.interface import BuildHookInterface
except ImportError:  # run as a script, outside a build
    BuildHookInterface = object


class FastPathBuildHook(BuildHookInterface):  # type: ignore[misc,valid-type]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        if version == "editable":
            output = ROOT / TARGET
        else:
            output = Path(tempfile.mkdtemp(prefix="peerlink-fastpath-")) / "libfastpath.so"
        failure = compile_library(output)
        if failure is not None:
            self.app.display_warning(f"peerlink: fast path not built ({failure}); the server will use the Python path")
            return
        if version != "editable":
            build_data["force_include"][str(output)] = TARGET
        # A compiled library makes the wheel platform-specific (it needs no particular Python).
        build_data["pure_python"] = False
        build_data["tag"] = f"py3-none-{sysconfig.get_platform().replace('-', '_').replace('.', '_')}"


if __name__ == "__main__":
    problem = compile_library(ROOT / TARGET)
    print(problem or f"built {TARGET}")
    sys.exit(1 if problem else 0)
