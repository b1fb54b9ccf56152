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

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vsr import io
from vsr.errors import InputError, OutputError, UsageError
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
)
from vsr.jobs.chunk import crop_frame, pad_image
from vsr.targets import Plan, parse_size, plan_output

log = logging.getLogger(__name__)

__all__ = ["JOURNAL", "JOURNAL_VERSION", "QUEUE_SIZE", "EncodeOptions", "Result", "build_upscaler", "temp_dir_for",
           "upscale_video"]

SEGMENT_SECONDS = 4.0  # default segment length: a resume redoes at most this much video

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
        pix_fmt = self.pix_fmt
        if pix_fmt is None:
            pix_fmt = io.ten_bit_format(self.codec) if (self.ten_bit or info.bit_depth > 8) else "yuv420p"
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
    `dst` (see `_preview`). Raises `vsr.errors.VsrError` subclasses for everything a user
    can fix.
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
    if preview is not None:
        up = upscaler if upscaler is not None else build_upscaler(model, config)
        paths = _preview(source, dst, preview, info, plan, up.with_config(size=plan.scaled), overwrite, deinterlace)
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
    if segment_frames is None:
        segment_frames = max(1, round(SEGMENT_SECONDS * float(info.rate))) if info.rate else 100
    if segment_frames < 1:
        raise UsageError(f"--segment-frames must be at least 1, got {segment_frames}")
    up = upscaler if upscaler is not None else build_upscaler(model, config)
    up = up.with_config(size=plan.scaled)
    if callable(getattr(up, "denoiser", None)):
        up.denoiser()  # resolve --device/--dtype now: a bad one must fail before the work folder exists
    # 3. the journal: a fresh one, or the interrupted run's (same options only)
    header = {
        "version": JOURNAL_VERSION,
        "source": source_fingerprint(source),
        "plan": dataclasses.asdict(plan),
        "deinterlace": deinterlace,
        "encoder": dataclasses.asdict(settings),
        "engine": _engine_record(up),
        "segment_frames": segment_frames,
        "output": dst.name,
    }
    header = json.loads(json.dumps(header, default=str))  # tuples -> lists, as read back
    folder = temp_dir_for(dst)
    state = open_journal(folder, header, resume=resume, overwrite=overwrite)
    log.info(
        "%s: %dx%d -> %dx%d, about %s frames, %s %s, segments of %d frames%s",
        name, width, height, *plan.out, info.frames or "?", settings.codec, settings.pix_fmt, segment_frames,
        f", resuming after frame {state.frames}" if state.frames else "",
    )
    resumed = state.frames
    # 4. the frames not done yet, as one chunk
    if not state.done:
        job = Job(source, info, plan, fmt, up, folder, segment_frames, deinterlace,
                  index=io.scan(source, info) if resumed else None)
        run_chunk(job, (resumed, None), on_segment=state.append, on_frame=_progress(progress, resumed, info.frames))
        state.append({"done": True, "segments": len(state.segments), "frames": state.frames})
    if state.frames == 0:
        raise InputError(f"{source} has no decodable video frames")
    # 5. the final container, moved onto OUT in one step
    staged = folder / dst.name
    dropped = io.assemble(source, info, [folder / s["file"] for s in state.segments], staged, fmt)
    replace_durably(staged, dst)
    shutil.rmtree(folder, ignore_errors=True)
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
    )


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
    src: str, dst: Path, count: int, info: io.VideoInfo, plan: Plan, up: Any, overwrite: bool, deinterlace: str = "auto"
) -> list[Path]:
    """Write `count` frames, evenly spread over the video, as side-by-side PNGs beside
    `dst` (`<stem>.preview-NN.png`): left the input resized bicubically to the output
    size, right vsr's output. 10-bit sources give 16-bit PNGs."""
    import cv2

    if count < 1:
        raise UsageError(f"--preview needs at least 1 frame, got {count}")
    if not dst.parent.is_dir() or not os.access(dst.parent, os.W_OK):
        raise OutputError(f"output folder {dst.parent} does not exist or is not writable")
    paths = [dst.with_name(f"{dst.stem}.preview-{k:02d}.png") for k in range(count)]
    for p in paths:
        if p.exists() and not overwrite:
            raise OutputError(f"{p} exists: add --overwrite to replace it")
    n = info.frames or count
    wanted = sorted({int(round(x)) for x in np.linspace(0, max(n - 1, 0), count)})
    picked: list[Frame] = []
    for f in io.decode(src, info, deinterlace=deinterlace):
        if f.index in wanted:
            picked.append(crop_frame(f, plan.crop))
        if len(picked) == len(wanted):
            break
    written = []
    for f, out, path in zip(picked, up.stream(picked), paths):
        left = cv2.resize(f.image, plan.scaled, interpolation=cv2.INTER_CUBIC)
        pair = np.concatenate([pad_image(left, plan.pad), pad_image(out.image, plan.pad)], axis=1)
        if not cv2.imwrite(str(path), np.ascontiguousarray(pair[..., ::-1])):
            raise OutputError(f"cannot write {path}")
        written.append(path)
    return written
