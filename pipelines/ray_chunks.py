"""The chunks of a `--runner ray` job (`vsr.pipelines.ray_runner`): whole runs of
segments, cut at keyframes where the probe's keyframe index has one nearby.

Segment k always holds frames [k * n, (k + 1) * n), encoded by a fresh encoder, so the cut
changes no byte. A worker decodes its chunk by seeking to the keyframe at or before
`start - warmup` (`Chunk.decode_from`); the frames before `start` are decoded and dropped
(a future temporal method runs the engine over `warmup` of them and drops their output).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from vsr import io


@dataclass(frozen=True)
class Chunk:
    """Output frames [start, stop) (stop None: to the end of the video), whole segments.
    decode_from: the keyframe decoding starts at (<= start - warmup); frames before
    `start` are decoded but not written."""

    start: int
    stop: int | None
    decode_from: int = 0

    def __str__(self) -> str:
        return f"frames {self.start}..{'end' if self.stop is None else self.stop}"


def plan_chunks(
    index: io.FrameIndex,
    segment_frames: int,
    chunk_segments: int,
    done: set[int] | frozenset[int] = frozenset(),
    *,
    warmup: int = 0,
    span: tuple[int, int | None] = (0, None),
) -> list[Chunk]:
    """The chunks covering every segment not in `done`, in order.

    Frames count from `span`'s first source frame (`Job.span`), as `run_chunk`'s do; the
    job has ceil(frames / segment_frames) segments. Each run of consecutive segments to do
    is cut about every `chunk_segments` segments, at the segment boundary nearest the
    nominal cut (within half a chunk; the later one of two) that is also a keyframe, when
    there is one: the worker's seek then lands exactly on its first frame. The chunk
    holding the last segment runs to the end of the job (stop None), whatever the index
    counted. `decode_from` is in the job's frames too (negative: before the span).
    """
    if segment_frames < 1 or chunk_segments < 1:
        raise ValueError(f"segment_frames and chunk_segments must be >= 1, got {segment_frames}, {chunk_segments}")
    n = segment_frames
    base, end = span
    frames = (len(index) if end is None else min(end, len(index) or end)) - base
    count = max(1, math.ceil(frames / n))
    keyframes = {p.frame - base for p in index.seek_points} | {-base}
    todo = [k for k in range(count) if k not in done]
    runs: list[tuple[int, int]] = []  # [a, b) segment indices
    for k in todo:
        if runs and runs[-1][1] == k:
            runs[-1] = (runs[-1][0], k + 1)
        else:
            runs.append((k, k + 1))
    chunks = []
    for a, b in runs:
        cuts = [a]
        while b - cuts[-1] > chunk_segments:
            nominal = cuts[-1] + chunk_segments
            half = chunk_segments // 2
            window = range(max(cuts[-1] + 1, nominal - half), min(b - 1, nominal + half) + 1)
            near = [j for j in window if j * n in keyframes]
            cuts.append(min(near, key=lambda j: (abs(j - nominal), -j)) if near else nominal)
        cuts.append(b)
        for s, e in zip(cuts, cuts[1:]):
            point = index.seek_point(max(0, base + s * n - warmup))
            chunks.append(Chunk(s * n, None if e == count else e * n, (point.frame if point else 0) - base))
    return chunks
