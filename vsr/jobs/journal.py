"""A job's journal: which segments of its work folder are finished, so a run killed at
any point (Ctrl-C, kill -9, power cut) resumes after its last finished segment.

The journal is JSON lines in `<work folder>/journal.jsonl`: a header (the job's options:
a resumed run must use the same ones), then one record per finished segment (index,
first frame, frame count, file name, sha256), appended only once the segment's file is
durable, then `{"done": true, ...}` when the video has no more frames. Every line also
carries `check` (`journal_line`): a line torn by a kill mid-write, or damaged, is
recognised and ignored with what follows it (`read_journal`), and those segments redone.
The folder is held by one process at a time (`vsr.jobs.lock`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Mapping
from typing import Any

from vsr.errors import OutputError, UsageError
from vsr.io import file_sha256
from vsr.jobs.files import fsync_append, write_lines_atomic
from vsr.jobs.lock import WorkLock, clear_folder, lock_work_folder

log = logging.getLogger(__name__)

JOURNAL = "journal.jsonl"
JOURNAL_VERSION = 2  # 2: every line carries CHECK; the header records the resolved device, dtype, torch
CHECK = "check"


@dataclass
class Journal:
    """The state of a job's work folder: the verified segment records, in order, and
    whether the last one ends the video. Holds the folder's lock until `close()` (or the
    process ends): no other run can touch the folder meanwhile."""

    folder: Path
    segments: list[dict]
    done: bool
    lock: WorkLock | None = None

    @property
    def frames(self) -> int:
        return sum(s["frames"] for s in self.segments)

    def append(self, record: dict) -> None:
        """Record a finished segment (or the end) durably; see the module doc."""
        try:
            fsync_append(self.folder / JOURNAL, journal_line(record))
        except OSError as exc:
            raise OutputError(f"cannot write {self.folder / JOURNAL}: {exc.strerror} (disk full?)") from exc
        if "segment" in record:
            self.segments.append(record)
        elif record.get("done"):
            self.done = True

    def close(self) -> None:
        """Release the work folder's lock."""
        if self.lock is not None:
            self.lock.release()


def _check(body: str) -> str:
    return hashlib.sha256(body.encode("utf-8")).hexdigest()[:16]


def journal_line(record: dict) -> str:
    """`record` as one journal line: its JSON plus "check", the sha256 (16 hex digits) of
    that JSON, so a line torn by a kill (or damaged on disk) is recognised, not trusted."""
    body = json.dumps(record, sort_keys=True)
    return json.dumps({**record, CHECK: _check(body)}, sort_keys=True) + "\n"


def read_journal(path: Path) -> list[dict]:
    """The verified records of a journal, in order, up to the first line that is torn or
    damaged (ignored with a warning, with everything after it: those segments are redone)."""
    text = path.read_bytes().decode("utf-8", "replace")
    lines = text.split("\n")
    records: list[dict] = []
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        rec = None
        try:
            rec = json.loads(line)
            check = rec.pop(CHECK, None) if isinstance(rec, dict) else None
            if check != _check(json.dumps(rec, sort_keys=True)):
                rec = None
        except (ValueError, TypeError):
            rec = None
        if rec is None:
            torn = not any(x.strip() for x in lines[k + 1 :])
            log.warning(
                "%s: line %d is %s; ignoring it%s", path, k + 1,
                "incomplete (the run was stopped while writing it)" if torn else "damaged",
                "" if torn else " and the lines after it",
            )
            break
        records.append(rec)
    return records


def interrupted_header(folder: Path) -> dict | None:
    """The header (the options) of the interrupted run in `folder`, or None when there is
    none: what `--resume` reads choices from that it need not be told again."""
    path = folder / JOURNAL
    if not path.is_file():
        return None
    try:
        records = read_journal(path)
    except OSError:
        return None
    return records[0].get("header") if records and isinstance(records[0].get("header"), dict) else None


def diff(a: Any, b: Any, path: str = "", names: Mapping[str, str] | None = None) -> str | None:
    """Every key where two JSON-like values differ, as 'key: old != new', joined by '; '
    (None when they are equal). names: the option behind a key or a dotted prefix of it
    ('encoder.options' -> '--encoder-opt'), put first: '--encoder-opt (encoder.options: ...)'."""
    if isinstance(a, dict) and isinstance(b, dict):
        found = [d for k in sorted(set(a) | set(b))
                 if (d := diff(a.get(k), b.get(k), f"{path}.{k}" if path else k, names))]
        return "; ".join(found) or None
    if a == b:
        return None
    parts = path.split(".")
    option = next((names[p] for i in range(len(parts), 0, -1) if (p := ".".join(parts[:i])) in (names or {})), None)
    return f"{option} ({path}: {a!r} != {b!r})" if option else f"{path}: {a!r} != {b!r}"


