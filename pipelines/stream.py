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

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vsr.pipelines.ladder import Ladder, LadderPolicy
from vsr.pipelines.stream_stages import (
    END,
    FrameRate,
    ModelThread,
    Reader,
    Writer,
    timed,
    warm_up,
)

from vsr.errors import InputError, OutputError, UsageError
from vsr.frame import Frame
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
    realtime: bool = False,
) -> StreamResult:
    """Upscale live `src` into live `dst` until `src` ends or `stop` is set.

    The size, model and config choices are those of `upscale_video`; `encoding` is a
    `vsr.io.live.LiveEncoding` (default: x264 veryfast, zerolatency, CRF 23, keyframes
    every 2 s); `format` overrides the container (default by the scheme: FLV for RTMP,
    MPEG-TS otherwise); a file `dst` that exists is replaced only with `overwrite`.
    `max_latency` is the ladder's budget in seconds; `ladder=False` keeps the configured
    steps whatever it costs. `realtime` reads `src` no faster than its timestamps (FFmpeg's
    `-re`: a file or a pipe that is not live would otherwise be read as fast as it
    decodes, and the ladder would keep to the fast path). `stats` gets a dict every
    `stats_interval` seconds and, once the stream has started, one with "event": "done" at
    the end (`summary`; with "error" when it failed). `on_loaded` is called once the model
    is loaded and warmed up, just before the source is opened (start-up is over: from then
    on `stop` is honoured within 2 s; the CLI stops at once before it). Raises InputError (exit 3) when `src`
    breaks, OutputError when `dst` does, UsageError for a bad option.
    """
    from vsr.io.live import (
        LiveEncoding,
        LiveInput,
        LiveOutput,
        live_format,
        pixel_count,
    )
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
    reader = Reader(src, inq, halt, open_output, realtime=realtime, timeout=timeout, deinterlace=deinterlace,
                    max_pixels=max_pixels)
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
