"""`vsr stream IN OUT`: upscale a live stream as it comes (docs/streaming.md).

Four threads (`pipelines/stream_stages.py`) and two bounded queues, top to bottom:
1. the reader opens IN (any URL FFmpeg reads, or "-") and queues upright RGB frames and
   the other streams' packets, each stamped with its arrival time; a full queue stops
   the reading (a publisher faster than real time is slowed, memory stays bounded);
2. the main thread upscales each frame at the rung the quality ladder picks
   (`pipelines.ladder`: the configured DDIM steps, fewer, then the fast path), and
   passes the packets on in order; the model runs in a helper thread, so that a stop
   request never waits for a slow frame;
3. the writer encodes (H.264, low latency, a keyframe at least every `keyint` s) and
   muxes into OUT, packets with their own timestamps, and measures each frame's latency
   (arrival to muxed) for the ladder and the statistics.
The end of IN flushes the encoder and returns. A stop request (SIGTERM, SIGINT) switches
to the fast path and goes on reading for up to `STOP_DRAIN` seconds (what the server had
already sent: a server stops its worker when the publisher leaves, often before the last
frames were read), then flushes the encoder and returns. A broken IN raises InputError
after flushing what was done.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vsr.errors import EXIT_OK, InputError, OutputError, UsageError
from vsr.frame import Frame
from vsr.pipelines.ladder import Ladder, LadderPolicy
from vsr.pipelines.stream_stages import END, FrameRate, ModelThread, Reader, Writer, timed, warm_up
from vsr.pipelines.upscale_cli import _key_value, add_model_args, add_size_args, engine_config_from_args  # shared with vsr upscale
from vsr.targets import parse_size, plan_output

log = logging.getLogger(__name__)

STOP_DRAIN = 1.0  # seconds spent on already-read frames after a stop request (fast path)
MAX_PIXELS = 3840 * 2160  # default output size limit: 4K UHD
# Items (frames and packets) read ahead at most: 30 fps video with 48 kHz AAC is 77 items a
# second, so about 4 s, twice the default latency budget; 300 360p RGB frames are 210 MB.
QUEUE_ITEMS = 300


@dataclass
class StreamResult:
    """What a finished stream did. latencies: per output frame, seconds from arrival to muxed."""

    frames: int = 0
    packets: int = 0
    seconds: float = 0.0
    size: tuple[int, int] = (0, 0)
    frames_per_rung: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    stopped: bool = False  # a stop request came (SIGTERM, SIGINT, the caller's event)
    ended: bool = False  # the input ended (the publisher stopped), before or after a stop request
    dropped: int = 0  # frames read but not written (only after a stop request, past STOP_DRAIN)
    rung_costs: dict[str, float | None] = field(default_factory=dict)  # the ladder's last measure per rung (s/frame)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


# ------------------------------------------------------------------------------ rungs
class Rungs:
    """The engines behind the ladder's rungs, best first: the configured steps, each
    fewer step down to 1, then the fast path (`vsr.core.fast`, no model). Without the
    ladder: the configured steps, and the fast path only for draining after a stop."""

    def __init__(self, upscaler: Any, scaled: tuple[int, int], ladder: bool = True):
        steps = upscaler.steps
        counts = list(range(steps, 0, -1)) if ladder else [steps]
        self.scaled = scaled
        self.engines = [upscaler.with_config(size=scaled, steps=k) for k in counts]
        self.names = [f"steps={k}" for k in counts] + ["fast"]  # fast: also what a stop drains with
        self.weights = [float(k) for k in counts] + [0.0]

    def is_fast(self, rung: int) -> bool:
        return rung >= len(self.engines)

    def run(self, rung: int, frame: Frame) -> Frame:
        from vsr.core.fast import fast_upscale

        if self.is_fast(rung):
            return frame.with_image(fast_upscale(frame.image, self.scaled))
        return self.engines[rung](frame)


# ---------------------------------------------------------------------------- the loop
def stream_video(
    src: str,
    dst: str,
    *,
    upscaler: Any = None,
    model: str | None = None,
    config: Any = None,
    target: str | None = None,
    size: str | tuple[int, int] | None = None,
    fit: str = "pad",
    scale: float | None = None,
    deinterlace: str = "auto",
    encoding: Any = None,
    format: str | None = None,
    max_latency: float = 2.0,
    ladder: bool = True,
    timeout: float = 10.0,
    max_pixels: int = MAX_PIXELS,
    stats: Callable[[dict], None] | None = None,
    stats_interval: float = 1.0,
    stop: threading.Event | None = None,
    overwrite: bool = False,
    on_loaded: Callable[[], None] | None = None,
) -> StreamResult:
    """Upscale live `src` into live `dst` until `src` ends or `stop` is set.

    The size, model and config choices are those of `upscale_video`; `encoding` is a
    `vsr.io.live.LiveEncoding` (default: x264 veryfast, zerolatency, CRF 23, keyframes
    every 2 s); `format` overrides the container (default by the scheme: FLV for RTMP,
    MPEG-TS otherwise); a file `dst` that exists is replaced only with `overwrite`.
    `max_latency` is the ladder's budget in seconds; `ladder=False` keeps the configured
    steps whatever it costs. `stats` gets a dict every
    `stats_interval` seconds and, once the stream has started, one with "event": "done" at
    the end (`summary`; with "error" when it failed). `on_loaded` is called once the model
    is loaded and warmed up, just before the source is opened (start-up is over: from then
    on `stop` is honoured within 2 s; the CLI stops at once before it). Raises InputError (exit 3) when `src`
    breaks, OutputError when `dst` does, UsageError for a bad option.
    """
    from vsr.io.live import LiveEncoding, LiveInput, LiveOutput, live_format, pixel_count  # noqa: F401 - LiveInput: annotations
    from vsr.io.source import is_url
    from vsr.jobs.chunk import crop_frame, pad_image

    stop = stop or threading.Event()
    t_start = time.monotonic()
    parsed = parse_size(size) if isinstance(size, str) else size
    # 0. what can be checked before the model loads (seconds on a CPU)
    if not timeout > 0:
        raise UsageError(f"--timeout must be a number of seconds above 0, got {timeout:g}")
    if max_pixels < 1:
        raise UsageError(f"--max-pixels must be at least 1, got {max_pixels}")
    live_format(dst, format)
    if not is_url(src) and not Path(src).is_file():
        raise InputError(f"input not found: {src}")
    if not is_url(dst) and Path(dst).exists() and not overwrite:
        raise OutputError(f"{dst} exists: pass --overwrite to replace it")

    def open_output(live: LiveInput) -> tuple[Any, LiveOutput]:
        # the output plan, checked against the limit before anything is written
        info = live.info
        width, height = info.upright_size
        plan = plan_output(width, height, sar=info.upright_sar, target=target, size=parsed, scale=scale, fit=fit)
        ow, oh = plan.out
        if ow * oh > max_pixels:
            raise UsageError(
                f"{src} is {width}x{height}: the {ow}x{oh} output ({pixel_count(ow * oh)}) is above the "
                f"{pixel_count(max_pixels)} a live stream may have (--max-pixels)"
            )
        return plan, LiveOutput(dst, live, plan.out, encoding or LiveEncoding(), format=format)

    # 1. the model first, then the source: frames that arrived while the weights loaded
    #    would start the stream seconds late (a server keeps no backlog for a late reader anyway)
    if upscaler is None:
        from vsr.pipelines.transcode import build_upscaler

        upscaler = build_upscaler(model, config)
    warm_up(upscaler)
    if on_loaded is not None:
        on_loaded()
    halt = threading.Event()  # the reader stops reading
    inq: queue.Queue = queue.Queue(maxsize=QUEUE_ITEMS)
    reader = Reader(src, inq, halt, open_output, timeout=timeout, deinterlace=deinterlace, max_pixels=max_pixels)
    opened = reader.wait_open(stop)
    if opened is None:  # stopped before the source had a frame
        return StreamResult(stopped=True, seconds=time.monotonic() - t_start)
    info, (plan, out) = opened
    rungs = Rungs(upscaler, plan.scaled, ladder)
    fast = len(rungs.names) - 1
    fps = float(info.rate) if info.rate else 30.0
    control = Ladder(rungs.weights, LadderPolicy(budget=max_latency))
    result = StreamResult(size=plan.out, frames_per_rung={n: 0 for n in rungs.names})
    writer = Writer(out, result, stats, stats_interval, rungs.names, t_start, reader)
    helper = ModelThread()
    rate = FrameRate(fps)
    failure: BaseException | None = None
    stop_at: float | None = None
    calibration: dict | None = None  # the background measure of the cheapest model rung
    calibrate = ladder  # not yet submitted
    first_at: float | None = None
    try:
        while True:
            if calibration is not None and calibration["done"].is_set():
                if "value" in calibration:
                    control.observe(fast - 1, calibration["value"], time.monotonic())
                    log.info("%s costs %.3f s a frame here", rungs.names[fast - 1], calibration["value"])
                calibration = None
            if stop.is_set() and stop_at is None:
                stop_at = time.monotonic()
                result.stopped = True
            if stop_at is not None and time.monotonic() - stop_at > STOP_DRAIN:
                halt.set()
                result.dropped = sum(1 for _, item in reader.drain() if isinstance(item, Frame))
                break
            try:
                arrival, item = inq.get(timeout=0.05)
            except queue.Empty:
                if writer.error is not None:
                    break
                continue
            if item is END:
                result.ended = True
                break
            if isinstance(item, BaseException):
                failure = item
                break
            if writer.error is not None:
                break
            if not isinstance(item, Frame):
                writer.put((arrival, item, None))
                continue
            # 2. one frame: crop, upscale at the ladder's rung, pad
            rate.add(item)
            rung = (control.rung if ladder else 0) if stop_at is None else fast
            t0 = time.monotonic()
            picture = crop_frame(item, plan.crop)
            first_at = first_at or t0
            if calibrate and t0 - first_at >= control.policy.hold and writer.latency < control.policy.calm * max_latency:
                calibrate = False
                # once the stream runs calmly at the fast path, time one frame of the cheapest
                # model rung beside it: the ladder never tries a rung of unknown cost. (A machine
                # that is never calm has no room for a model rung: it is not measured at all.)
                calibration = helper.submit(timed, rungs.run, fast - 1, picture)
            if rungs.is_fast(rung):
                up = rungs.run(rung, picture)
            else:
                box = helper.submit(rungs.run, rung, picture)
                while not box["done"].wait(0.05):
                    if stop.is_set():  # stop: do not wait for a slow frame
                        rung = fast
                        break
                if box["done"].is_set():
                    if "error" in box:
                        raise box["error"]
                    up = box["value"]
                else:
                    up = rungs.run(rung, picture)
            if any(plan.pad):
                up = up.with_image(pad_image(up.image, plan.pad))
            cost = time.monotonic() - t0
            writer.put((arrival, up, rungs.names[rung]))
            if stop_at is None and ladder:
                control.update(cost, max(writer.latency, time.monotonic() - arrival), rate.fps, time.monotonic())
    except BaseException as exc:
        failure = exc
        raise
    finally:
        halt.set()  # the reader stops (at its next item)
        helper.close()  # the model thread ends after the call it may still be in
        writer.finish()
        result.rung_costs = {n: (None if c is None else round(c, 4)) for n, c in zip(rungs.names, control.costs)}
        if stats is not None:  # the statistics end with "done", also when the stream failed
            stats(summary(result, writer.error or failure))
    if writer.error is not None:
        raise writer.error
    if failure is not None:
        raise failure
    return result


def summary(result: StreamResult, error: BaseException | None = None) -> dict:
    """The "done" statistics line of a finished (or failed: "error") stream."""
    lat = sorted(result.latencies) or [0.0]
    done = {
        "event": "done", "frames": result.frames, "packets": result.packets, "seconds": round(result.seconds, 3),
        "fps_out": round(result.fps, 2), "size": list(result.size), "stopped": result.stopped, "input_ended": result.ended,
        "dropped": result.dropped, "latency_mean": round(sum(lat) / len(lat), 3),
        "latency_p95": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 3), "latency_max": round(lat[-1], 3),
        "frames_per_rung": result.frames_per_rung, "rung_cost_s": result.rung_costs,
    }
    if error is not None:
        done["error"] = " ".join(str(error).split())
    return done


# ------------------------------------------------------------------------------- CLI
def add_cli(parser: argparse.ArgumentParser) -> None:
    """Declare `vsr stream`'s arguments (docs/streaming.md is the reference)."""
    parser.epilog = (
        "exit codes: 0 the input ended (or SIGTERM/SIGINT: stopped, encoder flushed), 2 bad arguments or a size "
        "above --max-pixels, 3 the input is unusable or broke (a server can respawn), 4 the output cannot be "
        "written, 5 model, 6 encoder. Reference: docs/streaming.md"
    )
    parser.add_argument("input", metavar="IN", help="live source: rtmp://, srt://, rtsp://, udp://, tcp://, http(s)://, a file, or - (stdin)")
    parser.add_argument("output", metavar="OUT", help="live destination: rtmp:// (FLV), srt:// udp:// tcp:// or - (MPEG-TS), rtsp://, a file")
    g = add_size_args(parser)
    g.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                   help=f"refuse an input or output larger than this many pixels (default {MAX_PIXELS}, 4K UHD)")
    g = parser.add_argument_group("model and quality (override --config; the ladder steps down from here)")
    add_model_args(g, steps_help="DDIM steps of the top rung, 1..50, or auto (default: as in vsr upscale)")
    g.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for the model (default: torch's; 1 on a machine shared with other jobs)")
    g = parser.add_argument_group("live")
    g.add_argument("--format", help="output container (default by scheme: flv for rtmp://, mpegts otherwise)")
    g.add_argument("--max-latency", type=float, default=2.0, metavar="S",
                   help="latency budget in seconds: the quality ladder steps down to stay within it (default 2)")
    g.add_argument("--ladder", choices=("on", "off"), default="on",
                   help="off: always the configured steps, whatever the latency (default on)")
    g.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="a source silent for this long has broken (exit 3; default 10)")
    g.add_argument("--stats", nargs="?", const="-", metavar="FILE",
                   help="JSON lines every second and at the end, to stdout (or FILE, appended)")
    g.add_argument("--log", metavar="FILE", help="append warnings and the final error line to FILE as well "
                   "(servers such as nginx-rtmp discard the worker's stderr)")
    g = parser.add_argument_group("encoder (low latency)")
    g.add_argument("--codec", default="libx264", help="video encoder (default libx264)")
    g.add_argument("--crf", type=float, default=23.0, help="constant quality when no --bitrate (default 23)")
    g.add_argument("--bitrate", help="average bitrate, e.g. 3M (CBR-like: maxrate = bitrate, bufsize = 1 s)")
    g.add_argument("--maxrate", help="peak bitrate (VBV), e.g. 4M; caps --crf too")
    g.add_argument("--bufsize", help="VBV buffer, e.g. 4M (default: one second of --maxrate)")
    g.add_argument("--preset", default="veryfast", help="encoder speed preset (default veryfast)")
    g.add_argument("--tune", default="zerolatency", help="x264/x265 tune (default zerolatency; 'none' for none)")
    g.add_argument("--keyint", type=float, default=2.0, metavar="S", help="longest time between keyframes (default 2 s)")
    g.add_argument("--pix-fmt", default="yuv420p", help="output pixel format (default yuv420p)")
    g.add_argument("--encoder-opt", metavar="KEY=VALUE", type=_key_value, action="append", default=[],
                   help="extra encoder option, repeatable")
    g.add_argument("--overwrite", action="store_true", help="replace OUT when it is an existing file")
    g.add_argument("--quiet", action="store_true", help="no summary line")


