"""The pieces of `vsr upscale` (`vsr.pipelines.transcode.upscale_video`) around its
top-to-bottom job: the result, the engine and encoder options, the default segment
length, `--start`/`--duration` as source frames, the shortfall warning for a damaged or
truncated input, progress, and Ctrl-C/SIGTERM deferred while the output is muxed.
"""
from __future__ import annotations

import bisect
import contextlib
import dataclasses
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

from vsr import io
from vsr.errors import InputError, UsageError

log = logging.getLogger(__name__)

# Default segment length: a quarter of the video, between 1 and 4 seconds. A segment is what
# Ctrl-C can lose and what a resume redoes; each one starts with a keyframe from a fresh
# encoder, which costs size: on the 4 s sample at 2x (x264 crf 18, benchmarks/segment_cost.py)
# 1 s segments are 7.6% bigger than one segment, 2 s 2.5%, 0.5 s 25%. So a short clip is
# still cut into 4 pieces (the sample: 1 s each) and a long video into 4 s ones.
SEGMENT_SECONDS = (1.0, 4.0)
SEGMENTS_PER_VIDEO = 4

Progress = Callable[[dict], None]


@dataclass(frozen=True)
class Result:
    """What `upscale_video` did. frames: frames in OUT; resumed_frames: of those, how many
    came from an interrupted run's segments; seconds: the whole call (probe, model load,
    upscaling, muxing); fps: frames this run upscaled divided by `seconds`."""

    output: Path
    frames: int
    resumed_frames: int
    seconds: float
    fps: float
    size: tuple[int, int]
    dropped_streams: tuple[str, ...] = ()
    previews: tuple[Path, ...] = ()
    declared_frames: int | None = None  # what the input declares (for --start/--duration: that part)
    warning: str | None = None  # why fewer frames than declared were written (truncated or damaged input)


# ------------------------------------------------------------------------ library call
def build_upscaler(model: str | None = None, config: Any = None) -> Any:
    """The engine's `Upscaler` for `model` and an `EngineConfig` (or dict, or None)."""
    from vsr.config import EngineConfig
    from vsr.engine import Upscaler

    if isinstance(config, dict):
        config = EngineConfig.from_dict(config)
    return Upscaler.from_pretrained(model, config=config or EngineConfig())


@dataclasses.dataclass(frozen=True)
class EncodeOptions:
    """What the caller asks of the video encoder; None means vsr's choice for the input.

    Kept apart from the resolved `io.EncoderSettings` because the defaults depend on
    the input (10-bit in gives 10-bit out) and are only known after probing it.
    options: extra codec options (`--encoder-opt k=v`), passed to FFmpeg verbatim.
    """

    codec: str | None = None
    crf: float | None = None
    preset: str | None = None
    pix_fmt: str | None = None
    ten_bit: bool = False
    options: dict[str, str] | tuple[tuple[str, str], ...] = ()

    def settings(self, info: io.VideoInfo, dst: str | Path | None = None) -> io.EncoderSettings:
        """Defaults: the codec for dst's container (`io.default_codec`: libx264, VP9 in
        .webm); crf 18; preset medium for x264/x265; yuv420p, or the codec's 10-bit 4:2:0
        format when asked (`--10bit`) or when the input has more than 8 bits."""
        if self.codec is None:
            return dataclasses.replace(self, codec=io.default_codec(dst)).settings(info)
        io.check_codec(self.codec)
        io.check_crf(self.codec, self.crf)
        pix_fmt = self.pix_fmt
        deep = self.ten_bit or info.bit_depth > 8
        if pix_fmt is None and info.alpha:
            pix_fmt = io.alpha_format(self.codec, deep)
        if pix_fmt is None:
            pix_fmt = io.ten_bit_format(self.codec) if deep else "yuv420p"
        if io.has_alpha(pix_fmt) and not (info.alpha and io.holds_alpha(self.codec, pix_fmt)):
            why = "the input has no transparency" if not info.alpha else f"{self.codec} keeps alpha outside its packets"
            raise UsageError(f"--pix-fmt {pix_fmt} has alpha but {why}: it would be filled with opaque values; "
                             "pick a format without alpha")
        if info.alpha and not io.has_alpha(pix_fmt):
            log.warning("the input's transparency is dropped: %s %s has no alpha (keep it with --codec prores_ks "
                        "and OUT.mov, or --codec ffv1 and OUT.mkv)", self.codec, pix_fmt)
        preset = self.preset
        if preset is None and self.codec in ("libx264", "libx265"):
            preset = "medium"
        settings = io.EncoderSettings(
            codec=self.codec,
            crf=18 if self.crf is None else self.crf,
            preset=preset,
            pix_fmt=pix_fmt,
            options=tuple(sorted(dict(self.options).items())),
        )
        io.check_encoder(settings)
        return settings


