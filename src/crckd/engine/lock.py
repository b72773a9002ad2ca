"""One writer per folder: the exclusive lock that `crckd train` (its main process), `crckd
compare` and anything else that writes a run folder holds for its whole life.

The lock is a POSIX record lock (`fcntl.lockf`) on `FOLDER/.crckd.lock`, taken without waiting.
It belongs to the process: the kernel drops it when the process ends in any way (SIGKILL
included), so a lock left by a dead process is free at once and the next writer takes it over
(and says so). It is not shared with forked children, unlike a `flock` lock (what `filelock`
takes), which a killed trainer's DataLoader workers would keep holding until they notice.
Beside it, `FOLDER/.crckd.lock.json` names the holder (pid, host, start time, command) for the
message that refuses a second writer; a holder that ends cleanly deletes it.

On NFS the lock is the server's (NLM for v3, built into v4), so it holds across hosts; a
crashed client's lock is freed when the server gives up its lease. A file system without POSIX
locks makes `acquire` fail with a `RunFolderError` that says so.

A process may take the lock of a folder it already holds (nested holders, e.g. a command that
holds a folder and trains inside it): the lock is released when the last holder releases it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from crckd.engine.run_folder import atomic_write_text, write_guard
from crckd.errors import RunFolderError

LOCK_NAME = ".crckd.lock"
HOLDER_NAME = ".crckd.lock.json"
# A lock found taken is tried again for this long: another process may only be checking it.
_RETRY_SECONDS = 0.5

_BUSY = (errno.EACCES, errno.EAGAIN)


class _Held:
    """The open, locked file of a folder this process holds, and how many holders share it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.holders = 1


# Folders (resolved) this process holds. A POSIX lock is the process's: a second descriptor
# of the same file would "take" it again without a conflict, and closing it would drop it.
_HELD: dict[Path, _Held] = {}
_HELD_GUARD = threading.Lock()


class RunLock:
    """The exclusive writer lock of `folder` (a context manager, or `acquire` and `release`).

    `acquire` creates the folder if needed; a folder held by another process raises
    RunFolderError at once, naming the holder's pid, host and start time and what to do.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._key = self.folder.resolve()
        self._holding = False

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    @property
    def holder_path(self) -> Path:
        return self.folder / HOLDER_NAME

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._holding

    def check(self) -> None:
        """Raise RunFolderError if another process holds the lock, without taking it or
        writing anything (so that a second writer is refused before it does any work)."""
        with _HELD_GUARD:
            if self._key in _HELD:
                return
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
            except OSError:  # no lock file (never locked), or none that this process can open
                return
            try:
                if not _try_lock(fd, self.path):
                    raise self._refusal()
            finally:
                os.close(fd)  # drops the test lock; this process held no other on the file

    def acquire(self) -> None:
        """Take the lock (a no-op if this object holds it already)."""
        if self._holding:
            return
        with _HELD_GUARD:
            held = _HELD.get(self._key)
            if held is not None:
                held.holders += 1
            else:
                _HELD[self._key] = self._lock()
        self._holding = True

    def release(self) -> None:
        """Give the lock up (a no-op if this object does not hold it)."""
        if not self._holding:
            return
        self._holding = False
        with _HELD_GUARD:
            held = _HELD[self._key]
            held.holders -= 1
            if held.holders:
                return
            del _HELD[self._key]
            try:  # before unlocking: the next holder's file must never be the one deleted
                self.holder_path.unlink(missing_ok=True)
            finally:
                os.close(held.fd)  # closing drops the lock

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def _lock(self) -> _Held:
        """Open and lock the lock file, then record this process as its holder."""
        with write_guard(self.path, replacing=False):
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            deadline = time.monotonic() + _RETRY_SECONDS
            while not _try_lock(fd, self.path):
                if time.monotonic() > deadline:
                    raise self._refusal()
                time.sleep(0.05)
            previous = _read_holder(self.holder_path)
            atomic_write_text(self.holder_path, json.dumps(_this_process(), indent=2) + "\n")
        except BaseException:
            os.close(fd)
            raise
        if previous is not None:  # its holder ended without releasing it: killed, or crashed
            print(
                f"crckd: note: {self.folder} was locked by {_describe(previous)}, which ended "
                "without releasing it; this process took the lock over",
                file=sys.stderr,
            )
        return _Held(fd)

    def _refusal(self) -> RunFolderError:
        holder = _read_holder(self.holder_path)
        who = _describe(holder) if holder else "another process (not yet recorded: starting)"
        return RunFolderError(
            f"{self.folder} is being written by {who}; only one process may write a folder at "
            "a time. Wait for that process to end (or stop it) and run this command again, or "
            "write elsewhere (another output_dir or --out)"
        )


def _try_lock(fd: int, path: Path) -> bool:
    """Lock the file `path` open as `fd` without waiting; False if another process holds it."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in _BUSY:
            return False
        raise RunFolderError(
            f"cannot lock {path}: {exc.strerror} (does this file system support POSIX locks? "
            "See docs/reliability.md)"
        ) from exc
    return True


def _this_process() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": shlex.join(sys.argv),
    }


def _read_holder(path: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _describe(holder: dict[str, Any]) -> str:
    text = f"pid {holder.get('pid')} on host {holder.get('host')}, since {holder.get('started')}"
    return text + (f" ({holder['command']})" if holder.get("command") else "")
