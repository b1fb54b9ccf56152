"""Frame index -> pts, and where decoding may start: one demux-only pass, no decoding.

`decode(start=k)` must give the frames a decode from the first frame gives, with the same
indices and pts, without decoding what comes before. The index holds every frame's pts in
display order (frame k has `pts[k]`) and the *seek points*: keyframes from which every
frame at or after them in display order decodes exactly as in a full decode.

The model, and its limits: FFmpeg's decoders give one frame per packet, and the frame's
pts is its packet's (after reordering), so display order is the packets' pts sorted. That
holds when every packet has a pts, no two share one, the stream starts with a keyframe
that is also its first picture (FFmpeg drops pictures decoded before a keyframe, and the
leading pictures of an open GOP at the very start), and pts never go back across a
keyframe (a joined transport stream whose clock restarts). Where any of this fails,
`reason` says which, there are no seek points and `decode(start=k)` decodes from frame 0,
as before. Every keyframe is a seek point: its pts must be above every pts demuxed before it, so
nothing shown after it depends on what came before; the leading pictures of an open GOP
follow it in decode order with smaller pts, and `decode` drops them.
"""
from __future__ import annotations

import bisect
import os
from dataclasses import dataclass

import av

from vsr.errors import InputError
from vsr.io.source import VideoInfo, open_input, probe, reason


@dataclass(frozen=True)
class SeekPoint:
    """A keyframe decoding may start from: its frame index, pts and dts (stream time base;
    dts None where the container has none, e.g. Matroska), and its packet's byte offset."""

    frame: int
    pts: int
    dts: int | None
    pos: int | None


@dataclass(frozen=True)
class FrameIndex:
    """pts: frame k's pts in display order (len = the frame count); seek points in
    increasing frame order (empty when `reason` says why seeking is not exact)."""

    pts: tuple[int, ...]
    seek_points: tuple[SeekPoint, ...]
    reason: str | None = None

    def __len__(self) -> int:
        return len(self.pts)

    def seek_point(self, frame: int) -> SeekPoint | None:
        """The last seek point at or before `frame` (None: start from the beginning)."""
        k = bisect.bisect_right([s.frame for s in self.seek_points], frame) - 1
        return self.seek_points[k] if k > 0 else None  # the first one is frame 0 itself


def scan(source: str | os.PathLike, info: VideoInfo | None = None) -> FrameIndex:
    """Read every video packet of `source` (demux only: no decoding, other streams
    skipped) and build its FrameIndex. Seconds for a feature film on a local disk; it
    reads the whole video stream, so a remote source is downloaded once."""
    info = info or probe(source)
    packets: list[tuple[int | None, int | None, bool, int | None]] = []
    with open_input(source) as c:
        vs = c.streams[info.video_index]
        try:
            for pkt in c.demux(vs):
                if pkt.size:  # the flush packet at the end has no data
                    packets.append((pkt.pts, pkt.dts, bool(pkt.is_keyframe), pkt.pos if pkt.pos >= 0 else None))
        except av.FFmpegError as exc:
            raise InputError(f"{os.fspath(source)} is corrupt: {reason(exc)}") from exc
    return index_of(packets)


def index_of(packets: list[tuple[int | None, int | None, bool, int | None]]) -> FrameIndex:
    """The FrameIndex of packets (pts, dts, keyframe, pos) in decode order; see the module doc."""
    pts = [p[0] for p in packets]
    if not packets:
        return FrameIndex((), (), "no video packets")
    if any(p is None for p in pts):
        return FrameIndex((), (), "packets without a pts")
    order = tuple(sorted(pts))
    if len(set(order)) != len(order):
        return FrameIndex(order, (), "two packets share a pts")
    if not packets[0][2] or packets[0][0] != order[0]:
        return FrameIndex(order, (), "the stream does not start with a keyframe shown first")
    frame_of = {p: k for k, p in enumerate(order)}
    points: list[SeekPoint] = []
    seen_max = None  # the largest pts demuxed so far
    gop_floor = None  # the largest pts before the current keyframe: nothing after it may go below
    for p, d, key, pos in packets:
        if gop_floor is not None and p <= gop_floor:
            return FrameIndex(order, (), "timestamps go back across a keyframe")
        if key:
            if seen_max is not None and p <= seen_max:
                return FrameIndex(order, (), "a keyframe is shown before pictures decoded ahead of it")
            points.append(SeekPoint(frame_of[p], p, d, pos))
            gop_floor = seen_max
        seen_max = p if seen_max is None else max(seen_max, p)
    return FrameIndex(order, tuple(points))
