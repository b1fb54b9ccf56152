"""`vsr upscale IN OUT`: upscale a whole video, streaming, resumable, everything kept.

The job reads top to bottom (`upscale_video`):
1. probe the input once (`vsr.io.probe`) and plan the output size (`vsr.targets`);
2. check everything a user can get wrong before any work: the encoder and its options,
   the output container, the output path;
3. take the work folder beside OUT (`.OUT.vsr-tmp/`, one process at a time) before the
   model loads, and open the job's journal in it (`--resume` continues an interrupted run
   of the same options after its last finished segment);
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
from pathlib import Path
from typing import Any

from vsr import io
from vsr.device import runtime_record
from vsr.errors import InputError, Interrupted, UsageError
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
from vsr.jobs.journal import interrupted_header
from vsr.jobs.lock import lock_work_folder
from vsr.pipelines.preview import _preview
from vsr.pipelines.transcode_parts import (  # noqa: F401 - re-exported: their old home
    SEGMENT_SECONDS,
    SEGMENTS_PER_VIDEO,
    EncodeOptions,
    Progress,
    Result,
    _engine_record,
    _progress,
    build_upscaler,
    default_segment_frames,
    deferred_interrupts,
    frame_span,
    present_frames,
    shortfall,
)
from vsr.targets import parse_size, plan_output

log = logging.getLogger(__name__)

__all__ = ["JOURNAL", "JOURNAL_VERSION", "QUEUE_SIZE", "EncodeOptions", "Result", "build_upscaler", "temp_dir_for",
           "upscale_video"]


# The command-line option behind each key of the journal's header (`vsr.jobs.journal.diff`
# names it when a --resume is refused); a library caller passes the keyword of that name.
HEADER_OPTIONS = {
    "source": "IN (changed since the interrupted run)", "plan": "--target/--size/--scale/--fit",
    "deinterlace": "--deinterlace", "encoder.codec": "--codec", "encoder.crf": "--crf", "encoder.preset": "--preset",
    "encoder.pix_fmt": "--pix-fmt", "encoder.options": "--encoder-opt", "encoder": "--codec/--encoder-opt",
    "engine.steps": "--steps", "engine.consistency": "--consistency", "engine.noise_level": "--noise-level",
    "engine.timesteps": "--steps/--noise-level", "engine.tile": "--tile", "engine.overlap": "--overlap",
    "engine.batch": "--batch", "engine.seed": "--seed", "engine.noise": "--noise",
    "engine.noise_predictor": "--noise-predictor", "engine.model": "--model", "engine.size": "--target/--size/--scale",
    "engine.scale": "--target/--size/--scale", "engine": "--model/--config", "segment_frames": "--segment-frames",
    "span": "--start/--duration",
}


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
    `vsr.targets.plan_output` (default: the engine config's size or scale, else 2x). deinterlace: "auto" (interlaced streams go
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
    if target is None and size is None and scale is None:  # the engine config's own size/scale, when it has one
        cfg = getattr(upscaler, "config", None) if upscaler is not None else config
        get = cfg.get if isinstance(cfg, dict) else lambda key: getattr(cfg, key, None)
        size, scale = get("size"), get("scale")
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
    settings = (encode or EncodeOptions()).settings(info, dst)
    check_output_path(source, dst, overwrite, resume)
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
    if span[1] is not None:
        declared, ends_early = span[1] - span[0], False
    else:
        present = present_frames(source, info, index)
        declared, ends_early, index = present.expected, present.ends_early, present.index
    if segment_frames is None:
        old = interrupted_header(temp_dir_for(dst)) if resume else None
        segment_frames = old.get("segment_frames") if old else None
        if not isinstance(segment_frames, int):
            segment_frames = default_segment_frames(info, declared)
    if segment_frames < 1:
        raise UsageError(f"--segment-frames must be at least 1, got {segment_frames}")
    # 3. the work folder, taken before the model loads (a second run on this OUT is refused at
    #    once, before it touches the device); then the journal: a fresh one, or the
    #    interrupted run's (same options only)
    folder = temp_dir_for(dst)
    lock, _ = lock_work_folder(folder)
    try:
        up = upscaler if upscaler is not None else build_upscaler(model, config)
        up = up.with_config(size=plan.scaled)
        runtime = None
        if runner is not None and runner != "local":  # the workers resolve --device/--dtype, not this machine
            from vsr.pipelines.ray_runner import resolve_runner

            runner = resolve_runner(runner)
            runtime = runner.runtime(up)
        elif callable(getattr(up, "denoiser", None)):
            # resolve --device/--dtype once, now: a bad one fails before any work, and the journal
            # records what "auto" became, so a resume cannot mix precisions in one file
            den = up.denoiser()
            runtime = runtime_record(den.device, den.dtype)
        header = {
            "version": JOURNAL_VERSION,
            "source": source_fingerprint(source),
            "plan": dataclasses.asdict(plan),
            "deinterlace": deinterlace,
            "encoder": dataclasses.asdict(settings),
            "engine": _engine_record(up, plan.crop[3], plan.crop[2]),
            "segment_frames": segment_frames,
            "span": list(span),
            "output": dst.name,
            "runtime": runtime,
        }
        header = json.loads(json.dumps(header, default=str))  # tuples -> lists, as read back
        state = open_journal(folder, header, resume=resume, overwrite=overwrite, lock=lock, names=HEADER_OPTIONS)
    except BaseException:
        lock.abandon()  # a folder this run made goes with it: nothing was done
        raise
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
        warning = shortfall(state.frames, declared, info.frames_exact or span[1] is not None, damage, ends_early)
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
