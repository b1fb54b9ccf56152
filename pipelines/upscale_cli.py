"""`vsr upscale IN OUT`: the command line over `vsr.pipelines.transcode.upscale_video`
(arguments, progress bar or JSON lines, SIGTERM as an interrupt, one summary line).
docs/cli.md is the reference; `engine_config_from_args` and the argument helpers are
shared with the other commands that take engine options."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any

from vsr import io
from vsr.cli import signals_handled
from vsr.errors import EXIT_OK, UsageError
from vsr.pipelines.transcode import EncodeOptions, Progress, upscale_video
from vsr.targets import PRESETS



# ------------------------------------------------------------------------ command line
def summary_line(result) -> str:
    """The line `vsr upscale` prints when done. After a resume it says how many frames came
    from the work folder: the seconds and frames/s are this run's alone (model loading
    included)."""
    w, h = result.size
    new = result.frames - result.resumed_frames
    done = f"{result.frames} frames"
    if result.resumed_frames:
        done += f" ({result.resumed_frames} resumed, {new} upscaled now)" if new else " (all resumed)"
    rate = f" ({result.fps:.2f} frames/s)" if new else ""
    return f"wrote {result.output}: {done}, {w}x{h}, {result.seconds:.1f} s{rate}"


def _key_value(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    k, v = text.split("=", 1)
    if not k.strip():
        raise argparse.ArgumentTypeError(f"expected key=value with a key, got {text!r}")
    return k.strip(), v.strip()


def _auto_or(kind: type, expected: str):
    """An argparse type: 'auto', or `kind(text)`; otherwise a usage error naming `expected`."""

    def parse(text: str):
        if text == "auto":
            return text
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected} or 'auto', got {text!r}") from None

    return parse


_steps = _auto_or(int, "an integer in 1..50")
_noise_level = _auto_or(float, "a number in (0, 1)")
_overlap = _auto_or(int, "an integer number of pixels")
_consistency = _auto_or(int, "an integer in 0..10")


def add_size_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The output-size group shared by `vsr upscale` and `vsr stream` (vsr.targets
    plans the size): --target, --size with --fit, --scale, --deinterlace."""
    g = parser.add_argument_group("size (one of; default --scale 2)")
    g.add_argument("--target", help=f"output height preset, aspect kept: {', '.join(PRESETS)}")
    g.add_argument("--size", metavar="WxH", help="exact output size, see --fit")
    g.add_argument("--fit", choices=("pad", "crop", "stretch"), default="pad", help="how --size treats another aspect ratio (default pad)")
    g.add_argument("--scale", type=float, help="scale factor, e.g. 2 or 2.7")
    g.add_argument("--deinterlace", choices=io.DEINTERLACE, default="auto",
                   help="bwdif, one frame per frame: auto (interlaced streams), on, off (default auto)")
    return g


def add_model_args(
    g: argparse._ArgumentGroup,
    steps_help: str = "DDIM steps after noise injection, 1..50, or auto (default): the count the model's noise "
                      "predictor was calibrated for, 2 without one",
) -> None:
    """The engine options `vsr upscale` and `vsr stream` share (they override --config;
    `engine_config_from_args` reads them)."""
    g.add_argument("--config", metavar="FILE", help="engine config YAML, or a preset name from configs/presets/")
    g.add_argument("--model", help="model folder or hub id (default: the shipped prior)")
    g.add_argument("--steps", type=_steps, help=steps_help)
    g.add_argument("--noise-level", type=_noise_level, help="t/T in (0, 1), or auto (the noise predictor's calibrated start, else the model's PRF curve)")
    g.add_argument("--consistency", type=_consistency, metavar="N",
                   help="back-projection passes per step so the output downscales to the input, 0..10 (0 = off), or "
                        "auto (default): the count the model's noise predictor was calibrated with, 1 without one")
    g.add_argument("--tile", type=int,
                   help="tile size in pixels, a multiple of the model's downsampling factor (default: the model's crop)")
    g.add_argument("--overlap", type=_overlap,
                   help="pixels neighbouring tiles share, at most half the tile (default auto: 32, or half a smaller tile)")
    g.add_argument("--batch", type=int, help="tiles per model call (memory)")
    g.add_argument("--seed", type=int, help="noise seed")
    g.add_argument("--noise", choices=("shared", "fresh"), help="noise shared by all frames (steady) or fresh per frame")
    g.add_argument("--noise-predictor", choices=("auto", "off"),
                   help="auto: predict the start noise from each frame with the model's noise_predictor/ when it has "
                        "one (InvSR); off: plain Diff-SR (default auto)")
    g.add_argument("--device", help="auto, cpu, cuda, cuda:1, mps")
    g.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"))
    g.add_argument("--allow-pickle", action="store_true",
                   help="load a model folder whose weights are pickle .bin files (they can run code: trusted models only)")


