"""What the output video is encoded with: codec checks, `EncoderSettings`, `StreamFormat`.

Every check here fails before any work is done, with a `CodecError` naming what to change.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from vsr.errors import CodecError, UsageError
from vsr.frame import Frame
from vsr.io.logs import captured_ffmpeg_logs, ffmpeg_logs_verbose
from vsr.io.source import HDR10, MATRIX, Colour, has_alpha, reason


def _decimal_master_display(x265: str) -> str:
    """x265's integer form (chromaticity in 1/50000, luminance in 1/10000 cd/m2) -> the
    decimal form SVT-AV1 parses (chromaticity 0-1, cd/m2); integers there are misread."""
    parts = re.findall(r"(G|B|R|WP|L)\((\d+),(\d+)\)", x265)
    scale = {"L": 10000}
    return "".join(f"{k}({int(a) / scale.get(k, 50000):g},{int(b) / scale.get(k, 50000):g})" for k, a, b in parts)

# Options that are ':'-separated lists of the encoder's own options (x264-params,
# x265-params, svtav1-params, x264opts): given again, they append.
PARAM_LISTS = ("-params", "opts")


def _joined(first: str, more: str) -> str:
    return ":".join(filter(None, [first, more]))


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
        opts.update(_deterministic_threads(self.codec, opts))
        for k, v in self.options:
            opts[k] = _joined(opts[k], v) if k in opts and k.endswith(PARAM_LISTS) else v
        return opts


# Encoder threads, fixed (`DETERMINISTIC_THREADS`): the same frames give the same bytes on
# any machine, under any load, in a resumed or distributed job. x264 and x265 pick their
# thread count from the CPUs they may use (x264: 1.5 x cores; PyAV also asks FFmpeg for
# x264's *sliced* threads by default, one slice per thread), and that count changes the
# bitstream (slices, the motion search range between frame threads, x265's lookahead
# slices): a `taskset`, a container's CPU limit or another machine gave other bytes.
# Frame threads at a fixed count are deterministic by design in x264 (non-deterministic=0,
# its default, made explicit) and x265; x264's threaded lookahead (sync-lookahead) decides
# frame types on whatever frames have arrived when its thread runs, so it is off. The
# encoder is a small part of vsr's time (the diffusion model is the rest), so a fixed
# count costs little. A user's own `--encoder-opt threads=N` still wins.
DETERMINISTIC_THREADS = 4


# x264's AVX-512 code gave bytes that vary from run to run on this project's CI machines
# (AMD EPYC virtual machines with AVX-512): the same 24 frames on one thread, no other
# option changed, gave 4 different files in 12 runs beside two busy processes, and the
# same file 12 times in 12 with x264 held to AVX2 (`asm=AVX2`: every instruction set up to
# AVX2, FMA3 and BMI2), in any thread mode (pinned to one CPU, AVX-512 was steady too). The
# capped file is not the AVX-512 one: on the 540p sample upscaled to 1080p (preset medium,
# CRF 18) 1,214,359 bytes against 1,214,513, at the same speed (72-85 ms a frame against
# 83-89). Only a CPU that has AVX-512 is capped (forcing AVX2 on one without it would
# crash); elsewhere x264 detects as usual.
def x264_asm_cap(cpu_flags: frozenset[str] | set[str]) -> str | None:
    """The x264 `asm=` value for a CPU with these /proc/cpuinfo flags: "AVX2" when it has
    AVX-512 (avx512f) and everything AVX2 implies in x264 (avx, avx2, fma, bmi1, bmi2,
    lzcnt as abm), else None (x264's own detection)."""
    needed = {"avx", "avx2", "fma", "bmi1", "bmi2", "abm", "sse4_2", "ssse3"}
    if "avx512f" in cpu_flags and needed <= set(cpu_flags):
        return "AVX2"
    return None


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    """This machine's CPU flags from /proc/cpuinfo (Linux x86); empty elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _deterministic_threads(codec: str, opts: dict[str, str]) -> dict[str, str]:
    if codec == "libx264":
        cap = x264_asm_cap(_cpu_flags())
        return {"threads": str(DETERMINISTIC_THREADS), "thread_type": "frame",
                "x264-params": ":".join(filter(None, [
                    "sync-lookahead=0:non-deterministic=0", f"asm={cap}" if cap else None, opts.get("x264-params")]))}
    if codec == "libx265":
        return {"x265-params": ":".join(filter(None, [
            opts.get("x265-params"), f"frame-threads={DETERMINISTIC_THREADS}:lookahead-slices=0"]))}
    return {}


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


def default_codec(dst: str | Path | None = None) -> str:
    """The video encoder when none is named, as FFmpeg picks one per muxer: libx264, or
    for .webm (VP8, VP9 and AV1 only) the first of libvpx-vp9, libsvtav1, libaom-av1 and
    libvpx this FFmpeg has (FFmpeg's webm default is VP9 where libvpx is built in)."""
    if dst is not None and Path(dst).suffix.lower() == ".webm":
        have = video_encoders()
        for name in ("libvpx-vp9", "libsvtav1", "libaom-av1", "libvpx"):
            if name in have:
                return name
    return "libx264"


def check_codec(name: str) -> None:
    """Raise CodecError (one line, what to do) if `name` is not a video encoder here."""
    try:
        codec = av.codec.Codec(name, "w")
    except Exception as exc:  # noqa: BLE001 - PyAV raises several types for unknown names
        have = video_encoders()
        common = [c for c in ("libx264", "libx265", "libsvtav1", "libvpx-vp9", "mpeg4", "ffv1") if c in have]
        raise CodecError(f"unknown encoder {name!r}: try one of {', '.join(common)}") from exc
    if codec.type != "video":
        article = "an" if codec.type[:1] in ("a", "e", "i", "o", "u") else "a"
        raise CodecError(f"{name!r} is {article} {codec.type} encoder, not a video one")


# --crf ranges of the encoders that take one (their own limits: x264 and x265 0-51, the
# AV1 and VP9 encoders 0-63, VP8 4-63); a value outside is refused, not clamped.
CRF_RANGES = {"libx264": (0, 51), "libx265": (0, 51), "libsvtav1": (0, 63), "libaom-av1": (0, 63),
              "libvpx-vp9": (0, 63), "libvpx": (4, 63)}


def check_crf(codec: str, crf: float | None) -> None:
    """UsageError naming --crf when `crf` is not a finite number within `codec`'s range."""
    if crf is None:
        return
    if not (isinstance(crf, (int, float)) and math.isfinite(crf) and crf >= 0):
        raise UsageError(f"--crf must be a finite number >= 0, got {crf}")
    low, high = CRF_RANGES.get(codec, (0, math.inf))
    if not low <= crf <= high:
        raise UsageError(f"--crf {crf:g} is outside {codec}'s range {low}-{high} (lower = better and bigger)")


# x264/x265 check a preset name before FFmpeg's log callback is in place, so a bad one
# prints its own line on stderr: catch it here instead (the lists are the same for both).
X26X_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo")
# ... and x264 its tune and profile names (x264.h's x264_tune_names, x264_profile_names);
# x265 refuses those through FFmpeg's log, which `check_encoder_opens` reads.
X264_TUNES = ("film", "animation", "grain", "stillimage", "psnr", "ssim", "fastdecode", "zerolatency")  # 6 psy ones
X264_PROFILES = ("baseline", "main", "high", "high10", "high422", "high444")


def check_encoder(settings: EncoderSettings) -> None:
    """Raise CodecError if the codec is unknown, cannot take the pixel format, or (x264,
    x265) does not know the preset."""
    check_codec(settings.codec)
    preset = (settings.preset or "").lower()
    if settings.codec in ("libx264", "libx265") and preset and not (preset in X26X_PRESETS or preset.isdigit()):
        raise CodecError(f"{settings.codec} has no preset {settings.preset!r}: use --preset {', '.join(X26X_PRESETS)}")
    if settings.codec == "libx264":
        opts = dict(settings.options)
        tune = opts.get("tune") or ""
        names = [t for t in re.split(r"[,./+-]", tune.lower()) if t]  # x264 splits tunes so
        if any(t not in X264_TUNES for t in names) or len([t for t in names if t in X264_TUNES[:6]]) > 1:
            raise CodecError(f"libx264 cannot take tune {tune!r}: use tune= one of {', '.join(X264_TUNES[:6])}, "
                             "and/or fastdecode, zerolatency (joined by ',')")
        profile = opts.get("profile") or ""
        if profile and profile.lower() not in X264_PROFILES:
            raise CodecError(f"libx264 has no profile {profile!r}: use profile= {', '.join(X264_PROFILES)}")
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


# Encoders whose alpha lives outside the coded picture (VP9's in Matroska BlockAdditional
# side data, x265's in a second layer): vsr's segment files keep only the packets' bytes.
_ALPHA_ASIDE = ("libvpx", "libvpx-vp9", "libx265")


def holds_alpha(codec: str, pix_fmt: str) -> bool:
    """Whether `codec` encoding `pix_fmt` keeps a transparency plane in vsr's output
    (prores_ks yuva444p10le, ffv1/ffvhuff yuva*, png rgba, qtrle argb, utvideo gbrap)."""
    return has_alpha(pix_fmt) and codec not in _ALPHA_ASIDE


def alpha_format(codec: str, deep: bool) -> str | None:
    """The pixel format with alpha `codec` should use for a source with transparency
    (deep: more than 8 bits), or None if it has none vsr can write."""
    if codec in _ALPHA_ASIDE:
        return None
    formats = [f.name for f in (av.codec.Codec(codec, "w").video_formats or ())]
    prefer = ("yuva444p10le", "yuva444p12le", "rgba64be", "rgba64le", "gbrap10le", "yuva444p16le", "yuva420p10le")
    prefer_8 = ("yuva444p", "yuva420p", "rgba", "argb", "bgra", "gbrap", "yuva422p")
    for name in (prefer + prefer_8) if deep else (prefer_8 + prefer):
        if name in formats:
            return name
    return next((f for f in formats if has_alpha(f)), None)


def needs_global_header(dst: str | os.PathLike) -> bool:
    """Whether the container for `dst` (by its extension) keeps codec headers out of band."""
    fmt = output_format(dst)
    return bool(int(fmt.flags) & av.format.Flags.global_header.value)


# Containers that cannot keep a video's timestamps: AVI stores one tick per frame at a
# constant rate and no presentation order (B-frames, a variable frame rate and a source
# time base like 1/90000 all come out wrong).
_NO_TIMESTAMPS = {"avi": "AVI stores neither presentation timestamps nor a variable frame rate"}


def output_format(dst: str | os.PathLike) -> av.format.ContainerFormat:
    """The container for `dst` by its extension; UsageError (a bad argument) when the
    extension names none, or a container that cannot keep the video's timestamps."""
    ext = Path(dst).suffix.lower().lstrip(".")
    names = {"mkv": "matroska", "mov": "mov", "mp4": "mp4", "m4v": "mp4", "webm": "webm", "ts": "mpegts"}
    if ext in _NO_TIMESTAMPS:
        raise UsageError(f"vsr does not write .{ext} files ({_NO_TIMESTAMPS[ext]}): end OUT with .mkv, .mp4, .mov, .webm or .ts")
    try:
        return av.format.ContainerFormat(names.get(ext, ext), "w")
    except Exception as exc:  # noqa: BLE001
        raise UsageError(f"cannot tell the container format from {Path(dst).name!r}: end OUT with .mp4, .mkv, .mov, .webm or .ts") from exc


# MPEG-TS has no codec query in FFmpeg (PyAV's `supported_codecs` lists only its default
# codecs there, MPEG-2 video and MP2 audio): what its muxer takes, from libavformat/mpegtsenc.c
MPEGTS_CODECS = frozenset({
    "aac", "aac_latm", "mp1", "mp2", "mp3", "ac3", "eac3", "dts", "truehd", "opus", "s302m",
    "dvb_subtitle", "dvb_teletext", "arib_caption", "smpte_klv", "timed_id3", "scte_35",
})


def codec_id(cc: Any) -> str | None:
    """The codec of a stream's codec context by its id name (FFmpeg's avcodec_get_name:
    "mp3", "aac"), which muxers' codec lists use, not the decoder's name ("mp3float" for
    MPEG audio, "libdav1d" for AV1); None without a codec context."""
    if cc is None:
        return None
    return getattr(cc.codec, "canonical_name", None) or cc.name


def storable_codecs(out: av.container.OutputContainer) -> set[str]:
    """The codec names `out`'s muxer can store: FFmpeg's codec query, plus what the
    MPEG-TS muxer takes though its query does not say so (`MPEGTS_CODECS`)."""
    extra = MPEGTS_CODECS if out.format.name == "mpegts" else frozenset()
    return set(out.supported_codecs) | extra


@dataclass(frozen=True)
class StreamFormat:
    """Everything the encoder needs to know about the output video: size in pixels, the
    time base of the pts it is given (the source video stream's), the frame rate (None:
    variable/unknown), colour tags and HDR10 metadata, and whether the container keeps
    codec headers out of band (`needs_global_header`)."""

    settings: EncoderSettings
    width: int
    height: int
    time_base: Fraction
    rate: Fraction | None
    colour: Colour
    hdr: HDR10 | None
    global_header: bool


def configure(cc: av.VideoCodecContext, fmt: StreamFormat) -> None:
    """Set `fmt` on an encoder's (or an output stream's) codec context; square pixels."""
    cc.width, cc.height, cc.pix_fmt = fmt.width, fmt.height, fmt.settings.pix_fmt
    cc.time_base = fmt.time_base
    if fmt.rate:
        cc.framerate = fmt.rate
    cc.sample_aspect_ratio = Fraction(1, 1)
    cc.color_primaries, cc.color_trc = fmt.colour.primaries, fmt.colour.transfer
    cc.colorspace, cc.color_range = fmt.colour.matrix if fmt.colour.matrix != 10 else 9, fmt.colour.range
    cc.options = fmt.settings.codec_options(fmt.hdr)


def open_encoder(fmt: StreamFormat, *, global_header: bool) -> av.VideoCodecContext:
    """A fresh, opened encoder for `fmt` (CodecError if FFmpeg refuses it)."""
    try:
        cc = av.CodecContext.create(fmt.settings.codec, "w")
        configure(cc, fmt)
        if global_header:
            cc.flags |= av.codec.context.Flags.global_header
        cc.open()
    except av.FFmpegError as exc:
        raise CodecError(f"{fmt.settings.codec} refused the options {fmt.settings.codec_options(fmt.hdr)}: {reason(exc)}") from exc
    return cc


# What an encoder logs, and goes on, when a value inside its `*-params` string is wrong:
# FFmpeg's libx264.c ("Error parsing option 'k = v'"), libx265.c ("Unknown option: k",
# "Invalid value for k: v"), libsvtav1.c ("Error parsing option k: v"), libaomenc.c
# ("Error setting option k to value v").
_OPTION_REFUSED = re.compile(r"Error parsing option|Unknown option|Invalid value for|Error setting option")


def merge_encoder_options(pairs: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> dict[str, str]:
    """Repeated `--encoder-opt KEY=VALUE` pairs -> one dict, in the order given.

    A `*-params` or `*opts` key (x264-params, x265-params, svtav1-params, x264opts: a
    ':'-separated list of the encoder's own options) given again appends to it, so
    `x264-params=aq-mode=3` and `x264-params=psy-rd=1.0,0.15` both reach x264 (FFmpeg's
    dictionary would keep only the last); another key given twice with different values
    is a UsageError (FFmpeg's command line would silently keep the last).
    """
    merged: dict[str, str] = {}
    for key, value in pairs:
        if key not in merged:
            merged[key] = value
        elif key.endswith(PARAM_LISTS):
            merged[key] = _joined(merged[key], value)
        elif merged[key] != value:
            raise UsageError(f"--encoder-opt {key} given twice ({key}={merged[key]}, {key}={value}): give it once")
    return merged


def check_encoder_opens(fmt: StreamFormat, given: tuple[tuple[str, str], ...] | None = None) -> None:
    """Open (and drop) an encoder with `fmt`, so refused options fail before any work.

    FFmpeg leaves the options an encoder does not know in the dictionary instead of
    failing, and libx264/libx265/libsvtav1 only log a warning for a key or value inside
    their `*-params` string that they cannot parse (x264's `asm=NOPE` then turns off all
    assembly); a user's `--encoder-opt` that nothing reads is a typo or the wrong codec,
    and silently encoding without it is the kind of surprise that costs a night's job.
    Raises CodecError naming the option in both cases, and with the encoder's own words
    when FFmpeg refuses a value outright (`threads=abc`). given: the user's options, for
    the message (default: all of `fmt.settings.options`).
    """
    codec = fmt.settings.codec
    mine = tuple(fmt.settings.options if given is None else given)

    def named(pairs: tuple[tuple[str, str], ...]) -> str:
        return "--encoder-opt " + " ".join(f"{k}={v}" for k, v in pairs) if pairs else "the options vsr sets"

    check = fmt
    if codec == "libx265" and not ffmpeg_logs_verbose():  # x265 prints its refusals to stderr itself
        settings = dataclasses.replace(fmt.settings, options=(*fmt.settings.options, ("x265-params", "log-level=none")))
        check = dataclasses.replace(fmt, settings=settings)
    try:
        with captured_ffmpeg_logs() as lines:
            cc = open_encoder(check, global_header=False)
    except CodecError as exc:
        said = [msg.rstrip(".") for _, _, msg in lines if _OPTION_REFUSED.search(msg)]
        why = "; ".join(said) if said else reason(exc.__cause__ or exc) + (
            "" if ffmpeg_logs_verbose() else " (vsr --debug shows the encoder's own reason)")
        raise CodecError(f"{codec} refused {named(mine)}: {why}") from exc
    said = [msg.rstrip(".") for level, _, msg in lines if level <= av.logging.WARNING and _OPTION_REFUSED.search(msg)]
    if said:
        lists = tuple((k, v) for k, v in mine if k.endswith(PARAM_LISTS))
        raise CodecError(f"{codec} could not parse {named(lists or mine)}: {'; '.join(said)}")
    unused = sorted(set(dict(cc.options)) & {k for k, _ in fmt.settings.options})
    if unused:
        raise CodecError(f"{codec} has no option {', '.join(unused)} (given with --encoder-opt)")


def to_av_frame(frame: Frame, fmt: StreamFormat) -> av.VideoFrame:
    """An RGB Frame (uint8 or uint16) -> the encoder's pixel format with `fmt`'s matrix and
    range, keeping the pts (the frame index where it has none)."""
    img = frame.image
    deep = img.dtype == np.uint16
    if has_alpha(fmt.settings.pix_fmt):  # the frame's alpha, or opaque where it has none
        alpha = frame.alpha if frame.alpha is not None else np.full(img.shape[:2], np.iinfo(img.dtype).max, img.dtype)
        vf = av.VideoFrame.from_ndarray(np.dstack([img, alpha]), format="rgba64le" if deep else "rgba")
    else:
        vf = av.VideoFrame.from_ndarray(img, format="rgb48le" if deep else "rgb24")
    vf = vf.reformat(
        format=fmt.settings.pix_fmt,
        dst_colorspace=MATRIX[fmt.colour.matrix],
        dst_color_range=fmt.colour.range,
        interpolation="BICUBIC",
    )
    vf.pts = frame.pts if frame.pts is not None else frame.index
    vf.time_base = fmt.time_base
    return vf
