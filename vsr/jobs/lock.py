"""A job's work folder, held by one process at a time and never reached through a symlink.

The folder is created under a private name, locked (`fcntl.flock`), given the owner's pid,
and only then renamed into place, so two processes started together cannot both think
they created it: the rename of the loser fails and it finds the winner's lock. The lock
lives as long as the job (the open descriptor); the kernel drops it when the process
dies, so a `kill -9`'d run leaves a folder the next `--resume` can take.
"""
from __future__ import annotations

import errno
import fcntl
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from vsr.errors import OutputError

OWNER = "owner.pid"  # the pid of the process holding the folder, for the refusal message
_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


@dataclass
class WorkLock:
    """The held work folder: `release()` (or the process ending) lets another run take it."""

    folder: Path
    fd: int | None
    created: bool = False  # this process made the folder (no earlier run's work in it)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def abandon(self) -> None:
        """Release, and remove the folder if this process made it (a job whose set-up
        failed before any work: no empty folder is left to look like an interrupted run)."""
        if self.created and self.fd is not None:
            _remove(self.folder)
        self.release()


def lock_work_folder(folder: Path) -> tuple[WorkLock, bool]:
    """Hold `folder` (creating it, mode 0700, if absent): (lock, created).

    OutputError, one line, if another process holds it (naming its pid), if it is a
    symlink or not a folder, or if it cannot be created."""
    for _ in range(5):
        if not os.path.lexists(folder):
            lock = _create_locked(folder)
        else:
            lock = _lock_existing(folder)
        if lock is not None:
            return lock, lock.created
    raise OutputError(f"cannot take the work folder {folder}: other processes keep creating and removing it")


def _create_locked(folder: Path) -> WorkLock | None:
    tmp = folder.with_name(f"{folder.name}.{os.getpid()}")
    if os.path.lexists(tmp):  # left by an earlier process that had this pid and was killed
        _remove(tmp)
    try:
        os.mkdir(tmp, 0o700)
    except OSError as exc:
        raise OutputError(f"cannot create the work folder {folder}: {exc.strerror}") from None
    fd = None
    try:
        fd = os.open(tmp, _DIR)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _write_owner(fd)
        try:
            os.rename(tmp, folder)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                os.close(fd)
                _remove(tmp)
                return None  # another process made it first: take (or be refused) the existing one
            raise
    except BaseException:
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
        if os.path.lexists(tmp):
            _remove(tmp)
        raise
    return WorkLock(folder, fd, created=True)


def _lock_existing(folder: Path) -> WorkLock | None:
    try:
        fd = os.open(folder, _DIR)
    except FileNotFoundError:
        return None  # removed meanwhile (its job finished): start over
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise OutputError(
                f"the work folder {folder} is a symbolic link or not a folder: vsr never writes through one; remove it"
            ) from None
        raise OutputError(f"cannot open the work folder {folder}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _read_owner(fd)
        os.close(fd)
        who = f"another vsr process (pid {pid})" if pid else "another vsr process"
        raise OutputError(
            f"{who} is running this job (work folder {folder}): wait for it to finish or stop it; "
            "--overwrite and --resume never touch a running job's work"
        ) from None
    if os.fstat(fd).st_nlink == 0:  # its holder finished and removed it before we got the lock
        os.close(fd)
        return None
    _write_owner(fd)
    return WorkLock(folder, fd, created=False)


def _write_owner(dir_fd: int) -> None:
    fd = os.open(OWNER, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o644, dir_fd=dir_fd)
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()}\n")


def _read_owner(dir_fd: int) -> int | None:
    try:
        fd = os.open(OWNER, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0), dir_fd=dir_fd)
        with os.fdopen(fd) as f:
            return int(f.read().strip() or 0) or None
    except (OSError, ValueError):
        return None


def _remove(path: Path) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except OSError:
            pass


def clear_folder(lock: WorkLock, keep: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    """Remove everything in the held folder except `keep` (and the owner file), without
    following symlinks planted inside it."""
    for entry in os.scandir(lock.folder):
        if entry.name in keep or entry.name == OWNER:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                pass
