"""The data dir's files/: where sent and received files live
(webpeer.file_transfer.FileStorage).  Read and written by offset, a chunk
at a time; a few descriptors are kept open between chunks (a transfer
writes thousands of them)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .file_transfer import sanitize_name

MAX_OPEN = 32  # descriptors kept open at once; the oldest closes past it
MAX_TRIES = 1000  # "name (1).ext" ... before giving up on a name
HASH_CHUNK = 1024 * 1024


class FileStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._open: dict[str, int] = {}

    def _full(self, path: str) -> Path:
        # Names come from create() (or from our own history), but a name with
        # a separator never reaches the file system from here.
        if not path or "/" in path or "\\" in path or path in (".", ".."):
            raise OSError(f"not a file name in files/: {path!r}")
        return self.directory / path

    def create(self, name: str) -> str:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        safe = sanitize_name(name)
        stem, dot, ext = safe.rpartition(".")
        if not dot or not stem:
            stem, dot, ext = safe, "", ""
        for attempt in range(MAX_TRIES):
            candidate = safe if attempt == 0 else f"{stem} ({attempt}){dot}{ext}"
            try:
                fd = os.open(self._full(candidate), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue
            self._keep(candidate, fd)
            return candidate
        raise OSError(f"no free name for {safe!r} in {self.directory}")

    def size(self, path: str) -> int:
        return self._full(path).stat().st_size

    def read(self, path: str, offset: int, length: int) -> bytes:
        return os.pread(self._fd(path), length, offset)

    def write(self, path: str, offset: int, data: bytes) -> None:
        fd = self._fd(path)
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written

    def sha256(self, path: str) -> str:
        digest = hashlib.sha256()
        with open(self._full(path), "rb") as file:
            while chunk := file.read(HASH_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

    def release(self, path: str) -> None:
        fd = self._open.pop(path, None)
        if fd is not None:
            os.close(fd)

    def local_path(self, path: str) -> Path:
        """Where the file is, for the web layer to serve it."""
        return self._full(path)

    def close(self) -> None:
        for fd in self._open.values():
            os.close(fd)
        self._open.clear()

    def _fd(self, path: str) -> int:
        fd = self._open.get(path)
        if fd is None:
            fd = os.open(self._full(path), os.O_RDWR | os.O_CLOEXEC)
            self._keep(path, fd)
        return fd

    def _keep(self, path: str, fd: int) -> None:
        if len(self._open) >= MAX_OPEN:
            oldest = next(iter(self._open))
            os.close(self._open.pop(oldest))
        self._open[path] = fd
