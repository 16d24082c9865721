"""One webpeer process per data dir: a lock file, and a clear refusal.

Two processes on one data dir would share a key, so the second one's
registration would take the id over and drop the first one's links, and
both would write the same history.  The first process holds an exclusive
``flock`` on ``webpeer.lock`` in the data dir for as long as it runs (the
kernel releases it when the process ends, even after ``kill -9``, so a stale
file never blocks anyone), and writes its pid and its page's port into it, so
the second one can say which process to look for.

The file is never deleted: deleting it would let a third process lock a new
file while the second still holds the old one.

The holder also writes its page's access token to ``page.token`` (mode
0600, like the key): the pid and port say where the running peer is, the
token lets the same user's ``webpeer chat`` and script commands talk to it
(webpeer/peerclient.py) instead of being refused.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

LOCK_NAME = "webpeer.lock"
TOKEN_NAME = "page.token"


class DataDirError(Exception):
    """The data dir cannot be used; the message is one line for the user."""


class DataDirBusy(DataDirError):
    """Another process holds the data dir."""

    def __init__(self, data_dir: Path, pid: int | None, port: int | None) -> None:
        self.pid, self.port = pid, port
        who = f"pid {pid}" if pid is not None else "another process"
        page = f", page http://127.0.0.1:{port}/" if port is not None else ""
        super().__init__(
            f"the data dir {data_dir} is in use by another webpeer ({who}{page}); "
            "stop that one, or give this one another --data-dir"
        )


class DataDirLock:
    """The lock on one data dir, held from :meth:`acquire` until :meth:`release`
    (or the end of the process)."""

    def __init__(self, data_dir: Path, fd: int) -> None:
        self.data_dir = data_dir
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, data_dir: Path) -> DataDirLock:
        """Create the data dir if needed and lock it; raises :class:`DataDirBusy`
        when another process has it, :class:`DataDirError` when it cannot be
        written (read-only, not a directory, no permission)."""
        path = data_dir / LOCK_NAME
        try:
            data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            # No O_TRUNC: the holder's pid and port must survive our open.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as error:
            raise DataDirError(unusable(data_dir, error)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = _read_holder(fd)
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise DataDirBusy(data_dir, *holder) from None
            raise DataDirError(unusable(data_dir, error)) from None
        lock = cls(data_dir, fd)
        try:
            lock.record(None)
        except OSError as error:
            lock.release()
            raise DataDirError(unusable(data_dir, error)) from None
        return lock

    def record(self, port: int | None) -> None:
        """Write our pid (and, once the page is up, its port) for a second process to read."""
        assert self._fd is not None
        text = f"{os.getpid()} {port if port is not None else '-'}\n".encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, text, 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None


def write_token(data_dir: Path, token: str) -> None:
    """The page's token, readable by this user only (the token opens the whole API)."""
    fd = os.open(data_dir / TOKEN_NAME, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a file left by an older run may have other modes
        os.write(fd, f"{token}\n".encode())
    finally:
        os.close(fd)


def read_token(data_dir: Path) -> str | None:
    try:
        return (data_dir / TOKEN_NAME).read_text().strip() or None
    except OSError:
        return None


def read_holder(data_dir: Path) -> tuple[int | None, int | None]:
    """The pid and page port the lock's holder wrote (None for what it has not written)."""
    try:
        fd = os.open(data_dir / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None, None
    try:
        return _read_holder(fd)
    finally:
        os.close(fd)


def unusable(data_dir: Path, error: OSError) -> str:
    """One line saying why the data dir cannot be used."""
    if error.errno == errno.EROFS:
        why = "it is on a read-only file system"
    elif error.errno in (errno.EACCES, errno.EPERM):
        why = "it is not writable by this user"
    elif error.errno in (errno.ENOTDIR, errno.EEXIST):
        why = "it is not a directory"
    elif error.errno == errno.ENOSPC:
        why = "its disk is full"
    else:
        why = error.strerror or str(error)
    return f"cannot use the data dir {data_dir}: {why} ({error.strerror or error})"


def _read_holder(fd: int) -> tuple[int | None, int | None]:
    """The pid and port the holder wrote (None for what it has not written yet)."""
    try:
        fields = os.pread(fd, 64, 0).decode("ascii", "replace").split()
    except OSError:
        return None, None
    pid = int(fields[0]) if fields and fields[0].isdigit() else None
    port = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None
    return pid, port
