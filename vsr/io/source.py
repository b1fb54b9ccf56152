"""What a video source holds: `probe(source) -> VideoInfo` (typed; no av objects leak out).

A source is a local path or any URL FFmpeg opens (`http://`, `rtmp://`, `srt://`,
`udp://`, `file:`, `pipe:N`; "-" is stdin, as in the ffmpeg command line). Live sources
(pipes, udp/rtp/srt/rtmp/rtsp/tcp) can be read once, from where they are: see `is_live`.
"""
from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av

from vsr.errors import InputError

# AVColorSpace numbers -> the swscale matrix names PyAV accepts.
MATRIX = {1: "ITU709", 4: "FCC", 5: "ITU601", 6: "SMPTE170M", 7: "SMPTE240M", 9: "BT2020", 10: "BT2020"}
_UNSPECIFIED = 2
INTERLACED_ORDERS = (2, 3, 4, 5)  # AVFieldOrder: TT, BB, TB, BT (0 unknown, 1 progressive)
DEFAULT_RATE = 25  # frames per second FFmpeg assumes for a stream that declares none

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # two letters at least: "C:\..." is a path
# Protocols that stream from where they are: no seeking, no second read.
_LIVE = ("pipe", "udp", "rtp", "srt", "rtmp", "rtmps", "rtmpt", "rtmpe", "rtmpte", "rtmpts", "rtsp", "tcp", "unix")


@dataclass(frozen=True)
class Colour:
    """The source's colour description (AVCOL_* numbers; 2 = unspecified).

    `matrix` is what vsr *uses* to convert between YUV and RGB: the tagged one, or for
    untagged files the usual guess (BT.709 from 720 lines up, BT.601 below), which is
    then written into the output so players do not guess differently for the new size.
    range: 1 limited ("tv"), 2 full ("pc").
    """

    primaries: int = _UNSPECIFIED
    transfer: int = _UNSPECIFIED
    matrix: int = 1
    range: int = 1


@dataclass(frozen=True)
class HDR10:
    """Static HDR10 metadata: mastering display (chromaticities in 1/50000, luminance in
    1/10000 cd/m2, as x264/x265 take them) and content light levels (cd/m2). Passed on to
    x264, x265 and SVT-AV1; other encoders get the colour tags only."""

    master_display: str | None = None  # "G(x,y)B(x,y)R(x,y)WP(x,y)L(max,min)"
    max_cll: tuple[int, int] | None = None  # (MaxCLL, MaxFALL)


@dataclass(frozen=True)
class StreamInfo:
    index: int
    type: str
    codec: str
    language: str | None = None


@dataclass(frozen=True)
class VideoInfo:
    """What `probe` found. width/height are the *stored* size; `rotation` is the display
    rotation in degrees counter-clockwise (0, 90, 180, 270); `upright_size` is what
    `decode` yields after applying it. sar: sample aspect ratio (1 when unknown).
    path: the source as given (a path or a URL)."""

    path: str
    container: str
    video_index: int
    codec: str
    width: int
    height: int
    rotation: int
    sar: Fraction
    time_base: Fraction
    rate: Fraction | None
    frames: int | None
    duration: float | None
    pix_fmt: str
    bit_depth: int
    colour: Colour
    hdr: HDR10 | None
    streams: tuple[StreamInfo, ...] = field(default_factory=tuple)
    interlaced: bool = False  # the stream declares a field order (or its first frame is interlaced)
    alpha: bool = False  # the decoded pixel format has a transparency plane (ProRes 4444, qtrle argb, PNG rgba)
    frames_exact: bool = False  # `frames` is the container's own count (MP4's sample table), not duration x rate
    start: Fraction = Fraction(0)  # the input's start time in seconds (FFmpeg's start_time: the earliest stream start)

    @property
    def upright_size(self) -> tuple[int, int]:
        """(width, height) after rotation."""
        return (self.height, self.width) if self.rotation in (90, 270) else (self.width, self.height)

    @property
    def upright_sar(self) -> Fraction:
        return 1 / self.sar if self.rotation in (90, 270) else self.sar


