"""Video I/O: the only module of vsr that imports PyAV (`av`).

Four pieces, each small:
- `probe(path) -> VideoInfo`: what the file holds (typed; no av objects leak out).
- `decode(path) -> Iterator[Frame]`: upright RGB frames (rotation applied) with the
  source's pts/time_base; uint8, or uint16 (0..65535) for sources above 8 bits.
- `SegmentWriter`: encodes Frames (keeping their pts) into a *segment file*, vsr's own
  tiny packet store (below), so a long job can be resumed segment by segment.
- `assemble(...)`: writes the final container: the video packets of the segments, and
  every other stream of the source (audio, subtitles, ...) copied packet for packet,
  plus metadata and chapters.

Why a private segment format and not .mkv/.mp4 pieces: containers rewrite timestamps
(Matroska rounds to milliseconds and drops the first packets' dts, NUT and MP4 shift
them to avoid negative dts), and vsr promises each frame's exact original pts. A
segment file is `MAGIC` followed by records `<qqqBI` (pts, dts, duration, flags, size)
and the packet bytes, in the encoder's time base (the source video stream's).
"""
from __future__ import annotations

import hashlib
import heapq
import io
import logging
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from vsr.errors import CodecError, InputError, OutputError, UsageError
from vsr.frame import Frame

log = logging.getLogger(__name__)

MAGIC = b"VSRSEG1\n"
_RECORD = struct.Struct("<qqqBI")
_NONE = -(2**63)
_KEY = 1

# AVColorSpace numbers -> the swscale matrix names PyAV accepts.
_MATRIX = {1: "ITU709", 4: "FCC", 5: "ITU601", 6: "SMPTE170M", 7: "SMPTE240M", 9: "BT2020", 10: "BT2020"}
_UNSPECIFIED = 2


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


