"""A job's journal: which segments of its work folder are finished, so a run killed at
any point (Ctrl-C, kill -9, power cut) resumes after its last finished segment.

The journal is JSON lines in `<work folder>/journal.jsonl`: a header (the job's options:
a resumed run must use the same ones), then one record per finished segment (index,
first frame, frame count, file name, sha256), appended only once the segment's file is
durable, then `{"done": true, ...}` when the video has no more frames.
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vsr.errors import OutputError, UsageError
from vsr.io import file_sha256
from vsr.jobs.files import fsync_append, write_lines_atomic

log = logging.getLogger(__name__)

JOURNAL = "journal.jsonl"
JOURNAL_VERSION = 1


@dataclass
class Journal:
    """The state of a job's work folder: the verified segment records, in order, and
    whether the last one ends the video."""

    folder: Path
    segments: list[dict]
    done: bool

    @property
    def frames(self) -> int:
        return sum(s["frames"] for s in self.segments)

    def append(self, record: dict) -> None:
        """Record a finished segment (or the end) durably; see the module doc."""
        fsync_append(self.folder / JOURNAL, record)
        if "segment" in record:
            self.segments.append(record)
        elif record.get("done"):
            self.done = True


def diff(a: Any, b: Any, path: str = "") -> str | None:
    """The first key where two JSON-like values differ, as 'key: old != new'."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            d = diff(a.get(k), b.get(k), f"{path}.{k}" if path else k)
            if d:
                return d
        return None
    return None if a == b else f"{path}: {a!r} != {b!r}"


def open_journal(folder: Path, header: dict, *, resume: bool, overwrite: bool) -> Journal:
    """Start a fresh journal in a new `folder`, or (with resume) load the interrupted one,
    keep the segments whose files are there with their sha256, and rewrite it with only
    those (atomically). UsageError if `header` differs from the interrupted run's;
    OutputError if an interrupted run is there and neither resume nor overwrite is asked."""
    journal = folder / JOURNAL
    if folder.exists() and not resume:
        if not overwrite:
            raise OutputError(
                f"an interrupted run of this job is in {folder}: add --resume to continue it or --overwrite to start over"
            )
        shutil.rmtree(folder)
    if resume and journal.exists():
        lines = [json.loads(line) for line in journal.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines or lines[0].get("header") != header:
            old = lines[0].get("header", {}) if lines else {}
            raise UsageError(
                f"--resume: these options differ from the interrupted run's ({diff(old, header)}); "
                "use the same options, or --overwrite to start over"
            )
        segments: list[dict] = []
        done = False
        for rec in lines[1:]:
            if "segment" in rec:
                path = folder / rec["file"]
                if rec["segment"] != len(segments) or not path.exists() or file_sha256(path) != rec["sha256"]:
                    log.warning("segment %s is missing or damaged; redoing it and what follows", rec["segment"])
                    break
                segments.append(rec)
            elif rec.get("done") and rec.get("segments") == len(segments):
                done = True
        write_lines_atomic(journal, [{"header": header}, *segments] + ([{"done": True, "segments": len(segments)}] if done else []))
        log.debug("journal: %d finished segments (%d frames)", len(segments), sum(s["frames"] for s in segments))
        return Journal(folder, segments, done)
    if resume:
        log.info("--resume: no interrupted run found in %s; starting from the beginning", folder)
    if folder.exists():
        shutil.rmtree(folder)
    try:
        folder.mkdir()
    except OSError as exc:
        raise OutputError(f"cannot create {folder}: {exc.strerror}") from exc
    fsync_append(journal, {"header": header})
    return Journal(folder, [], False)