def _engine_record(upscaler: Any, height: int | None = None, width: int | None = None) -> Any:
    """What the journal records of the engine: its config, with what an `Upscaler` given
    height x width frames computes in place of the "auto" values (steps, back-projection passes, start
    t/T, timesteps, whether a noise predictor ran, tile and overlap), which a new model card or vsr version may change:
    a resume then differs instead of mixing two calibrations in one file, and the same
    values given explicitly (`--consistency 4` for an auto that was 4) match."""
    cfg = getattr(upscaler, "config", None)
    if cfg is None:
        return type(upscaler).__name__
    if hasattr(cfg, "to_dict"):
        record = cfg.to_dict()
    elif dataclasses.is_dataclass(cfg):
        record = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
    else:
        return repr(cfg)
    if height and width and all(hasattr(upscaler, a) for a in ("scale_for", "timesteps_for", "noise_level_for",
                                                                "consistency", "noise")):
        scale = upscaler.scale_for(height, width)
        # device/dtype: the header's `runtime` holds what they resolved to; "auto" here would
        # refuse the --device/--dtype that the runtime refusal asks for
        record.pop("device", None)
        record.pop("dtype", None)
        record.update({
            "tile": int(upscaler.tile), "overlap": int(upscaler.overlap),  # what None/"auto" became
            "steps": int(upscaler.steps), "consistency": int(upscaler.consistency),
            "noise_level": None if cfg.timesteps is not None else round(upscaler.noise_level_for(scale), 6),
            "timesteps": [int(t) for t in upscaler.timesteps_for(scale)],
        })
        # "auto" on a model without a predictor is "off": record what ran, in the option's terms
        record["noise_predictor"] = "off" if getattr(upscaler.noise, "predictor", None) is None else "on"
    return record

def default_segment_frames(info: io.VideoInfo, frames: int | None) -> int:
    """Frames per segment when not given: a quarter of the video's `frames`, between
    `SEGMENT_SECONDS` (1 and 4 s; see there for what a segment costs)."""
    if not info.rate:
        return 100
    rate = float(info.rate)
    seconds = frames / rate / SEGMENTS_PER_VIDEO if frames else SEGMENT_SECONDS[1]
    return max(1, round(min(max(seconds, SEGMENT_SECONDS[0]), SEGMENT_SECONDS[1]) * rate))


def frame_span(
    source: str, info: io.VideoInfo, start: float | None, duration: float | None
) -> tuple[tuple[int, int | None], tuple[Fraction, Fraction | None] | None, io.FrameIndex | None]:
    """The source frames [first, stop) that `--start`/`--duration` select, the window of
    source time (t0, t1) the output is cut from (t0 becomes 0; None: the whole input,
    shifted by its start time), and the frame index read to find them (None when both
    are None: nothing was read).

    As FFmpeg's `-ss`/`-t`, times are seconds from the input's start. Frame-exact: the first
    frame is the first one shown at or after `start` and the last is the last one shown
    before `start + duration`; `io.decode` seeks to the keyframe at or before the first
    frame and converts only the frames from there on, so a late start costs at most one
    GOP of decoding.
    """
    if start is None and duration is None:
        return (0, None), None, None
    if start is not None and not (math.isfinite(start) and start >= 0):
        raise UsageError(f"--start must be a number of seconds >= 0, got {start:g}")
    if duration is not None and not (math.isfinite(duration) and duration > 0):
        raise UsageError(f"--duration must be a number of seconds above 0, got {duration:g}")
    index = io.scan(source, info)
    origin = info.start + Fraction(start or 0)
    if index.pts:
        times = [p * info.time_base for p in index.pts]
    else:  # no timestamps (raw .h264): frame k is shown at k / rate, as `io.decode` numbers them
        rate = info.rate or Fraction(io.DEFAULT_RATE)
        n = info.frames or sum(1 for _ in io.decode(source, info))
        times = [info.start + Fraction(k) / rate for k in range(n)]
    half_tick = info.time_base / 2  # a time given in decimals lands on the frame it names
    first = bisect.bisect_left(times, origin - half_tick)
    if first >= len(times):
        raise UsageError(f"--start {start} is past the end of {source} (its last frame is at "
                         f"{float(times[-1] - info.start):.3f} s)")
    stop = len(times) if duration is None else bisect.bisect_left(times, origin + Fraction(duration) - half_tick)
    stop = max(stop, first + 1)
    t1 = times[stop] if stop < len(times) else None
    return (first, stop), (times[first], t1), index


