"""One writer per run folder: ``train.lock`` held with ``flock`` for as long as a run trains.

Two resumes of one run at once would interleave ``metrics.jsonl`` and delete each other's
temporary checkpoint folders. The lock is an OS lock (``fcntl.flock``) on ``<run>/train.lock``,
which the kernel drops when its process dies, however it dies: a lock file left by a killed run
is stale by construction and the next writer takes it over (and says so). The file holds the
holder's PID so that a refused writer can name it, and is emptied when the holder leaves cleanly.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from genladder.errors import GenladderError
from genladder.safe_io import os_error_message

LOCK = "train.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


def _recorded_pid(handle) -> int | None:
    handle.seek(0)
    text = handle.read(64).strip()
    return int(text) if text.isdigit() else None


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold the run's lock for the block; refuse with the holder's PID when another process has it."""
    path = Path(run_dir) / LOCK
    try:
        # O_NOFOLLOW: a planted symlink must not make us truncate another file; never a FIFO either.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as error:
        raise GenladderError(os_error_message(error, path, "create the lock file")) from None
    handle = os.fdopen(fd, "r+")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _recorded_pid(handle)
            who = f"process {holder}" if holder is not None else "another process"
            raise GenladderError(f"{run_dir} is being trained by {who} (lock {path}); wait for it to finish or "
                                 "stop it first") from None
        previous = _recorded_pid(handle)
        if previous is not None and previous != os.getpid() and not _pid_alive(previous):
            print(f"genladder: took over the stale lock of process {previous}, which is no longer running",
                  file=sys.stderr)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            # Leaving the block (a finished run, an error, Ctrl-C or SIGTERM): forget our PID while the lock is
            # still ours, so that only a process that died without this cleanup leaves a stale one to report. A
            # failure here (a vanished folder, a full disk) must not hide the block's own outcome.
            with contextlib.suppress(OSError):
                handle.seek(0)
                handle.truncate()
    finally:
        handle.close()  # closing drops the flock; the file stays, empty unless its writer was killed outright
