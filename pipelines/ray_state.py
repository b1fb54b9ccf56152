"""The driver's bookkeeping for `--runner ray` (`vsr.pipelines.ray_runner`): its view of
the workers, what a run did, and the segments that come back, written into the job's
work folder and journalled (in order in the job's journal, ahead of a gap in `AHEAD`).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vsr import io
from vsr.jobs import Journal
from vsr.jobs.files import fsync_append, fsync_dir, write_new_file
from vsr.jobs.journal import journal_line, read_journal
from vsr.pipelines.ray_chunks import Chunk

AHEAD = "journal-ahead.jsonl"  # segment records that arrived before an earlier segment


@dataclass
class WorkerSlot:
    """The driver's view of one actor: its handle, what `info()` said, the chunk it runs."""

    actor: Any
    info: dict | None = None
    chunk: Chunk | None = None
    chunks_done: int = 0


@dataclass
class _Active:
    worker: WorkerSlot
    chunk: Chunk
    attempt: int
    started: float
    frames: int = 0  # frames of this attempt encoded so far
    kept: int = 0  # frames of this attempt in segments the driver has kept
    next_segment: int = 0  # the first segment of the chunk not received yet
    timing: dict = field(default_factory=dict)  # the worker's own timing of the chunk


@dataclass
class RunStats:
    """What a `RayRunner.run` did: per-worker start-up and per-chunk records, failures."""

    workers: list[dict] = field(default_factory=list)
    chunks: list[dict] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    damage: list[str] = field(default_factory=list)
    segments: int = 0
    bytes: int = 0
    resumed_segments: int = 0
    source: str = "path"
    seconds: float = 0.0

    @property
    def nodes(self) -> set[str]:
        return {c["node_ip"] for c in self.chunks}


def _keep_segment(folder: Path, journal: Journal, ahead: dict[int, dict], rec: dict, data: bytes) -> None:
    """Write a segment that came back from a worker into the work folder (durably, its
    sha256 checked) and journal it; records ahead of a gap go to `AHEAD` until the gap
    closes. A segment already kept (a retried chunk's) is left as it is."""
    k = rec["segment"]
    if k < len(journal.segments) or k in ahead:
        return
    if hashlib.sha256(data).hexdigest() != rec["sha256"]:
        raise RuntimeError(f"segment {k} arrived damaged (sha256 differs)")
    write_new_file(folder / rec["file"], data, replace=True)  # fsync'ed, never through a symlink
    fsync_dir(folder)
    if k == len(journal.segments):
        journal.append(rec)
        _flush_ahead(journal, ahead)
    else:
        fsync_append(folder / AHEAD, journal_line(rec))  # checksummed like the journal's lines
        ahead[k] = rec


def _flush_ahead(journal: Journal, ahead: dict[int, dict]) -> None:
    while len(journal.segments) in ahead:
        journal.append(ahead.pop(len(journal.segments)))


def _load_ahead(journal: Journal) -> dict[int, dict]:
    """The records of `AHEAD` past the journal's segments whose files are intact, with
    those that now follow on moved into the journal (a resumed run)."""
    path = journal.folder / AHEAD
    ahead: dict[int, dict] = {}
    for rec in read_journal(path) if path.is_file() else []:  # up to a line torn by the kill
        k, seg = rec.get("segment", -1), journal.folder / str(rec.get("file", ""))
        if k >= len(journal.segments) and seg.is_file() and not seg.is_symlink() and io.file_sha256(seg) == rec.get("sha256"):
            ahead[k] = rec
    _flush_ahead(journal, ahead)
    return ahead