def _append(path: str | None, option: str) -> Any:
    """`path` opened for appending, line-buffered (the process may be killed); OutputError
    naming `option` when it cannot be."""
    if not path:
        return None
    try:
        return open(path, "a", buffering=1)
    except OSError as exc:
        raise OutputError(f"cannot write {option} file {path}: {exc.strerror or exc}") from exc


class _LineLog:
    """Append to the --log file, one line at a time (flushed: the process may be killed)."""

    def __init__(self, f: Any):
        self._f = f

    def __call__(self, line: str) -> None:
        if self._f is not None:
            self._f.write(line.rstrip("\n") + "\n")


def run_cli(args: argparse.Namespace) -> int:
    """`vsr stream`: run until the input ends or a signal stops it; one summary line."""
    stop = threading.Event()
    starting = True  # until the model is loaded and warmed up: a stop ends the process at once

    def on_signal(*_: Any) -> None:
        stop.set()
        if starting:  # nothing opened or written yet: `vsr.cli` says "stopped before the stream started", exit 0
            raise KeyboardInterrupt

    def on_loaded() -> None:
        nonlocal starting
        starting = False

    old = {}
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGTERM, signal.SIGINT):
            old[s] = signal.signal(s, on_signal)
    try:
        return _run_cli(args, stop, on_loaded)
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _run_cli(args: argparse.Namespace, stop: threading.Event, on_loaded: Callable[[], None]) -> int:
    from vsr.io import route_ffmpeg_logs
    from vsr.io.live import LiveEncoding

    route_ffmpeg_logs(verbose=bool(getattr(args, "debug", False)))
    if args.allow_pickle:  # read where the weights are loaded (vsr.models.loading.pickle_allowed)
        os.environ["VSR_ALLOW_PICKLE"] = "1"
    if args.max_latency <= 0:
        raise UsageError(f"--max-latency must be positive, got {args.max_latency}")
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    logline = _LineLog(_append(args.log, "--log"))
    if args.log:
        handler = logging.FileHandler(args.log)
        handler.setLevel(logging.WARNING)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
    stats_out = None
    if args.stats is not None:
        # stdout carries the video when OUT is "-": then statistics go to stderr
        stats_out = (sys.stderr if args.output == "-" else sys.stdout) if args.stats == "-" else _append(args.stats, "--stats")

    def stats(d: dict) -> None:
        if stats_out is not None:
            stats_out.write(json.dumps(d) + "\n")
            stats_out.flush()

    encoding = LiveEncoding(
        codec=args.codec, crf=args.crf, bitrate=args.bitrate, maxrate=args.maxrate, bufsize=args.bufsize,
        preset=args.preset, tune=None if args.tune in ("none", "") else args.tune, keyint=args.keyint,
        pix_fmt=args.pix_fmt, options=tuple(args.encoder_opt),
    )
    try:
        result = stream_video(
            args.input, args.output, model=args.model, config=engine_config_from_args(args), target=args.target,
            size=args.size, fit=args.fit, scale=args.scale, deinterlace=args.deinterlace, encoding=encoding,
            format=args.format, max_latency=args.max_latency, ladder=args.ladder == "on", timeout=args.timeout,
            max_pixels=args.max_pixels, stats=stats, stop=stop, overwrite=args.overwrite, on_loaded=on_loaded,
        )
    except Exception as exc:
        logline(f"vsr: {' '.join(str(exc).split())}")
        raise
    finally:
        # the interpreter's last collection walks torch's and diffusers' object graph:
        # seconds on a busy machine, and a stopped worker must be gone within 2 s
        gc.freeze()
    if not args.quiet:
        w, h = result.size
        done = summary(result)
        line = (f"vsr stream: {result.frames} frames {w}x{h}, {result.fps:.1f} frames/s, latency "
                f"{done['latency_mean']:.2f} s mean / {done['latency_max']:.2f} s max, rungs "
                + ", ".join(f"{k} {v}" for k, v in result.frames_per_rung.items()))
        print(line, file=sys.stderr)
        logline(line)
    return EXIT_OK