def has_alpha(pix_fmt: str) -> bool:
    """Whether FFmpeg's pixel format `pix_fmt` has a transparency (alpha) component."""
    try:
        return any(c.is_alpha for c in av.VideoFormat(pix_fmt).components)
    except (ValueError, av.FFmpegError):
        return False


def is_url(source: str | os.PathLike) -> bool:
    """Whether `source` is a URL for FFmpeg (or "-", stdin) rather than a local path."""
    s = os.fspath(source)
    return s == "-" or bool(_URL.match(s))


def is_live(source: str | os.PathLike) -> bool:
    """Whether `source` can only be read once, from where it is (a pipe or a live
    protocol): such a source cannot seek, so it is decoded from its first frame only."""
    s = os.fspath(source)
    return s == "-" or (is_url(s) and s.split(":", 1)[0].lower() in _LIVE)


def open_input(source: str | os.PathLike) -> av.container.InputContainer:
    """Open read-only, turning every way a source can be unusable into an InputError."""
    s = os.fspath(source)
    if is_url(s):
        try:
            return av.open("pipe:" if s == "-" else s, "r")
        except av.FFmpegError as exc:
            raise InputError(f"cannot read {s}: {reason(exc)}") from exc
    p = Path(s)
    if not p.exists():
        raise InputError(f"input not found: {p}")
    if p.is_dir():
        raise InputError(f"input is a folder, not a video file: {p}")
    if p.stat().st_size == 0:
        raise InputError(f"input is empty (0 bytes): {p}")
    if not os.access(p, os.R_OK):
        raise InputError(f"input is not readable (permissions): {p}")
    try:
        return av.open(str(p), "r")
    except av.FFmpegError as exc:
        raise InputError(f"cannot read {p}: it is truncated, corrupt or not a video ({reason(exc)})") from exc


def reason(exc: Exception) -> str:
    """FFmpeg's error text, short enough for the CLI's one line."""
    text = getattr(exc, "strerror", None) or str(exc)
    return text.split(":")[0].strip() if len(text) > 80 else text


def video_stream(container: av.container.InputContainer, source: str | os.PathLike) -> av.VideoStream:
    """The first video stream that is not a cover picture."""
    streams = [s for s in container.streams.video if not (s.disposition & av.stream.Disposition.attached_pic)]
    if not streams:
        raise InputError(f"{os.fspath(source)} has no video stream")
    return streams[0]


def _parse_hdr(frame: av.VideoFrame) -> HDR10 | None:
    """HDR10 static metadata from a decoded frame's side data. AVMasteringDisplayMetadata
    is 8 AVRationals (R, G, B, white point; x and y each), min and max luminance, then
    two int flags; AVContentLightMetadata is two unsigned ints."""
    master, cll = None, None
    for sd in frame.side_data or ():
        name = getattr(sd.type, "name", str(sd.type))
        raw = bytes(sd)
        if name == "MASTERING_DISPLAY_METADATA" and len(raw) >= 88:
            v = struct.unpack("<16i", raw[:64])
            c = [round(Fraction(v[2 * i], v[2 * i + 1] or 1) * 50000) for i in range(8)]
            lmin, lmax = Fraction(*struct.unpack("<2i", raw[64:72])), Fraction(*struct.unpack("<2i", raw[72:80]))
            has_prim, has_lum = struct.unpack("<2i", raw[80:88])
            if has_prim and has_lum:
                master = (
                    f"G({c[2]},{c[3]})B({c[4]},{c[5]})R({c[0]},{c[1]})WP({c[6]},{c[7]})"
                    f"L({round(lmax * 10000)},{round(lmin * 10000)})"
                )
        elif name == "CONTENT_LIGHT_LEVEL" and len(raw) >= 8:
            cll = struct.unpack("<2I", raw[:8])
    return HDR10(master, cll) if master or cll else None


