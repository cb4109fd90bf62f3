"""One run per directory: a second run on a database, search or training directory
that another process is using is refused instead of interleaving its writes.

The lock is ``flock`` on ``<dir>/.lock``: the kernel drops it when its process dies,
even by SIGKILL, so a killed run never leaves a stale lock behind. Within one process
it is re-entrant (the modifier holds its database while its search opens it again).
Under torchrun only the main rank takes it: every rank of one job shares the directory.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from darwin_modifier.distributed import is_main

LOCK_FILE = ".lock"
_held: dict[Path, tuple[int, int]] = {}  # lock file -> (file descriptor, holders)


def _lock_path(directory: str | os.PathLike, beside: bool) -> Path:
    """``<dir>/.lock``, or with ``beside`` ``<parent>/.<dir>.lock`` (for the output,
    which is replaced whole, so a lock inside it would go with it)."""
    directory = Path(directory).resolve()
    if beside:
        return directory.parent / f".{directory.name}{LOCK_FILE}"
    return directory / LOCK_FILE


def acquire(directory: str | os.PathLike, what: str, beside: bool = False) -> None:
    """Hold ``directory`` for this process, or refuse naming the process that has it."""
    if not is_main():
        return
    directory = Path(directory).resolve()
    key = _lock_path(directory, beside)
    if key in _held:
        fd, holders = _held[key]
        _held[key] = (fd, holders + 1)
        return
    try:
        key.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(key, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:  # read-only, not ours, a file in the way
        raise OSError(
            err.errno,
            f"{what} {directory} cannot be written ({err.strerror}); give a "
            "directory this run can write",
        ) from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RuntimeError(
            f"{what} {directory} is in use by another run (process {owner}); wait for "
            "it to finish, or give this run another directory"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _held[key] = (fd, 1)


def release(directory: str | os.PathLike, beside: bool = False) -> None:
    key = _lock_path(directory, beside)
    if key not in _held:
        return
    fd, holders = _held.pop(key)
    if holders > 1:
        _held[key] = (fd, holders - 1)
        return
    os.close(fd)  # closing the last descriptor drops the flock


@contextmanager
def holding(
    directory: str | os.PathLike, what: str, beside: bool = False
) -> Iterator[None]:
    acquire(directory, what, beside)
    try:
        yield
    finally:
        release(directory, beside)