def _decimal_master_display(x265: str) -> str:
    """x265's integer form (chromaticity in 1/50000, luminance in 1/10000 cd/m2) -> the
    decimal form SVT-AV1 parses (chromaticity 0-1, cd/m2); integers there are misread."""
    parts = re.findall(r"(G|B|R|WP|L)\((\d+),(\d+)\)", x265)
    scale = {"L": 10000}
    return "".join(f"{k}({int(a) / scale.get(k, 50000):g},{int(b) / scale.get(k, 50000):g})" for k, a, b in parts)


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
    `decode` yields after applying it. sar: sample aspect ratio (1 when unknown)."""

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

    @property
    def upright_size(self) -> tuple[int, int]:
        """(width, height) after rotation."""
        return (self.height, self.width) if self.rotation in (90, 270) else (self.width, self.height)

    @property
    def upright_sar(self) -> Fraction:
        return 1 / self.sar if self.rotation in (90, 270) else self.sar


def route_ffmpeg_logs(verbose: bool) -> None:
    """Let FFmpeg print its own log lines to stderr when `verbose` (`vsr --debug`), else
    silence them: the CLI promises one line on stderr per error, and every FFmpeg
    failure vsr cares about comes back as an exception it turns into that line."""
    # Never PyAV's Python log callback (set_level(<a level>)): FFmpeg's worker threads
    # must take the GIL to call it, which can deadlock a decode or encode that holds the
    # GIL while it waits for those threads. FFmpeg's own callback prints from C.
    if verbose:
        av.logging.restore_default_callback()
        av.logging.set_libav_level(av.logging.VERBOSE)
    else:
        av.logging.set_level(None)
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 logs to stderr by itself; its level comes from the environment


# ---------------------------------------------------------------------------- reading
def _open_input(path: str | os.PathLike) -> av.container.InputContainer:
    """Open read-only, turning every way a file can be unusable into an InputError."""
    p = Path(path)
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
        raise InputError(f"cannot read {p}: it is truncated, corrupt or not a video ({_reason(exc)})") from exc


def _reason(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return text.split(":")[0].strip() if len(text) > 80 else text


def _video_stream(container: av.container.InputContainer, path: str | os.PathLike) -> av.VideoStream:
    streams = [s for s in container.streams.video if not (s.disposition & av.stream.Disposition.attached_pic)]
    if not streams:
        raise InputError(f"{path} has no video stream")
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


def probe(path: str | os.PathLike) -> VideoInfo:
    """Describe `path`'s first video stream and list the others. Decodes one frame (for
    rotation, HDR side data and the true pixel format); raises InputError if unusable."""
    with _open_input(path) as c:
        vs = _video_stream(c, path)
        cc = vs.codec_context
        first: av.VideoFrame | None = None
        try:
            for first in c.decode(vs):
                break
        except av.FFmpegError as exc:
            raise InputError(f"cannot decode {path}: it is truncated or corrupt ({_reason(exc)})") from exc
        if first is None:
            raise InputError(f"{path} has a video stream without any decodable frame")
        fmt = first.format
        depth = max(c.bits for c in fmt.components) if fmt.components else 8
        matrix = cc.colorspace if cc.colorspace in _MATRIX else (1 if first.height >= 720 else 6)
        rng = 2 if (cc.color_range == 2 or fmt.name.startswith("yuvj")) else 1
        colour = Colour(cc.color_primaries, cc.color_trc, matrix, rng)
        frames = vs.frames or None
        duration = float(vs.duration * vs.time_base) if vs.duration and vs.time_base else (
            c.duration / 1e6 if c.duration else None
        )
        rate = vs.average_rate or vs.guessed_rate
        if frames is None and duration and rate:
            frames = int(round(duration * rate))
        sar = vs.sample_aspect_ratio or cc.sample_aspect_ratio
        others = tuple(
            StreamInfo(s.index, s.type, s.codec_context.name if s.codec_context else "?", s.language)
            for s in c.streams
            if s.index != vs.index
        )
        return VideoInfo(
            path=str(path),
            container=c.format.name,
            video_index=vs.index,
            codec=cc.name,
            width=first.width,
            height=first.height,
            rotation=int(round(first.rotation / 90.0)) * 90 % 360,
            sar=Fraction(sar) if sar and sar > 0 else Fraction(1),
            time_base=vs.time_base or Fraction(1, 90000),
            rate=Fraction(rate) if rate else None,
            frames=frames,
            duration=duration,
            pix_fmt=fmt.name,
            bit_depth=depth,
            colour=colour,
            hdr=_parse_hdr(first),
            streams=others,
            interlaced=bool(first.interlaced_frame) or getattr(cc, "field_order", 0) in _INTERLACED_ORDERS,
        )


def _to_rgb(frame: av.VideoFrame, info: VideoInfo) -> np.ndarray:
    """YUV (or whatever the decoder gave) -> HxWx3 RGB with the source's matrix and range."""
    fmt = "rgb48le" if info.bit_depth > 8 else "rgb24"
    return frame.to_ndarray(
        format=fmt,
        src_colorspace=_MATRIX[info.colour.matrix],
        src_color_range=info.colour.range,
        interpolation="BICUBIC",
    )


_INTERLACED_ORDERS = (2, 3, 4, 5)  # AVFieldOrder: TT, BB, TB, BT (0 unknown, 1 progressive)
DEINTERLACE = ("auto", "on", "off")


def _same_size(frames: Iterator[av.VideoFrame], size: tuple[int, int]) -> Iterator[av.VideoFrame]:
    """Frames scaled to `size` where they differ (a resolution change midway: broadcast
    captures, joined TS), with one warning: one output file has one size, and the
    deinterlacer's filter graph is built for one size too."""
    warned = False
    for i, f in enumerate(frames):
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


