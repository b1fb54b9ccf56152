"""`decode(source) -> Iterator[Frame]`: upright RGB frames with the source's pts.

`start` seeks: FFmpeg lands on a keyframe (`av_seek_frame` with AVSEEK_FLAG_BACKWARD, as
`ffmpeg -ss` before `-i` does), and only the frames from there on are decoded. Which
keyframe, and which frame index the first decoded frame has, comes from a `FrameIndex`
(`vsr.io.index`), so frame indices and pts are those of a decode from the first frame.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from fractions import Fraction
from itertools import chain

import av
import numpy as np

from vsr.errors import InputError, UsageError
from vsr.frame import Frame
from vsr.io.index import FrameIndex, SeekPoint, scan
from vsr.io.source import (
    DEFAULT_RATE,
    MATRIX,
    VideoInfo,
    describe,
    is_live,
    open_input,
    probe,
    reason,
    video_stream,
)

log = logging.getLogger(__name__)

DEINTERLACE = ("auto", "on", "off")
# Frames decoded (and dropped) before `start` when the deinterlacer runs: bwdif makes
# frame i from frames i-1, i and i+1, so frame `start` needs its predecessor as it was.
WARMUP = 2


def decode(
    source: str | os.PathLike,
    info: VideoInfo | None = None,
    *,
    start: int | None = None,
    stop: int | None = None,
    deinterlace: str = "auto",
    index: FrameIndex | None = None,
    on_error: Callable[[str], None] | None = None,
) -> Iterator[Frame]:
    """Yield the frames `start` (default 0) to `stop` (exclusive; default: to the end) of
    the first video stream of `source` (a path or any URL FFmpeg opens; "-" is stdin) as
    upright RGB `Frame`s.

    image: HxWx3, uint8 for 8-bit sources, uint16 (0..65535) above; the display rotation
    is applied (np.rot90 counter-clockwise), the SAR is not (see `vsr.targets`).
    pts/time_base: the decoder's presentation timestamps, verbatim (VFR survives);
    frames without pts get one extrapolated from the previous frame, or (a stream without
    timestamps, e.g. raw .h264) frame k gets k / rate seconds, 25 fps when none is known.
    A pts that is not above the previous frame's (a muxer that wrote every frame at 0, a
    clock that restarts) is renumbered to the previous pts plus the last frame spacing
    (1 / rate when none is known yet), with one warning: what ffmpeg's decoder does for a
    frame without pts (`last_frame_pts + last_frame_duration_est` in fftools/ffmpeg_dec.c),
    and, as its muxer does for non-monotonic DTS ("changing to ..." in ffmpeg_mux.c), it
    keeps going with strictly increasing timestamps, which every encoder and muxer needs.
    index: 0, 1, 2, ... in display order, the same whatever `start` is.
    start: seek to the last keyframe at or before it (before `start - WARMUP` when
    deinterlacing), decode from there and drop the frames before `start` unconverted.
    Needs `index` (`vsr.io.scan(source)`, built here when None); where the index says
    seeking is not exact, decoding starts at frame 0 as a full decode would. A live source
    (`is_live`: a pipe, udp/srt/rtmp/...) cannot seek: UsageError unless start is 0.
    info: `probe(source)`; None probes in the same read (the only way for a live source).
    deinterlace: "auto" (when the stream is interlaced, `VideoInfo.interlaced`), "on" or
    "off"; see `deinterlaced`. Raises InputError for an unusable or corrupt source.
    on_error: None raises InputError at the first packet that cannot be read or decoded;
    a callable gets what `ffmpeg` does by default instead: a packet that does not decode
    is skipped and a file that cannot be read further (truncated) ends the frames, each
    reported as on_error("why"), so the frames that do decode still come out.
    """
    if deinterlace not in DEINTERLACE:
        raise UsageError(f"deinterlace must be one of {', '.join(DEINTERLACE)}, got {deinterlace!r}")
    start = start or 0
    if start < 0 or (stop is not None and stop < start):
        raise UsageError(f"decode: need 0 <= start <= stop, got start={start}, stop={stop}")
    if start and is_live(source):
        raise UsageError(
            f"cannot start at frame {start} of {os.fspath(source)}: a pipe or live stream cannot seek; "
            "decode it from its first frame"
        )
    point = None
    if start:
        info = info or probe(source)
        index = index or scan(source, info)
        point = index.seek_point(start - (WARMUP if _mode(info, deinterlace) != "off" else 0))
    return _frames(source, info, start, stop, deinterlace, index if point else None, point, on_error)


def _mode(info: VideoInfo, deinterlace: str) -> str:
    if deinterlace == "auto":
        return "interlaced" if info.interlaced else "off"
    return deinterlace


class Increasing:
    """Strictly increasing timestamps for one stream (see `decode`): one not above the
    previous (every frame at 0, a clock that restarts), or a missing one, becomes the
    previous plus the last genuine spacing (`first_step` while there is none yet), with
    one warning naming `what` for the first that was not after the previous."""

    def __init__(self, what: str, first_step: int):
        self.what = what
        self.first_step = first_step
        self.last: int | None = None
        self.step: int | None = None  # the last genuine spacing
        self.renumbered = False

    def __call__(self, ts: int | None, item: str) -> int | None:
        """ts made strictly increasing; None stays None only before the first timestamp."""
        if ts is None:
            if self.last is None:
                return None
            ts = self.last + (self.step or self.first_step)
        elif self.last is not None and ts <= self.last:
            fixed = self.last + (self.step or self.first_step)
            if not self.renumbered:
                log.warning("%s: %s has pts %d, not after the previous one's %d: renumbered to %d "
                            "(and so on for the next such)", self.what, item, ts, self.last, fixed)
            self.renumbered, ts = True, fixed
        elif self.last is not None:
            self.step = ts - self.last
        self.last = ts
        return ts


def _frames(
    source: str | os.PathLike, info: VideoInfo | None, start: int, stop: int | None, deinterlace: str,
    index: FrameIndex | None, point: SeekPoint | None, on_error: Callable[[str], None] | None = None,
) -> Iterator[Frame]:
    c, vs, packets, point = _open_at(source, info, point)
    with c:
        decoded = _decoded_frames(packets, on_error)
        if info is None:  # probe from this read: what a live source needs
            info, first = describe(c, vs, source, decoded)
            decoded = chain([first], decoded)
        index_k = 0
        if point is not None:  # an open GOP's leading pictures: decoded from missing references
            index_k = point.frame
            decoded = (f for f in decoded if f.pts is None or f.pts >= point.pts)
        increasing: Increasing | None = None
        try:
            frames = same_size(decoded, (info.width, info.height), index_k)
            for frame, rotation in deinterlaced(frames, vs, _mode(info, deinterlace)):
                if stop is not None and index_k >= stop:
                    return
                if increasing is None:  # one frame duration in the stream's time base
                    tick = 1 / ((info.rate or DEFAULT_RATE) * (frame.time_base or info.time_base))
                    increasing = Increasing(os.fspath(source), max(1, round(tick)))
                pts = frame.pts
                if pts is None and increasing.last is None:  # numbered from the frame rate (25 fps when unknown)
                    pts = round(index_k * tick)
                pts = increasing(pts, f"frame {index_k}")  # see `decode`
                if point is not None and (index_k >= len(index) or pts != index.pts[index_k]):
                    raise InputError(
                        f"{os.fspath(source)}: after seeking, frame {index_k} has pts {pts}, not the index's; "
                        "this file cannot be decoded from the middle"
                    )
                index_k += 1
                if index_k <= start:
                    continue  # before `start`: decoded (the deinterlacer's warm-up), not converted
                img, alpha = _to_rgb_alpha(frame, info)
                k = (int(round(rotation / 90.0)) % 4) if rotation else 0
                if k:
                    img = np.ascontiguousarray(np.rot90(img, k))
                    alpha = None if alpha is None else np.ascontiguousarray(np.rot90(alpha, k))
                yield Frame(img, pts=pts, time_base=frame.time_base or info.time_base, index=index_k - 1, alpha=alpha)
        except av.FFmpegError as exc:
            raise InputError(f"{os.fspath(source)} is corrupt at frame {index_k}: {reason(exc)}") from exc


def _open_at(
    source: str | os.PathLike, info: VideoInfo | None, point: SeekPoint | None
) -> tuple[av.container.InputContainer, av.VideoStream, Iterator[av.Packet], SeekPoint | None]:
    """Open `source` and return its video packets from `point`'s keyframe on (from the
    first packet when point is None, or when the seek missed it: then it is None too)."""
    for attempt in (point, None) if point is not None else (None,):
        c = open_input(source)
        try:
            vs = c.streams[info.video_index] if info is not None else video_stream(c, source)
            vs.thread_type = "AUTO"
            if attempt is None:
                return c, vs, c.demux(vs), None
            packets = _seek(c, vs, attempt, source)
            if packets is not None:
                return c, vs, packets, attempt
            log.debug("seeking in %s missed the keyframe of frame %d: decoding from the start", source, attempt.frame)
        except BaseException:
            c.close()
            raise
        c.close()
    raise AssertionError("unreachable")


def _seek(
    c: av.container.InputContainer, vs: av.VideoStream, point: SeekPoint, source: str | os.PathLike
) -> Iterator[av.Packet] | None:
    """The packets from `point`'s keyframe on, or None if FFmpeg's seek landed after it.

    The seek asks for the keyframe at or before the keyframe's dts (MP4 indexes samples
    by dts, Matroska cues by pts, MPEG-TS is bisected by timestamps); what lies between
    the landing point and the keyframe is demuxed and dropped, never decoded."""
    try:
        c.seek(point.dts if point.dts is not None else point.pts, stream=vs, backward=True, any_frame=False)
    except av.FFmpegError as exc:
        raise InputError(f"cannot seek in {os.fspath(source)}: {reason(exc)} (decode it from its first frame)") from exc
    packets = c.demux(vs)
    for pkt in packets:
        if not pkt.size:
            return None
        if pkt.pts == point.pts and pkt.is_keyframe:
            return chain([pkt], packets)
        if pkt.dts is not None and point.dts is not None and pkt.dts > point.dts:
            return None
        if pkt.pts is not None and pkt.is_keyframe and pkt.pts > point.pts:
            return None
    return None


def _decoded_frames(
    packets: Iterator[av.Packet], on_error: Callable[[str], None] | None = None
) -> Iterator[av.VideoFrame]:
    """What `container.decode(stream)` does, over packets we chose (the last one, of size
    0, flushes the decoder's delayed frames). on_error: see `decode`."""
    packets = iter(packets)
    while True:
        try:
            pkt = next(packets)
        except StopIteration:
            return
        except av.FFmpegError as exc:
            if on_error is None:
                raise
            on_error(f"the file cannot be read past this point ({reason(exc)})")
            return
        try:
            frames = pkt.decode()
        except av.FFmpegError as exc:
            if on_error is None:
                raise
            on_error(f"a damaged packet could not be decoded ({reason(exc)})")
            continue
        yield from frames


def to_rgb(frame: av.VideoFrame, info: VideoInfo) -> np.ndarray:
    """YUV (or whatever the decoder gave) -> (H, W, 3) RGB with the source's matrix and
    range: uint8 for 8-bit sources, uint16 (full 0..65535) above; FFmpeg's swscale, bicubic
    chroma upsampling. Shared by the file decoder and `vsr.io.live`."""
    fmt = "rgb48le" if info.bit_depth > 8 else "rgb24"
    return frame.to_ndarray(
        format=fmt,
        src_colorspace=MATRIX[info.colour.matrix],
        src_color_range=info.colour.range,
        interpolation="BICUBIC",
    )


def _to_rgb_alpha(frame: av.VideoFrame, info: VideoInfo) -> tuple[np.ndarray, np.ndarray | None]:
    """`to_rgb`, plus the HxW alpha plane (same dtype) when the source has one."""
    if not info.alpha:
        return to_rgb(frame, info), None
    rgba = frame.to_ndarray(
        format="rgba64le" if info.bit_depth > 8 else "rgba",
        src_colorspace=MATRIX[info.colour.matrix],
        src_color_range=info.colour.range,
        interpolation="BICUBIC",
    )
    return np.ascontiguousarray(rgba[..., :3]), np.ascontiguousarray(rgba[..., 3])


def same_size(frames: Iterator[av.VideoFrame], size: tuple[int, int], first: int = 0) -> Iterator[av.VideoFrame]:
    """Frames scaled to `size` where they differ (a resolution change midway: broadcast
    captures, joined TS), with one warning: one output file has one size, and the
    deinterlacer's filter graph is built for one size too. first: the first frame's index."""
    warned = False
    for i, f in enumerate(frames, first):
        if (f.width, f.height) != size:
            if not warned:
                warned = True
                log.warning(
                    "frame %d is %dx%d, the stream started at %dx%d: scaling such frames to %dx%d",
                    i, f.width, f.height, *size, *size,
                )
            g = f.reformat(width=size[0], height=size[1], interpolation="BICUBIC")
            g.pts, g.time_base = f.pts, f.time_base
            f = g
        yield f


def deinterlaced(
    frames: Iterator[av.VideoFrame], stream: av.video.stream.VideoStream, mode: str
) -> Iterator[tuple[av.VideoFrame, int]]:
    """(frame, display rotation in degrees) in order; through FFmpeg's bwdif when mode says.

    bwdif in send_frame mode gives one frame per frame (the rate and count stay, so do the
    timestamps): "interlaced"/"on" deinterlace the frames flagged interlaced / every frame.
    An upscaler must see whole frames: two fields woven together turn into combing that a
    diffusion prior would happily sharpen.
    """
    if mode == "off":
        for f in frames:
            yield f, f.rotation or 0
        return
    graph = av.filter.Graph()
    src = graph.add_buffer(template=stream)
    bwdif = graph.add("bwdif", f"mode=send_frame:parity=auto:deint={'all' if mode == 'on' else 'interlaced'}")
    src.link_to(bwdif)
    bwdif.link_to(graph.add("buffersink"))
    graph.configure()
    rotation = 0
    for f in frames:
        rotation = f.rotation or 0
        graph.push(f)
        for out in _drain(graph, stream.time_base):
            yield out, rotation
    graph.push(None)
    for out in _drain(graph, stream.time_base):
        yield out, rotation


def _drain(graph: av.filter.Graph, time_base: Fraction) -> Iterator[av.VideoFrame]:
    """The frames the graph has ready, with their pts back in the stream's time base
    (bwdif halves the time base, since it could double the rate; send_frame does not)."""
    while True:
        try:
            f = graph.pull()
        except (av.BlockingIOError, av.EOFError):
            return
        if f.pts is not None and f.time_base and f.time_base != time_base:
            f.pts = int(round(f.pts * f.time_base / time_base))
            f.time_base = time_base
        yield f
