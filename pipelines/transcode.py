"""`vsr upscale IN OUT`: upscale a whole video, streaming, resumable, everything kept.

The job reads top to bottom (`upscale_video`):
1. probe the input once (`vsr.io.probe`) and plan the output size (`vsr.targets`);
2. check everything a user can get wrong before any work: the encoder and its options,
   the output container, the output path;
3. open the job's journal in a work folder beside OUT (`.OUT.vsr-tmp/`; `--resume`
   continues an interrupted run of the same options after its last finished segment);
4. run the frames not done yet as one chunk (`vsr.jobs.run_chunk`: decode by seeking,
   engine, segment files), journalling each segment as soon as it is durable;
5. `vsr.io.assemble` writes the final container inside the work folder (the segments'
   video plus the source's other streams copied packet for packet), and it is renamed
   onto OUT in one step: OUT is never half-written.

Because the engine's output for a frame depends only on that frame, its index and the
seed (see `vsr.noise`), a resumed file equals an uninterrupted run's.
`upscale_video(src, dst, ...)` is the library call; `add_cli`/`run_cli` are the thin
command-line layer that draws progress.
"""
from __future__ import annotations

import bisect
import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from vsr import io
from vsr.device import runtime_record
from vsr.errors import InputError, Interrupted, OutputError, UsageError
from vsr.frame import Frame
from vsr.jobs import (
    JOURNAL,
    JOURNAL_VERSION,
    QUEUE_SIZE,
    Job,
    check_output_path,
    open_journal,
    replace_durably,
    run_chunk,
    source_fingerprint,
    temp_dir_for,
    write_new_file,
)
from vsr.jobs.chunk import crop_frame, pad_image
from vsr.jobs.journal import interrupted_header
from vsr.targets import Plan, parse_size, plan_output

log = logging.getLogger(__name__)

__all__ = ["JOURNAL", "JOURNAL_VERSION", "QUEUE_SIZE", "EncodeOptions", "Result", "build_upscaler", "temp_dir_for",
           "upscale_video"]

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

    codec: str = "libx264"
    crf: float | None = None
    preset: str | None = None
    pix_fmt: str | None = None
    ten_bit: bool = False
    options: dict[str, str] | tuple[tuple[str, str], ...] = ()

    def settings(self, info: io.VideoInfo) -> io.EncoderSettings:
        """Defaults: crf 18; preset medium for x264/x265; yuv420p, or the codec's 10-bit
        4:2:0 format when asked (`--10bit`) or when the input has more than 8 bits."""
        io.check_codec(self.codec)
        if self.crf is not None and not (isinstance(self.crf, (int, float)) and math.isfinite(self.crf) and self.crf >= 0):
            raise UsageError(f"--crf must be a finite number >= 0, got {self.crf}")
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


def _engine_record(upscaler: Any) -> Any:
    cfg = getattr(upscaler, "config", None)
    if cfg is None:
        return type(upscaler).__name__
    if hasattr(cfg, "to_dict"):
        return cfg.to_dict()
    if dataclasses.is_dataclass(cfg):
        return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
    return repr(cfg)