def add_cli(parser: argparse.ArgumentParser) -> None:
    """Declare `vsr upscale`'s arguments (docs/cli.md is the reference)."""
    parser.epilog = (
        "exit codes: 0 done, 1 internal error (rerun with 'vsr --debug upscale ...'), 2 bad arguments or "
        "config, 3 unusable input, 4 output exists or cannot be written, 5 model not found or not loadable, "
        "6 encoder refused, 7 out of memory, 130 interrupted (rerun with --resume). Reference: docs/cli.md"
    )
    parser.add_argument("input", metavar="IN", help="input video (any file FFmpeg reads); opened read-only")
    parser.add_argument("output", metavar="OUT", help="output video; the container follows the extension (.mp4, .mkv, .mov, .webm, .ts)")
    g = add_size_args(parser)
    g = parser.add_argument_group("encoder")
    g.add_argument("--codec", help="video encoder: libx264 (default; libvpx-vp9 for .webm), libx265, libsvtav1, libvpx-vp9, ...")
    g.add_argument("--crf", type=float, help="constant quality (default 18; lower = better and bigger)")
    g.add_argument("--preset", help="encoder speed preset (default medium for x264/x265)")
    g.add_argument("--pix-fmt", help="output pixel format (default yuv420p, 10-bit for 10-bit input, the codec's alpha format "
                        "for input with transparency)")
    g.add_argument("--10bit", dest="ten_bit", action="store_true", help="encode 10-bit (yuv420p10le)")
    g.add_argument("--encoder-opt", metavar="KEY=VALUE", type=_key_value, action="append", default=[],
                   help="extra encoder option, repeatable (e.g. x264-params=aq-mode=3)")
    add_model_args(parser.add_argument_group("model and quality (override --config)"))
    g = parser.add_argument_group("job")
    g.add_argument("--preview", type=int, metavar="N", help="write N side-by-side PNGs beside OUT and exit")
    g.add_argument("--overwrite", action="store_true", help="replace OUT (and an interrupted run's work) if present")
    g.add_argument("--resume", action="store_true", help="continue an interrupted run of the same command")
    g.add_argument("--segment-frames", type=int,
                   help="frames per resumable segment (default: a quarter of the video, 1 to 4 s; --resume: the "
                        "interrupted run's)")
    g.add_argument("--start", type=float, metavar="SECONDS",
                   help="begin at this time of IN (as ffmpeg -ss; frame-exact: the first frame shown at or after it)")
    g.add_argument("--duration", type=float, metavar="SECONDS",
                   help="upscale this many seconds (as ffmpeg -t); the output's timestamps start at 0")
    g.add_argument("--strict", action="store_true",
                   help="a truncated or damaged input is an error (exit 3) instead of a warning")
    g.add_argument("--runner", choices=("local", "ray"), default="local",
                   help="local: this machine (default); ray: spread the job over a Ray cluster's workers")
    g.add_argument("--ray-address", default="auto", metavar="auto|HOST:PORT|local",
                   help="with --runner ray: the cluster to join (default auto: this machine's; local: a private one)")
    g.add_argument("--chunk-seconds", type=float, metavar="SECONDS",
                   help="with --runner ray: video per chunk of work (default: at most 60 s, 4 chunks per worker)")
    g.add_argument("--quiet", action="store_true", help="no progress bar, no summary")
    g.add_argument("--progress", choices=("bar", "json"), default="bar", help="progress as a bar (stderr) or JSON lines (stdout)")