def probe(source: str | os.PathLike) -> VideoInfo:
    """Describe `source`'s first video stream and list the others. Decodes one frame (for
    rotation, HDR side data and the true pixel format); raises InputError if unusable.
    A live source is consumed by this: decode it with `decode(source)` (no info), which
    probes and decodes in one read."""
    with open_input(source) as c:
        vs = video_stream(c, source)
        info, _ = describe(c, vs, source, c.decode(vs))
        return info


def _tag_seconds(tag: str | None) -> float | None:
    """Matroska's per-track DURATION tag ("00:00:00.422000000", written by FFmpeg and
    mkvmerge at the end of the file) in seconds; None when absent or unreadable. The
    video's own length, where the container's duration covers the longest stream."""
    try:
        h, m, sec = (tag or "").split(":")
        return int(h) * 3600 + int(m) * 60 + float(sec) or None
    except ValueError:
        return None


def describe(
    c: av.container.InputContainer, vs: av.VideoStream, source: str | os.PathLike, frames: Iterator[av.VideoFrame]
) -> tuple[VideoInfo, av.VideoFrame]:
    """The VideoInfo of open container `c`, from its headers and the first frame taken
    from `frames` (returned too, so a decode can go on from it)."""
    cc = vs.codec_context
    first: av.VideoFrame | None = None
    try:
        first = next(frames, None)
    except av.FFmpegError as exc:
        raise InputError(f"cannot decode {os.fspath(source)}: it is truncated or corrupt ({reason(exc)})") from exc
    if first is None:
        raise InputError(f"{os.fspath(source)} has a video stream without any decodable frame")
    fmt = first.format
    depth = max(p.bits for p in fmt.components) if fmt.components else 8
    matrix = cc.colorspace if cc.colorspace in MATRIX else (1 if first.height >= 720 else 6)
    rng = 2 if (cc.color_range == 2 or fmt.name.startswith("yuvj")) else 1
    frames_n = vs.frames or None
    duration = float(vs.duration * vs.time_base) if vs.duration and vs.time_base else (
        _tag_seconds(vs.metadata.get("DURATION")) or (c.duration / 1e6 if c.duration else None)
    )
    rate = vs.average_rate or vs.guessed_rate
    if first.pts is None:  # no timestamps (a raw .h264/.hevc stream): frames are numbered from the
        # rate the bitstream declares (its raw demuxer's average_rate is always 25), else FFmpeg's 25
        rate = cc.framerate or vs.guessed_rate or Fraction(DEFAULT_RATE)
    if frames_n is None and duration and rate:
        frames_n = int(round(duration * rate))
    sar = vs.sample_aspect_ratio or cc.sample_aspect_ratio
    others = tuple(
        StreamInfo(s.index, s.type, s.codec_context.name if s.codec_context else "?", s.language)
        for s in c.streams
        if s.index != vs.index
    )
    info = VideoInfo(
        path=os.fspath(source),
        container=c.format.name,
        video_index=vs.index,
        codec=cc.name,
        width=first.width,
        height=first.height,
        rotation=int(round(first.rotation / 90.0)) * 90 % 360,
        sar=Fraction(sar) if sar and sar > 0 else Fraction(1),
        time_base=vs.time_base or Fraction(1, 90000),
        rate=Fraction(rate) if rate else None,
        frames=frames_n,
        duration=duration,
        pix_fmt=fmt.name,
        bit_depth=depth,
        colour=Colour(cc.color_primaries, cc.color_trc, matrix, rng),
        hdr=_parse_hdr(first),
        streams=others,
        interlaced=bool(first.interlaced_frame) or getattr(cc, "field_order", 0) in INTERLACED_ORDERS,
        alpha=has_alpha(fmt.name),
        frames_exact=bool(vs.frames),
        start=Fraction(c.start_time, 1_000_000) if c.start_time is not None else Fraction(0),
    )
    return info, first