class PresentFrames(NamedTuple):
    """What `present_frames` found: the frames to expect (None: unknown), whether the
    video ends before its declared duration, and the frame index read to tell (None when
    none was read)."""

    expected: int | None
    ends_early: bool
    index: io.FrameIndex | None


def present_frames(source: str, info: io.VideoInfo, index: io.FrameIndex | None) -> PresentFrames:
    """For a container without a frame count of its own (Matroska, WebM, MPEG-TS; MP4's
    sample table is exact): the frames to expect, whether the video ends early and the
    frame index read to tell (`PresentFrames`).

    duration x rate is no count for a variable frame rate (6 frames over 0.42 s "declare"
    10 at a nominal 24 fps), so the frames are counted in the demux-only index
    (`io.scan`, no decoding) and truncation is judged by timestamps: the video ends early
    when its last pts plus one frame spacing (the last one, at least 1 / rate) falls more
    than two such spacings before the duration the file declares (the video track's own,
    `VideoInfo.duration`). Then the frames to expect stay duration x rate, what the whole
    file would have had. A URL is not read twice for this, nor is a file the demuxer
    cannot read to its end: (info.frames, False, index)."""
    declared = PresentFrames(info.frames, False, index)
    if info.frames_exact or io.is_url(source):
        return declared
    try:
        index = index or io.scan(source, info)
    except InputError:  # damaged past some point: the decode reports where
        return declared
    pts = index.pts
    if not pts:
        return declared._replace(index=index)
    tb, rate = info.time_base, info.rate
    spacing = max((pts[-1] - pts[-2]) * tb if len(pts) > 1 else Fraction(0), 1 / rate if rate else Fraction(0))
    end = pts[-1] * tb - info.start + spacing
    early = bool(info.duration and spacing and Fraction(info.duration) - end > 2 * spacing)
    return PresentFrames(info.frames if early else len(pts), early, index)


def shortfall(written: int, declared: int | None, exact: bool, damage: list[str], ends_early: bool = False) -> str | None:
    """The warning for a video that ends before the frames its container declares (a
    truncated file), whose timestamps end before its declared duration (`ends_early`, see
    `present_frames`) or lost frames to damaged packets; None when all is well. A
    declared count that is not the container's own (counted packets, duration x rate) may
    be off by a frame or two: only a bigger shortfall counts there."""
    missing = declared - written if declared else 0
    slack = 0 if exact else max(1, (declared or 0) // 20)
    if not damage and not ends_early and missing <= slack:
        return None
    skipped = sum(1 for d in damage if d.startswith("a damaged packet"))
    why = [d for d in damage if not d.startswith("a damaged packet")]
    if skipped:
        why.insert(0, f"{skipped} damaged packet{'s' if skipped > 1 else ''} could not be decoded")
    if (missing > 0 or ends_early) and not why:
        why.append("the input ends early (truncated or damaged)")
    count = f"{written} of {declared} declared frames" if declared else f"{written} frames"
    return f"wrote {count}: {'; '.join(why)}"


def _progress(progress: Progress | None, start: int, total: int | None) -> Callable[[int], None] | None:
    """run_chunk's per-frame hook -> the progress dicts `upscale_video` documents."""
    if progress is None:
        return None
    t0 = time.perf_counter()

    def on_frame(index: int) -> None:
        done = index + 1
        elapsed = time.perf_counter() - t0
        fps = (done - start) / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / fps if total and fps > 0 and total >= done else None
        progress({"frames_done": done, "total": total, "fps": fps, "eta_s": eta, "elapsed_s": elapsed})

    return on_frame

class _Flag:
    """Whether a deferred SIGINT/SIGTERM arrived (truthy once one did)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[_Flag]:
    """Within the block, SIGINT and SIGTERM are recorded instead of raising (the caller
    checks the flag at a safe point); the previous handlers come back after it. Only the
    main thread can set handlers: elsewhere signals are not delivered anyway."""
    flag = _Flag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def record(signum: int, frame: Any) -> None:
        flag.signum = signum

    old = {sig: signal.signal(sig, record) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