def engine_config_from_args(args: argparse.Namespace) -> Any:
    """EngineConfig from --config with the command-line overrides applied before it is
    validated. The options given are kept on `args` (`_cli_fields`) so that a refused
    value is named as the option the user typed (`vsr.cli`), not as a config field."""
    from vsr.config import EngineConfig

    overrides = {
        "steps": args.steps,
        "noise_level": args.noise_level,
        "consistency": args.consistency,
        "tile": args.tile,
        "overlap": args.overlap,
        "batch": args.batch,
        "seed": args.seed,
        "noise": args.noise,
        "noise_predictor": args.noise_predictor,
        "device": args.device,
        "dtype": args.dtype,
    }
    args._cli_fields = {k: v for k, v in overrides.items() if v is not None}
    return EngineConfig.from_yaml(args.config, **overrides) if args.config else EngineConfig().replace(**overrides)


def _runner(args: argparse.Namespace) -> Any:
    """None (this machine) or the Ray runner --runner/--ray-address/--chunk-seconds ask for."""
    if args.runner == "local":
        if args.chunk_seconds is not None:
            raise UsageError("--chunk-seconds needs --runner ray")
        return None
    from vsr.pipelines.ray_runner import RayRunner

    return RayRunner(address=args.ray_address, chunk_seconds=args.chunk_seconds)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_cli(args: argparse.Namespace) -> int:
    """`vsr upscale`: parse, run with a progress bar or JSON lines, print one summary line."""
    io.route_ffmpeg_logs(verbose=bool(getattr(args, "debug", False)))
    if args.allow_pickle:  # read where the weights are loaded (vsr.models.loading.pickle_allowed)
        os.environ["VSR_ALLOW_PICKLE"] = "1"
    config = engine_config_from_args(args)
    common = dict(model=args.model, config=config, target=args.target, size=args.size, fit=args.fit, scale=args.scale,
                  start=args.start, duration=args.duration,
                  deinterlace=args.deinterlace)
    if args.preview is not None:
        result = upscale_video(args.input, args.output, preview=args.preview, overwrite=args.overwrite, **common)
        if not args.quiet:
            print(f"wrote {len(result.previews)} previews: {', '.join(str(p) for p in result.previews)}")
        return EXIT_OK

    bar = None
    progress: Progress | None = None
    if args.progress == "json":
        def progress(d: dict) -> None:
            print(json.dumps({"event": "progress", **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in d.items()}}), flush=True)
    elif not args.quiet:
        from tqdm import tqdm

        def progress(d: dict) -> None:
            nonlocal bar
            if bar is None:
                bar = tqdm(total=d["total"], initial=d["frames_done"] - 1, unit="frame", dynamic_ncols=True, file=sys.stderr)
            bar.update(d["frames_done"] - bar.n)

    try:
        with signals_handled((signal.SIGTERM,), _raise_interrupt):  # SIGTERM interrupts like Ctrl-C
            result = upscale_video(
                args.input,
                args.output,
                encode=EncodeOptions(
                    codec=args.codec, crf=args.crf, preset=args.preset, pix_fmt=args.pix_fmt, ten_bit=args.ten_bit,
                    options=io.merge_encoder_options(args.encoder_opt),
                ),
                segment_frames=args.segment_frames,
                overwrite=args.overwrite,
                resume=args.resume,
                strict=args.strict,
                progress=progress,
                runner=_runner(args),
                **common,
            )
    finally:
        if bar is not None:
            bar.close()
    if args.progress == "json":
        print(json.dumps({"event": "done", "output": str(result.output), "frames": result.frames,
                          "resumed_frames": result.resumed_frames,
                          "size": list(result.size), "seconds": round(result.seconds, 3), "fps": round(result.fps, 3),
                          "declared_frames": result.declared_frames, "warning": result.warning}), flush=True)
    elif not args.quiet:
        print(summary_line(result))
    return EXIT_OK
