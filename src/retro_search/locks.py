"""One writer per output: the lock every command that writes outputs takes on its first one.

Two runs writing one output (two `retro-search search` with the same `--output`, or a job
restarted while its first run, orphaned by a killed Snakemake, still goes on) would append to one
progress file and rename over each other's outputs. The lock is the hidden file `.NAME.lock`
beside the output, held with `flock` for the life of the process: the kernel releases it however
the process ends, so a killed run never leaves a stale lock. It holds the holder's pid, host and
start time for the message of the run it refuses. Processes the holder starts (the training
processes of a multi-GPU SFT run the same command again) share its lock.

On a file system without `flock` (some NFS and Lustre mounts) the lock is skipped with a
warning.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

HELD = "RETRO_SEARCH_LOCK"  # the lock files held by this process and its ancestors


class OutputLocked(ValueError):
    """Another process is writing the output."""


def lock_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(f".{output.name}.lock")


@contextmanager
def output_lock(output: str | Path, started: str) -> Iterator[None]:
    """Hold the lock on `output` while the block runs; raise OutputLocked naming the holder when
    another process holds it."""
    path = lock_path(output).absolute()
    held = os.environ.get(HELD, "").split(os.pathsep)
    if str(path) in held:  # started by the holder
        yield
        return
    made = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = _acquire(path)
    except BaseException:
        _remove_empty(made)
        raise
    if fd is None:
        yield
        return
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {started}\n".encode())
    os.environ[HELD] = os.pathsep.join([*filter(None, held), str(path)])
    try:
        yield
    finally:
        os.environ[HELD] = os.pathsep.join(filter(None, held))
        # Removed while still held: a process that opened it before the removal finds, once it
        # has the lock, that the name no longer leads to its file, and tries again.
        path.unlink(missing_ok=True)
        os.close(fd)
        _remove_empty(made)  # a refused or failed run leaves no folder behind


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders the lock made (deepest first) that are still empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _acquire(path: Path) -> int | None:
    """The open, locked lock file; None where the file system has no flock."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 400, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            output = path.with_name(path.name[1:-len(".lock")])
            raise OutputLocked(
                f"{output} is being written by another run ({holder}); two runs on one output "
                f"would mix their work: wait for it to end or stop it (lock: {path})") from None
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            log.warning("%s: this file system cannot lock files (%s); nothing stops a second "
                        "run on the same output", path, err.strerror)
            return None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder removed it as we locked it: lock the new one
