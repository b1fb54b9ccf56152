"""Files a job writes so that a crash never leaves half a result: fsync'ed appends,
atomic replaces, and the work folder beside the output."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from vsr.errors import OutputError
from vsr.io import is_url


def temp_dir_for(dst: Path) -> Path:
    """The work folder of a job writing `dst`: beside it, hidden, so the rename is atomic."""
    return dst.parent / f".{dst.name}.vsr-tmp"


def segment_name(k: int) -> str:
    """The file name of segment k inside the work folder."""
    return f"segment-{k:05d}.vsrseg"


def check_output_path(src: str | os.PathLike, dst: Path, overwrite: bool, resume: bool = False) -> None:
    """OutputError unless `dst` can be written: not the input, in a writable folder, not
    a folder itself, and absent unless `overwrite`. With `resume`, an existing OUT
    without a work folder is a finished job, but nothing records which options made it
    (the work folder goes when OUT is complete), so it is refused all the same, saying so."""
    if not is_url(src) and dst.exists() and dst.resolve() == Path(src).resolve():
        raise OutputError(f"OUT is the input file {dst}: pick another name")
    parent = dst.parent
    if not parent.is_dir():
        raise OutputError(f"output folder {parent} does not exist: create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {parent} is not writable")
    if dst.is_dir():
        raise OutputError(f"OUT {dst} is a folder: give a file name such as {dst / 'out.mp4'}")
    if dst.exists() and not overwrite:
        if resume and not os.path.lexists(temp_dir_for(dst)):
            raise OutputError(f"{dst} exists and there is no interrupted run to resume: vsr keeps no record of which "
                              "input and options made a finished OUT, so it cannot tell it is this job's; "
                              "add --overwrite to make it again")
        raise OutputError(f"{dst} exists: add --overwrite to replace it")


def source_fingerprint(src: str | os.PathLike) -> dict:
    """Size plus sha256 of the first and last MiB: cheap, and catches a replaced input.
    A URL is named, not read (a second read of a live source would consume it)."""
    if is_url(src):
        return {"url": os.fspath(src)}
    src = Path(src)
    size = src.stat().st_size
    h = hashlib.sha256()
    with open(src, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read(1 << 20))
    return {"name": src.name, "size": size, "sha256_ends": h.hexdigest()}


NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def create_exclusive(path: Path, mode: str = "wb"):
    """A new file at `path`, opened for writing: never an existing file, never through a
    symlink planted at that name (O_CREAT | O_EXCL | O_NOFOLLOW)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o644)
    return os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"}))


def write_new_file(path: Path, data: bytes, *, replace: bool = False) -> None:
    """Write `data` to `path` without ever following a symlink there: created exclusively
    under a private name in the same folder, fsync'ed, then linked (or, with `replace`,
    renamed) onto `path`, so a symlink planted at `path` is replaced, never written through.
    OutputError if `path` exists (and not `replace`) or cannot be written."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        with create_exclusive(tmp) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path, follow_symlinks=False)  # fails if anything, a symlink included, is there
            os.unlink(tmp)
    except FileExistsError:
        raise OutputError(f"{path} exists: add --overwrite to replace it") from None
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from exc
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _line(record: dict | str) -> str:
    return record if isinstance(record, str) else json.dumps(record, sort_keys=True) + "\n"


def fsync_append(path: Path, record: dict | str) -> None:
    """Append `record` as one JSON line (a str: that line, newline included) and make it
    durable before returning. A symlink at `path` is refused (ELOOP), never followed."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | NOFOLLOW, 0o644)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(_line(record))
        f.flush()
        os.fsync(f.fileno())


def write_lines_atomic(path: Path, records: list[dict | str]) -> None:
    """Replace `path` by JSON lines in one step (written beside it, fsync'ed, renamed)."""
    tmp = path.with_name(path.name + ".tmp")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    with create_exclusive(tmp, "w") as f:
        for rec in records:
            f.write(_line(rec))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_durably(staged: Path, dst: Path) -> None:
    """Move a finished file onto `dst` in one step (never half-written), durably."""
    try:
        os.replace(staged, dst)
        fsync_dir(dst.parent)
    except OSError as exc:
        raise OutputError(f"cannot move the finished file onto {dst}: {exc.strerror}") from exc
