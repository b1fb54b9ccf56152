"""`run_chunk(job, frames) -> segment records`: decode a range of frames by seeking,
upscale them, encode them into segment files. The unit a runner maps over a video:

    decode thread --prefetch--> engine thread --prefetch--> encode (the caller's thread)
    io.decode(start, stop)      upscaler.stream()           io.SegmentWriter, journal

The local `vsr upscale` runs one chunk (the frames not done yet); a distributed runner
maps `run_chunk` over ranges on workers and journals the records it gets back. Segment k
always holds frames [k * segment_frames, (k + 1) * segment_frames), each encoded by a
fresh encoder, so how a video is cut into chunks changes no byte of any segment (the
engine's output for a frame depends only on that frame, its index and the seed).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vsr.frame import Frame
from vsr.io import (
    DEINTERLACE,
    FrameIndex,
    SegmentWriter,
    StreamFormat,
    VideoInfo,
    decode,
)
from vsr.jobs.files import segment_name
from vsr.jobs.prefetch import prefetch
from vsr.targets import Plan

QUEUE_SIZE = 4  # frames made ahead by each of the decode and engine threads


@dataclass(frozen=True)
class Job:
    """Everything needed to produce any range of one transcode's segments; picklable.

    source: a path or a seekable URL. info: `io.probe(source)`. index: `io.scan(source)`
    (None: built by `decode` when a chunk starts past frame 0). plan: crop/scale/pad from
    `vsr.targets.plan_output`. fmt: the output video stream. upscaler: the engine (anything
    with `.stream(frames)`), already set to `plan.scaled`; an `Upscaler` pickles without its
    weights and reloads them on first use. folder: where segment files are written.
    segment_frames: frames per segment (>= 1). deinterlace: see `io.decode`.
    span: the source frames [first, stop) the job covers (`--start`/`--duration`; stop
    None: to the end); chunk ranges and segments count from `first`, frame indices (and so
    the noise) stay the source's.
    """

    source: str
    info: VideoInfo
    plan: Plan
    fmt: StreamFormat
    upscaler: Any
    folder: Path
    segment_frames: int
    deinterlace: str = "auto"
    index: FrameIndex | None = None
    span: tuple[int, int | None] = (0, None)

    def __post_init__(self) -> None:
        if self.segment_frames < 1:
            raise ValueError(f"segment_frames must be at least 1, got {self.segment_frames}")
        if self.deinterlace not in DEINTERLACE:
            raise ValueError(f"deinterlace must be one of {DEINTERLACE}, got {self.deinterlace!r}")


def run_chunk(
    job: Job,
    frames: range | tuple[int, int | None],
    *,
    on_segment: Callable[[dict], None] | None = None,
    on_frame: Callable[[int], None] | None = None,
    on_error: Callable[[str], None] | None = None,
) -> list[dict]:
    """Produce the segments of frames [start, stop) (stop None: to the end of the video;
    both counted from `job.span`'s first frame); return their records {"segment", "first",
    "frames", "file", "sha256"} in order.

    start and stop must be multiples of `job.segment_frames` (stop may also be the end).
    on_segment(record): called, in this thread, as soon as a segment's file is durable
    (the local runner journals it there, so a kill loses at most the segment under way).
    on_frame(index): called, in this thread, after each frame is encoded (progress; may
    raise, e.g. KeyboardInterrupt, to stop: the unfinished segment is dropped).
    on_error(why): damaged input is skipped and reported instead of raising (`io.decode`);
    called from the decode thread.
    """
    start, stop = (frames.start, frames.stop) if isinstance(frames, range) else frames
    n = job.segment_frames
    if start % n or (stop is not None and stop % n):
        raise ValueError(f"a chunk must start and stop on segment boundaries (multiples of {n}), got {start}..{stop}")
    plan = job.plan
    base, end = job.span
    first_src = base + start
    stop_src = end if stop is None else (base + stop if end is None else min(base + stop, end))
    decoded = (
        crop_frame(f, plan.crop)
        for f in decode(job.source, job.info, start=first_src, stop=stop_src, deinterlace=job.deinterlace,
                        index=job.index, on_error=on_error)
    )
    records: list[dict] = []
    writer: SegmentWriter | None = None
    with prefetch(decoded, QUEUE_SIZE, "vsr-decode") as low, prefetch(job.upscaler.stream(low), QUEUE_SIZE, "vsr-engine") as high:
        try:
            for out in high:
                k = out.index - base  # the frame's place in the job
                if writer is None:
                    if k % n:
                        raise ValueError(f"segment would start at frame {k}, not a multiple of {n}")
                    writer = SegmentWriter(job.folder / segment_name(k // n), job.fmt)
                    first = k
                alpha = None if out.alpha is None else pad_image(out.alpha, plan.pad)  # transparent bars
                writer.write(out.with_image(pad_image(out.image, plan.pad), alpha))
                if writer.frames >= n:
                    records.append(_finish(writer, first, n, on_segment))
                    writer = None
                if on_frame is not None:
                    on_frame(k)
            if writer is not None:
                records.append(_finish(writer, first, n, on_segment))
                writer = None
        finally:
            if writer is not None:
                writer.abort()
    return records


def _finish(writer: SegmentWriter, first: int, n: int, on_segment: Callable[[dict], None] | None) -> dict:
    digest = writer.close()
    rec = {"segment": first // n, "first": first, "frames": writer.frames, "file": writer.path.name, "sha256": digest}
    if on_segment is not None:
        on_segment(rec)
    return rec


def pad_image(image: np.ndarray, pad: tuple[int, int, int, int]) -> np.ndarray:
    """Black borders (left, top, right, bottom) around an HxWx3 image (zeros around an
    HxW alpha plane: transparent)."""
    left, top, right, bottom = pad
    if not any(pad):
        return image
    return np.pad(image, ((top, bottom), (left, right), *([(0, 0)] if image.ndim == 3 else [])))


def crop_frame(frame: Frame, crop: tuple[int, int, int, int]) -> Frame:
    """The (x, y, w, h) part of a frame (the frame itself when that is all of it)."""
    x, y, w, h = crop
    if (x, y, w, h) == (0, 0, frame.width, frame.height):
        return frame
    alpha = None if frame.alpha is None else np.ascontiguousarray(frame.alpha[y : y + h, x : x + w])
    return frame.with_image(np.ascontiguousarray(frame.image[y : y + h, x : x + w]), alpha)
