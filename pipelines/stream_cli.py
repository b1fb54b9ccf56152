"""`vsr stream`'s command line: arguments, signals, statistics lines and the summary
(the stream itself is `pipelines/stream.py`; docs/streaming.md is the reference)."""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from vsr.pipelines.stream import MAX_PIXELS, stream_video, summary
from vsr.pipelines.upscale_cli import (  # shared with vsr upscale
    _key_value,
    add_model_args,
    add_size_args,
    engine_config_from_args,
)

from vsr.cli import signals_handled
from vsr.errors import EXIT_OK, OutputError, UsageError


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
    g.add_argument("--realtime", action="store_true",
                   help="read IN no faster than its timestamps, as FFmpeg's -re: for a file or a pipe that is not "
                        "live (read as fast as it decodes otherwise, it leaves the ladder on the fast path)")
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

    with signals_handled((signal.SIGTERM, signal.SIGINT), on_signal):
        return _run_cli(args, stop, on_loaded)


def _run_cli(args: argparse.Namespace, stop: threading.Event, on_loaded: Callable[[], None]) -> int:
    from vsr.io import merge_encoder_options, route_ffmpeg_logs
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
        pix_fmt=args.pix_fmt, options=tuple(merge_encoder_options(args.encoder_opt).items()),
    )
    given_tune = dict(encoding.options).get("tune")
    if encoding.tune and given_tune is not None and given_tune != encoding.tune:
        logging.getLogger(__name__).warning(
            "--encoder-opt tune=%s replaces --tune %s%s", given_tune, encoding.tune,
            " (the encoder may now hold frames back: more latency)" if encoding.tune == "zerolatency" else "")
    try:
        result = stream_video(
            args.input, args.output, model=args.model, config=engine_config_from_args(args), target=args.target,
            size=args.size, fit=args.fit, scale=args.scale, deinterlace=args.deinterlace, encoding=encoding,
            format=args.format, max_latency=args.max_latency, ladder=args.ladder == "on", timeout=args.timeout,
            max_pixels=args.max_pixels, stats=stats, stop=stop, overwrite=args.overwrite, on_loaded=on_loaded,
            realtime=args.realtime,
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