def upscale_video(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    upscaler: Any = None,
    model: str | None = None,
    config: Any = None,
    target: str | None = None,
    size: tuple[int, int] | str | None = None,
    fit: str = "pad",
    deinterlace: str = "auto",
    scale: float | None = None,
    encode: EncodeOptions | dict | None = None,
    segment_frames: int | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: Progress | None = None,
    preview: int | None = None,
    start: float | None = None,
    duration: float | None = None,
    strict: bool = False,
    runner: Any = None,
) -> Result:
    """Upscale `src` (a path, or a URL FFmpeg can seek in) into `dst` (container from its
    extension); see the module doc.

    upscaler: an engine `Upscaler` (or anything with `.stream(frames)` and
    `.with_config(size=(w, h))`); None builds one from `model` and `config` (an
    `EngineConfig`, a dict, or None for the defaults). target/size/fit/scale: see
    `vsr.targets.plan_output` (default 2x). deinterlace: "auto" (interlaced streams go
    through FFmpeg's bwdif, one frame per frame), "on" or "off". encode: `EncodeOptions` (or a dict of its
    fields; None: H.264 at crf 18, bit depth kept). progress: called from this thread after each
    frame is encoded with {"frames_done", "total" (an estimate, may be None), "fps", "eta_s",
    "elapsed_s"}. preview: instead of a video, write that many side-by-side PNGs beside
    `dst` (see `_preview`). start/duration: only that part of the video, in seconds
    from the input's start (FFmpeg's `-ss`/`-t`), frame-exact (see `frame_span`); the
    output's timestamps start at 0. segment_frames: None picks `default_segment_frames`
    (with resume: the interrupted run's). Damaged or truncated input: the frames that
    decode are written and `Result.warning` says how many of the declared ones and why;
    strict raises InputError instead. runner: None or "local" (this machine); "ray" (the
    Ray cluster this machine belongs to), or a configured
    `vsr.pipelines.ray_runner.RayRunner`: the same segments, made on the cluster's
    workers (see that module). Raises `vsr.errors.VsrError` subclasses for
    everything a user can fix.
    """
    t0 = time.perf_counter()
    source, dst = os.fspath(src), Path(dst)
    if io.is_live(source):
        raise UsageError(f"{source} is a pipe or live stream: vsr upscale reads its input twice (video, then the "
                         "other streams); save it to a file first")
    name = source.rsplit("/", 1)[-1] if io.is_url(source) else Path(source).name
    # 1. probe once; plan the output
    info = io.probe(source)
    if isinstance(size, str):
        size = parse_size(size)
    width, height = info.upright_size
    plan = plan_output(width, height, sar=info.upright_sar, target=target, size=size, scale=scale, fit=fit)  # type: ignore[arg-type]
    span, window, index = frame_span(source, info, start, duration)
    if preview is not None:
        up = upscaler if upscaler is not None else build_upscaler(model, config)
        paths = _preview(source, dst, preview, info, plan, up.with_config(size=plan.scaled), overwrite, deinterlace,
                         span)
        seconds = time.perf_counter() - t0
        return Result(dst, len(paths), 0, seconds, len(paths) / seconds, plan.out, previews=tuple(paths))
    # 2. everything a user can get wrong fails here, before any work
    if isinstance(encode, dict):
        try:
            encode = EncodeOptions(**encode)
        except TypeError as exc:
            raise UsageError(f"encode: {exc}; fields are {', '.join(f.name for f in dataclasses.fields(EncodeOptions))}") from None
    settings = (encode or EncodeOptions()).settings(info)
    check_output_path(source, dst, overwrite)
    fmt = io.StreamFormat(
        settings=settings,
        width=plan.out[0],
        height=plan.out[1],
        time_base=info.time_base,
        rate=info.rate,
        colour=info.colour,
        hdr=info.hdr,
        global_header=io.needs_global_header(dst),
    )
    io.check_encoder_opens(fmt)
    io.check_output(source, info, fmt, dst)
    declared = (span[1] - span[0]) if span[1] is not None else info.frames
    if segment_frames is None:
        old = interrupted_header(temp_dir_for(dst)) if resume else None
        segment_frames = old.get("segment_frames") if old else None
        if not isinstance(segment_frames, int):
            segment_frames = default_segment_frames(info, declared)
    if segment_frames < 1:
        raise UsageError(f"--segment-frames must be at least 1, got {segment_frames}")
    up = upscaler if upscaler is not None else build_upscaler(model, config)
    up = up.with_config(size=plan.scaled)
    runtime = None
    if runner is not None and runner != "local":  # the workers resolve --device/--dtype, not this machine
        from vsr.pipelines.ray_runner import resolve_runner

        runner = resolve_runner(runner)
        runtime = runner.runtime(up)
    elif callable(getattr(up, "denoiser", None)):
        # resolve --device/--dtype once, now: a bad one fails before the work folder exists, and
        # the journal records what "auto" became, so a resume cannot mix precisions in one file
        den = up.denoiser()
        runtime = runtime_record(den.device, den.dtype)
    # 3. the journal: a fresh one, or the interrupted run's (same options only)
    header = {
        "version": JOURNAL_VERSION,
        "source": source_fingerprint(source),
        "plan": dataclasses.asdict(plan),
        "deinterlace": deinterlace,
        "encoder": dataclasses.asdict(settings),
        "engine": _engine_record(up),
        "segment_frames": segment_frames,
        "span": list(span),
        "output": dst.name,
        "runtime": runtime,
    }
    header = json.loads(json.dumps(header, default=str))  # tuples -> lists, as read back
    folder = temp_dir_for(dst)
    state = open_journal(folder, header, resume=resume, overwrite=overwrite)
    damage: list[str] = []  # what the decoder skipped (damaged input), in its words
    try:  # the work folder stays locked until the job ends, however it ends
        log.info(
            "%s: %dx%d -> %dx%d, about %s frames, %s %s, segments of %d frames%s",
            name, width, height, *plan.out, declared or "?", settings.codec, settings.pix_fmt, segment_frames,
            f", resuming after frame {state.frames}" if state.frames else "",
        )
        resumed = state.frames
        # 4. the frames not done yet, as one chunk
        if not state.done:
            job = Job(source, info, plan, fmt, up, folder, segment_frames, deinterlace,
                      index=index if index is not None or not resumed else io.scan(source, info), span=span)
            if runner is None or runner == "local":
                run_chunk(job, (resumed, None), on_segment=state.append, on_frame=_progress(progress, resumed, declared),
                          on_error=damage.append)
            else:  # the same segments from a cluster's workers, journalled here as they arrive
                runner.run(job, state, progress=progress, total=declared, on_error=damage.append)
            state.append({"done": True, "segments": len(state.segments), "frames": state.frames})
        if state.frames == 0:
            shutil.rmtree(folder, ignore_errors=True)
            state.close()
            raise InputError(f"{source} has no decodable video frames")
        warning = shortfall(state.frames, declared, info.frames_exact or span[1] is not None, damage)
        if warning and strict:
            shutil.rmtree(folder, ignore_errors=True)
            state.close()
            raise InputError(f"{name}: {warning} (--strict)")
        if warning:
            log.warning("%s", warning)
        # 5. the final container, moved onto OUT in one step. Ctrl-C/SIGTERM wait until the
        #    container is whole: before the rename they leave the work folder (resumable, all
        #    segments done), after it a complete OUT; never a half-muxed file or a lost job
        staged = folder / dst.name
        with deferred_interrupts() as interrupted:
            if os.path.lexists(staged):
                os.unlink(staged)
            dropped = io.assemble(source, info, [folder / s["file"] for s in state.segments], staged, fmt,
                                  window=window)
            if interrupted:
                staged.unlink(missing_ok=True)
                raise KeyboardInterrupt
            replace_durably(staged, dst)
            shutil.rmtree(folder, ignore_errors=True)
            state.close()
        if interrupted:
            raise Interrupted(f"interrupted after {dst} was complete: nothing to resume")
    finally:
        state.close()
    seconds = time.perf_counter() - t0
    new = state.frames - resumed
    return Result(
        output=dst,
        frames=state.frames,
        resumed_frames=resumed,
        seconds=seconds,
        fps=new / seconds if seconds > 0 else 0.0,
        size=plan.out,
        dropped_streams=tuple(dropped),
        declared_frames=declared,
        warning=warning,
    )


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
    for what, value in (("--start", start), ("--duration", duration)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise UsageError(f"{what} must be a number of seconds >= 0, got {value}")
    if duration is not None and duration <= 0:
        raise UsageError(f"--duration must be above 0 seconds, got {duration}")
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


def shortfall(written: int, declared: int | None, exact: bool, damage: list[str]) -> str | None:
    """The warning for a video that ends before the frames its container declares (a
    truncated file) or lost frames to damaged packets; None when all is well. A declared
    count that is only duration x rate (Matroska, MPEG-TS) may be off by a frame or two:
    only a bigger shortfall counts there."""
    missing = declared - written if declared else 0
    slack = 0 if exact else max(1, (declared or 0) // 20)
    if not damage and missing <= slack:
        return None
    skipped = sum(1 for d in damage if d.startswith("a damaged packet"))
    why = [d for d in damage if not d.startswith("a damaged packet")]
    if skipped:
        why.insert(0, f"{skipped} damaged packet{'s' if skipped > 1 else ''} could not be decoded")
    if missing > 0 and not why:
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


def _preview(
    src: str, dst: Path, count: int, info: io.VideoInfo, plan: Plan, up: Any, overwrite: bool, deinterlace: str = "auto",
    span: tuple[int, int | None] = (0, None),
) -> list[Path]:
    """Write `count` frames, evenly spread over the video (over `span`'s frames), as
    side-by-side PNGs beside `dst` (`<stem>.preview-NN.png`): left the input resized
    bicubically to the output size, labelled "bicubic", right vsr's output, labelled "vsr".
    10-bit sources give 16-bit PNGs."""
    import cv2

    if count < 1:
        raise UsageError(f"--preview needs at least 1 frame, got {count}")
    if not dst.parent.is_dir() or not os.access(dst.parent, os.W_OK):
        raise OutputError(f"output folder {dst.parent} does not exist or is not writable")
    paths = [dst.with_name(f"{dst.stem}.preview-{k:02d}.png") for k in range(count)]
    for p in paths:
        if os.path.lexists(p) and not overwrite:
            raise OutputError(f"{p} exists: add --overwrite to replace it")
    first, stop = span
    stop = stop if stop is not None else (info.frames or count)
    wanted = sorted({int(round(x)) for x in np.linspace(first, max(stop - 1, first), count)})
    picked: list[Frame] = []
    for f in io.decode(src, info, start=first, stop=span[1], deinterlace=deinterlace):
        if f.index in wanted:
            picked.append(crop_frame(f, plan.crop))
        if len(picked) == len(wanted):
            break
    written = []
    for f, out, path in zip(picked, up.stream(picked), paths):
        left = cv2.resize(f.image, plan.scaled, interpolation=cv2.INTER_CUBIC)
        pair = np.concatenate([_label(pad_image(left, plan.pad), "bicubic"), _label(pad_image(out.image, plan.pad), "vsr")],
                              axis=1)
        ok, png = cv2.imencode(".png", np.ascontiguousarray(pair[..., ::-1]))
        if not ok:
            raise OutputError(f"cannot encode {path}")
        write_new_file(path, png.tobytes(), replace=overwrite)
        written.append(path)
    return written


def _label(image: np.ndarray, text: str) -> np.ndarray:
    """`image` with `text` in its top-left corner: white on a black outline, sized to the picture."""
    import cv2

    image = np.ascontiguousarray(image)
    peak = int(np.iinfo(image.dtype).max)
    scale = max(0.3, image.shape[0] / 400)
    at = (max(2, round(6 * scale)), max(10, round(22 * scale)))
    thin = max(1, round(scale))
    for colour, thickness in (((0, 0, 0), thin + 2), ((peak, peak, peak), thin)):
        cv2.putText(image, text, at, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness, cv2.LINE_AA)
    return image


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