def _deinterlaced(
    frames: Iterator[av.VideoFrame], stream: av.video.stream.VideoStream, mode: str
) -> Iterator[tuple[av.VideoFrame, int]]:
    """(frame, display rotation in degrees) in order; through FFmpeg's bwdif when mode says.

    bwdif in send_frame mode gives one frame per frame (the rate and count stay, so do the
    timestamps): "auto"/"on" deinterlace the frames flagged interlaced / every frame. An
    upscaler must see whole frames: two fields woven together turn into combing that a
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


def decode(
    path: str | os.PathLike, info: VideoInfo | None = None, *, start: int = 0, deinterlace: str = "auto"
) -> Iterator[Frame]:
    """Yield every frame of the first video stream as an upright RGB `Frame`.

    image: HxWx3, uint8 for 8-bit sources, uint16 (0..65535) above; the display rotation
    is applied (np.rot90 counter-clockwise), the SAR is not (see `vsr.targets`).
    pts/time_base: the decoder's presentation timestamps, verbatim (VFR survives);
    frames without pts get one extrapolated from the previous frame. index: 0, 1, 2, ...
    start: yield from frame index `start` on (a resumed job). The frames before it are
    still decoded (and deinterlaced, which looks at neighbours), since the index counts
    decoded frames and a seek lands on keyframes, but not converted to RGB, which is most
    of the per-frame cost.
    deinterlace: "auto" (when the stream is interlaced, `VideoInfo.interlaced`), "on" or
    "off"; see `_deinterlaced`.
    """
    if deinterlace not in DEINTERLACE:
        raise UsageError(f"deinterlace must be one of {', '.join(DEINTERLACE)}, got {deinterlace!r}")
    info = info or probe(path)
    if deinterlace == "auto":
        mode = "interlaced" if info.interlaced else "off"
    else:
        mode = deinterlace
    with _open_input(path) as c:
        vs = c.streams[info.video_index]
        vs.thread_type = "AUTO"
        last_pts, step, index = None, None, 0
        try:
            frames = _same_size(c.decode(vs), (info.width, info.height))
            for frame, rotation in _deinterlaced(frames, vs, mode):
                pts = frame.pts
                if pts is None and last_pts is not None:
                    pts = last_pts + (step or 1)
                if pts is not None and last_pts is not None and pts > last_pts:
                    step = pts - last_pts
                if index < start:
                    last_pts = pts
                    index += 1
                    continue
                img = _to_rgb(frame, info)
                k = (int(round(rotation / 90.0)) % 4) if rotation else 0
                if k:
                    img = np.ascontiguousarray(np.rot90(img, k))
                yield Frame(img, pts=pts, time_base=frame.time_base or info.time_base, index=index)
                last_pts = pts
                index += 1
        except av.FFmpegError as exc:
            raise InputError(f"{path} is corrupt at frame {index}: {_reason(exc)}") from exc


# ---------------------------------------------------------------------------- encoding
@dataclass(frozen=True)
class EncoderSettings:
    """How the video is encoded. options: extra codec options (`--encoder-opt k=v`),
    passed to FFmpeg verbatim after crf/preset."""

    codec: str = "libx264"
    crf: float | None = 18
    preset: str | None = "medium"
    pix_fmt: str = "yuv420p"
    options: tuple[tuple[str, str], ...] = ()

    def codec_options(self, hdr: HDR10 | None = None) -> dict[str, str]:
        opts: dict[str, str] = {}
        if self.crf is not None:
            opts["crf"] = f"{self.crf:g}"
        if self.preset is not None:
            opts["preset"] = str(self.preset)
        if hdr is not None and self.codec in ("libx264", "libx265"):
            key = "x264-params" if self.codec == "libx264" else "x265-params"
            parts = []
            if hdr.master_display:
                parts.append(f"mastering-display={hdr.master_display}" if self.codec == "libx264" else f"master-display={hdr.master_display}")
            if hdr.max_cll:
                parts.append(f"cll={hdr.max_cll[0]},{hdr.max_cll[1]}" if self.codec == "libx264" else f"max-cll={hdr.max_cll[0]},{hdr.max_cll[1]}")
            if self.codec == "libx265":
                parts.append("hdr10=1")
            if parts:
                opts[key] = ":".join(parts)
        if hdr is not None and self.codec == "libsvtav1":
            parts = []
            if hdr.master_display:
                parts.append(f"mastering-display={_decimal_master_display(hdr.master_display)}")
            if hdr.max_cll:
                parts.append(f"content-light={hdr.max_cll[0]},{hdr.max_cll[1]}")
            if parts:
                opts["svtav1-params"] = ":".join(parts)
        if self.codec == "libx265":  # x265 prints its own statistics to stderr otherwise
            opts["x265-params"] = ":".join(filter(None, ["log-level=error", opts.get("x265-params")]))
        for k, v in self.options:
            if k in opts and k.endswith("-params"):
                opts[k] = f"{opts[k]}:{v}"
            else:
                opts[k] = v
        return opts


def video_encoders() -> list[str]:
    """Names of the video encoders this PyAV build has (for error messages)."""
    names = []
    for name in sorted(av.codecs_available):
        try:
            c = av.codec.Codec(name, "w")
        except Exception:  # noqa: BLE001 - decoders-only names raise here
            continue
        if c.type == "video":
            names.append(name)
    return names


def check_codec(name: str) -> None:
    """Raise CodecError (one line, what to do) if `name` is not a video encoder here."""
    try:
        codec = av.codec.Codec(name, "w")
    except Exception as exc:  # noqa: BLE001 - PyAV raises several types for unknown names
        have = video_encoders()
        common = [c for c in ("libx264", "libx265", "libsvtav1", "libvpx-vp9", "mpeg4", "ffv1") if c in have]
        raise CodecError(f"unknown encoder {name!r}: try one of {', '.join(common)}") from exc
    if codec.type != "video":
        raise CodecError(f"{name!r} is a {codec.type} encoder, not a video one")


# x264/x265 check a preset name before FFmpeg's log callback is in place, so a bad one
# prints its own line on stderr: catch it here instead (the lists are the same for both).
X26X_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo")


def check_encoder(settings: EncoderSettings) -> None:
    """Raise CodecError if the codec is unknown, cannot take the pixel format, or (x264,
    x265) does not know the preset."""
    check_codec(settings.codec)
    preset = (settings.preset or "").lower()
    if settings.codec in ("libx264", "libx265") and preset and not (preset in X26X_PRESETS or preset.isdigit()):
        raise CodecError(f"{settings.codec} has no preset {settings.preset!r}: use --preset {', '.join(X26X_PRESETS)}")
    formats = [f.name for f in (av.codec.Codec(settings.codec, "w").video_formats or ())]
    if formats and settings.pix_fmt not in formats:
        raise CodecError(f"{settings.codec} cannot encode {settings.pix_fmt}: use --pix-fmt {' or '.join(formats[:6])}")


def ten_bit_format(codec: str) -> str:
    """The 10-bit 4:2:0 format of `codec` (CodecError if it has none)."""
    c = av.codec.Codec(codec, "w")
    formats = [f.name for f in (c.video_formats or ())]
    for name in ("yuv420p10le", "yuv420p10be", "p010le"):
        if name in formats:
            return name
    raise CodecError(f"{codec} has no 10-bit 4:2:0 format: pick --codec libx264, libx265 or libsvtav1")


def needs_global_header(dst: str | os.PathLike) -> bool:
    """Whether the container for `dst` (by its extension) keeps codec headers out of band."""
    fmt = _output_format(dst)
    return bool(int(fmt.flags) & av.format.Flags.global_header.value)


def _output_format(dst: str | os.PathLike) -> av.format.ContainerFormat:
    ext = Path(dst).suffix.lower().lstrip(".")
    names = {"mkv": "matroska", "mov": "mov", "mp4": "mp4", "m4v": "mp4", "webm": "webm", "ts": "mpegts", "avi": "avi"}
    try:
        return av.format.ContainerFormat(names.get(ext, ext), "w")
    except Exception as exc:  # noqa: BLE001
        raise OutputError(f"cannot tell the container format from {Path(dst).name!r}: end OUT with .mp4, .mkv or .mov") from exc


def _configure(cc: av.VideoCodecContext, settings: EncoderSettings, width: int, height: int, time_base: Fraction,
               rate: Fraction | None, colour: Colour, hdr: HDR10 | None) -> None:
    cc.width, cc.height, cc.pix_fmt = width, height, settings.pix_fmt
    cc.time_base = time_base
    if rate:
        cc.framerate = rate
    cc.sample_aspect_ratio = Fraction(1, 1)
    cc.color_primaries, cc.color_trc = colour.primaries, colour.transfer
    cc.colorspace, cc.color_range = colour.matrix if colour.matrix != 10 else 9, colour.range
    cc.options = settings.codec_options(hdr)


@dataclass(frozen=True)
class StreamFormat:
    """Everything the encoder needs to know about the output video."""

    settings: EncoderSettings
    width: int
    height: int
    time_base: Fraction
    rate: Fraction | None
    colour: Colour
    hdr: HDR10 | None
    global_header: bool


def check_encoder_opens(fmt: StreamFormat) -> None:
    """Open (and drop) an encoder with `fmt`, so refused options fail before any work.

    FFmpeg leaves the options an encoder does not know in the dictionary instead of
    failing; a user's `--encoder-opt` that nothing reads is a typo or the wrong codec,
    and silently encoding without it is the kind of surprise that costs a night's job.
    """
    try:
        cc = av.CodecContext.create(fmt.settings.codec, "w")
        _configure(cc, fmt.settings, fmt.width, fmt.height, fmt.time_base, fmt.rate, fmt.colour, fmt.hdr)
        cc.open()
    except av.FFmpegError as exc:
        raise CodecError(f"{fmt.settings.codec} refused the options {fmt.settings.codec_options(fmt.hdr)}: {_reason(exc)}") from exc
    unused = sorted(set(dict(cc.options)) & {k for k, _ in fmt.settings.options})
    if unused:
        raise CodecError(f"{fmt.settings.codec} has no option {', '.join(unused)} (given with --encoder-opt)")


class SegmentWriter:
    """Encode Frames into one segment file (see the module doc), as a context manager.

    Each segment is encoded by a fresh encoder, so it starts with a keyframe and can be
    redone on its own. The file appears under `path` only when complete (written to
    `path.part`, fsync'ed, renamed); `close()` returns its sha256.
    """

    def __init__(self, path: str | os.PathLike, fmt: StreamFormat):
        self.path = Path(path)
        self.fmt = fmt
        self.frames = 0
        self._part = self.path.with_name(self.path.name + ".part")
        try:
            self._cc = av.CodecContext.create(fmt.settings.codec, "w")
            _configure(self._cc, fmt.settings, fmt.width, fmt.height, fmt.time_base, fmt.rate, fmt.colour, fmt.hdr)
            if fmt.global_header:
                self._cc.flags |= av.codec.context.Flags.global_header
            self._cc.open()
        except av.FFmpegError as exc:
            raise CodecError(f"{fmt.settings.codec} refused the options {fmt.settings.codec_options(fmt.hdr)}: {_reason(exc)}") from exc
        try:
            self._file = open(self._part, "wb")
        except OSError as exc:
            raise OutputError(f"cannot write {self._part}: {exc.strerror}") from exc
        self._file.write(MAGIC)
        self._hash = hashlib.sha256(MAGIC)

    def _av_frame(self, frame: Frame) -> av.VideoFrame:
        img = frame.image
        vf = av.VideoFrame.from_ndarray(img, format="rgb48le" if img.dtype == np.uint16 else "rgb24")
        vf = vf.reformat(
            format=self.fmt.settings.pix_fmt,
            dst_colorspace=_MATRIX[self.fmt.colour.matrix],
            dst_color_range=self.fmt.colour.range,
            interpolation="BICUBIC",
        )
        vf.pts = frame.pts if frame.pts is not None else frame.index
        vf.time_base = self.fmt.time_base
        return vf

    def _write_packets(self, packets: list[av.Packet]) -> None:
        for p in packets:
            data = bytes(p)
            if not data:
                continue
            rec = _RECORD.pack(
                _NONE if p.pts is None else p.pts,
                _NONE if p.dts is None else p.dts,
                p.duration or 0,
                _KEY if p.is_keyframe else 0,
                len(data),
            )
            self._file.write(rec)
            self._file.write(data)
            self._hash.update(rec)
            self._hash.update(data)

    def write(self, frame: Frame) -> None:
        if frame.width != self.fmt.width or frame.height != self.fmt.height:
            raise ValueError(f"frame is {frame.width}x{frame.height}, the encoder {self.fmt.width}x{self.fmt.height}")
        try:
            self._write_packets(self._cc.encode(self._av_frame(frame)))
        except av.FFmpegError as exc:
            raise CodecError(f"{self.fmt.settings.codec} failed on frame {frame.index}: {_reason(exc)}") from exc
        except OSError as exc:
            raise OutputError(f"cannot write {self._part}: {exc.strerror} (disk full?)") from exc
        self.frames += 1

    def close(self) -> str:
        """Flush the encoder, make the file durable, return its sha256 hex digest."""
        try:
            self._write_packets(self._cc.encode(None))
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._part, self.path)
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror} (disk full?)") from exc
        return self._hash.hexdigest()

    def abort(self) -> None:
        """Drop an unfinished segment (interrupted run): nothing appears under `path`."""
        self._file.close()
        self._part.unlink(missing_ok=True)

    def __enter__(self) -> "SegmentWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_segment(path: str | os.PathLike) -> Iterator[tuple[int | None, int | None, int, bool, bytes]]:
    """(pts, dts, duration, keyframe, data) of every packet of a segment file."""
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise OutputError(f"{path} is not a vsr segment file")
        while head := f.read(_RECORD.size):
            pts, dts, dur, flags, size = _RECORD.unpack(head)
            yield (None if pts == _NONE else pts, None if dts == _NONE else dts, dur, bool(flags & _KEY), f.read(size))


# ---------------------------------------------------------------------------- muxing
_REGENERATED = {"major_brand", "minor_version", "compatible_brands", "encoder", "duration"}


@dataclass
class _Output:
    """An output container with its header written: where each source stream went."""

    container: av.container.OutputContainer
    video: av.stream.Stream
    copies: dict[int, av.stream.Stream]
    dropped: list[str]


def _start_output(inp: av.container.InputContainer, info: VideoInfo, fmt: StreamFormat, target: Any,
                  name: str, *, warn: bool) -> _Output:
    """Open `target` (a path or a file object) as the container for `name`, declare the
    new video stream and the copies of the others (metadata, dispositions, chapters) and
    write the header. Streams the container cannot hold are left out with a warning."""
    out = av.open(target, "w", format=_output_format(name).name)
    dropped: list[str] = []
    copies: dict[int, av.stream.Stream] = {}
    video_out = None
    try:
        for k, v in inp.metadata.items():
            if k.lower() not in _REGENERATED:
                out.metadata[k] = v
        supported = out.supported_codecs
        for ist in inp.streams:
            if ist.index == info.video_index:
                try:
                    video_out = out.add_stream(fmt.settings.codec, rate=fmt.rate)
                except ValueError as exc:  # e.g. libx264 in .webm (VP8/VP9/AV1 only)
                    out.close()
                    raise CodecError(
                        f"{Path(name).suffix} files cannot hold {fmt.settings.codec} video ({exc}): "
                        "pick another --codec or OUT.mkv"
                    ) from None
                _configure(video_out.codec_context, fmt.settings, fmt.width, fmt.height, fmt.time_base, fmt.rate, fmt.colour, fmt.hdr)
                video_out.time_base = fmt.time_base
                ost = video_out
            elif ist.type == "attachment" and out.format.name in ("matroska", "webm"):
                # fonts and cover images of Matroska files: copied whole (they have no packets)
                fname = ist.metadata.get("filename") or f"attachment-{ist.index}"
                out.add_attachment(name=fname, mimetype=ist.mimetype or "application/octet-stream", data=ist.data)
                continue
            else:
                codec = ist.codec_context.name if ist.codec_context else None
                if ist.type not in ("audio", "subtitle", "video", "data") or codec not in supported:
                    what = f"stream {ist.index} ({ist.type} {codec or '?'})"
                    if warn:
                        log.warning("%s cannot be stored in %s and is left out", what, Path(name).suffix or "this container")
                    dropped.append(what)
                    continue
                ost = out.add_stream_from_template(ist)
                ost.time_base = ist.time_base
                copies[ist.index] = ost
            for k, v in ist.metadata.items():
                if k.upper() not in ("DURATION", "ENCODER") and not k.upper().startswith("_STATISTICS"):
                    ost.metadata[k] = v
            try:
                ost.disposition = ist.disposition
            except (AttributeError, TypeError, ValueError):
                pass
        chapters = inp.chapters()
        if chapters:
            out.set_chapters(chapters)
        out.start_encoding()
    except av.FFmpegError as exc:
        out.close()
        raise OutputError(
            f"cannot write a {Path(name).suffix} file from this input ({_reason(exc)}): a copied stream may not fit "
            "this container, try OUT.mkv"
        ) from exc
    return _Output(out, video_out, copies, dropped)


def check_output(src: str | os.PathLike, info: VideoInfo, fmt: StreamFormat, dst: str | os.PathLike) -> list[str]:
    """Write `dst`'s header into memory, so a container that cannot take the streams fails
    before the upscaling, not after it. Warns about (and returns) the streams that would
    be left out; `assemble` then leaves them out quietly."""
    with _open_input(src) as inp:
        o = _start_output(inp, info, fmt, io.BytesIO(), str(dst), warn=True)
        o.container.close()
        return o.dropped


def assemble(src: str | os.PathLike, info: VideoInfo, segments: list[Path], dst: str | os.PathLike, fmt: StreamFormat) -> list[str]:
    """Write `dst`: the segments' video plus every other stream of `src` copied packet for
    packet (payloads untouched; only packets of size 0 are skipped), container and stream
    metadata, dispositions, attachments and chapters. Streams the output container cannot
    hold are left out with a warning; the returned list names them."""
    with _open_input(src) as inp:
        try:
            o = _start_output(inp, info, fmt, str(dst), str(dst), warn=False)
        except OSError as exc:
            raise OutputError(f"cannot write {dst}: {exc.strerror}") from exc
        out, video_out, copies, dropped = o.container, o.video, o.copies, o.dropped

        def video_packets() -> Iterator[tuple[float, int, av.Packet, av.stream.Stream]]:
            last_dts = None
            for seg in segments:
                for pts, dts, dur, key, data in read_segment(seg):
                    if dts is not None and last_dts is not None and dts <= last_dts:
                        dts = last_dts + 1  # joins of B-frame segments; dts stays <= pts
                    pkt = av.Packet(data)
                    pkt.pts, pkt.dts, pkt.duration = pts, dts, dur
                    pkt.time_base = fmt.time_base
                    pkt.is_keyframe = key
                    last_dts = dts if dts is not None else last_dts
                    t = dts if dts is not None else pts
                    yield (float((t or 0) * fmt.time_base), 0, pkt, video_out)

        def copied_packets() -> Iterator[tuple[float, int, av.Packet, av.stream.Stream]]:
            if not copies:
                return
            ins = [inp.streams[i] for i in copies]
            last = 0.0
            for pkt in inp.demux(*ins):
                if pkt.size == 0:  # demuxer flush packets; never test dts here (MKV)
                    continue
                t = pkt.dts if pkt.dts is not None else pkt.pts
                if t is not None and pkt.time_base:
                    last = float(t * pkt.time_base)
                yield (last, 1, pkt, copies[pkt.stream.index])

        n = 0
        try:
            for _, _, pkt, ost in heapq.merge(video_packets(), copied_packets(), key=lambda x: (x[0], x[1])):
                pkt.stream = ost
                out.mux(pkt)
                n += 1
            out.close()  # writes the trailer (the MP4 index)
        except av.FFmpegError as exc:
            raise OutputError(f"cannot write {dst}: {_reason(exc)}") from exc
        except OSError as exc:
            raise OutputError(f"cannot write {dst}: {exc.strerror} (disk full?)") from exc
        finally:
            out.close()
        log.debug("muxed %d packets into %s", n, dst)
    return dropped
