"""One run per output folder: an exclusive lock held for the whole run.

Two processes training into one --output_dir interleave checkpoints, rotation and the final save (one run's
checkpoints beside the other's final model), and `--resume_from_checkpoint auto` would resume from the other
run's live checkpoint. The first run therefore holds an exclusive `flock` on `<output_dir>/.clusterns.lock`,
which records its PID, host and start time; a second run is refused with those, before it reads or writes
anything else there.

The kernel releases a flock when its process dies (SIGKILL included), so the lock of a dead run is stale by
construction and the next run takes it over; the file's content is only the holder's description. Under DDP
the main process of the run holds it for all ranks (the others share the folder with it).
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket

LOCK_NAME = ".clusterns.lock"


class OutputDirLockedError(RuntimeError):
    """Another live run holds the output folder."""


class OutputDirLock:
    """`with OutputDirLock(output_dir):` or acquire() / release(). Re-entrant within one object only."""

    def __init__(self, output_dir: str, enabled: bool = True):
        self.output_dir = str(output_dir)
        self.path = os.path.join(self.output_dir, LOCK_NAME)
        self.enabled = enabled
        self._fd: int | None = None
        self._created_folder = False

    def acquire(self) -> "OutputDirLock":
        if not self.enabled or self._fd is not None:
            return self
        self._created_folder = not os.path.isdir(self.output_dir)
        os.makedirs(self.output_dir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise OutputDirLockedError(
                f"--output_dir {self.output_dir!r} is in use by another run ({describe_holder(self.path)}); wait for it to "
                f"finish or choose another --output_dir (the lock is {self.path}, released when that process exits)"
            ) from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(holder) + "\n").encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # no holder any more (the file stays: removing it would race a waiting run)
            if self._created_folder and os.listdir(self.output_dir) == [LOCK_NAME]:
                # a run that stopped before writing anything leaves no folder behind
                os.unlink(self.path)
                os.rmdir(self.output_dir)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> "OutputDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def describe_holder(path: str) -> str:
    """'pid 123 on host h, started <time>' from a lock file, or what is known."""
    try:
        with open(path) as f:
            holder = json.loads(f.read() or "{}")
    except (OSError, ValueError):
        holder = {}
    if not holder:
        return "a process that has not written its details yet"
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {holder.get('started', '?')}"