def open_journal(folder: Path, header: dict, *, resume: bool, overwrite: bool, lock: WorkLock | None = None,
                 names: Mapping[str, str] | None = None) -> Journal:
    """Take `folder` (`vsr.jobs.lock`: one process at a time, never a symlink) and start a
    fresh journal in it, or (with resume) load the interrupted one, keep the segments whose
    files are there with their sha256, remove every other file (a partial segment, say),
    and rewrite it with only those (atomically). UsageError if `header` differs from the
    interrupted run's; OutputError if another process runs this job, or if an interrupted
    run is there and neither resume nor overwrite is asked. lock: the folder already taken
    with `lock_work_folder` (a job takes it before its slow set-up: loading the model).
    names: the command-line option behind each header key, for the refusal (`diff`)."""
    journal = folder / JOURNAL
    own = lock is None  # a lock passed in is the caller's to release
    if lock is None:
        lock, _ = lock_work_folder(folder)
    try:
        return _open_locked(lock, lock.created, journal, header, resume=resume, overwrite=overwrite, names=names)
    except OSError as exc:
        if own:
            lock.release()
        raise OutputError(f"cannot write the work folder {folder}: {exc.strerror} (disk full?)") from exc
    except BaseException:
        if own:
            lock.release()
        raise


def _open_locked(lock: WorkLock, created: bool, journal: Path, header: dict, *, resume: bool,
                 overwrite: bool, names: Mapping[str, str] | None = None) -> Journal:
    folder = lock.folder
    if not created and not resume and not overwrite:
        raise OutputError(
            f"an interrupted run of this job is in {folder}: add --resume to continue it or --overwrite to start over"
        )
    if resume and not created:  # what a killed run was writing is never reused, whatever happens next
        _remove_partial_files(folder, str(header.get("output", "")))
    lines = read_journal(journal) if resume and not created and journal.is_file() else []
    if lines and "header" in lines[0]:
        old = lines[0]["header"]
        if old != header:
            auto = "" if old.get("engine") == header.get("engine") else (
                " (an 'auto' one resolves through the model card: pass the value it had)")
            raise UsageError(f"--resume: {_difference(old, header, names)}; use the interrupted run's options{auto}, "
                             "or --overwrite to start over")
        segments: list[dict] = []
        done = False
        for rec in lines[1:]:
            if "segment" in rec:
                path = folder / str(rec["file"])
                if (rec["segment"] != len(segments) or path.is_symlink() or not path.is_file()
                        or file_sha256(path) != rec["sha256"]):
                    log.warning("segment %s is missing or damaged; redoing it and what follows", rec["segment"])
                    break
                segments.append(rec)
            elif rec.get("done") and rec.get("segments") == len(segments):
                done = True
        records = [{"header": header}, *segments] + ([{"done": True, "segments": len(segments)}] if done else [])
        write_lines_atomic(journal, [journal_line(r) for r in records])
        log.debug("journal: %d finished segments (%d frames)", len(segments), sum(s["frames"] for s in segments))
        return Journal(folder, segments, done, lock)
    if resume and not created:
        log.info("--resume: no finished segment recorded in %s; starting from the beginning", folder)
    elif resume:
        log.info("--resume: no interrupted run found in %s; starting from the beginning", folder)
    if not created:
        clear_folder(lock)
    fsync_append(journal, journal_line({"header": header}))
    return Journal(folder, [], False, lock)


def _remove_partial_files(folder: Path, staged: str) -> None:
    """What a killed run may leave half-written: a segment's `.part`, a journal's `.tmp`,
    the staged output. Finished files (a distributed runner's segments ahead of a gap
    among them) stay."""
    for entry in os.scandir(folder):
        if entry.name.endswith((".part", ".tmp")) or (staged and entry.name == staged):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
            log.info("removed the partial file %s", entry.path)


def _difference(old: dict, new: dict, names: Mapping[str, str] | None = None) -> str:
    """Why a resume is refused, in one clause."""
    a, b = old.get("runtime"), new.get("runtime")
    if isinstance(a, dict) and isinstance(b, dict) and a != b:
        return (f"the interrupted run computed on {a.get('device')} in {a.get('dtype')} with torch {a.get('torch')}, "
                f"this one would use {b.get('device')} in {b.get('dtype')} with torch {b.get('torch')} "
                f"(one file never mixes precisions: pass --device {a.get('device')} --dtype {a.get('dtype')})")
    return f"these options differ from the interrupted run's ({diff(old, new, names=names)})"
