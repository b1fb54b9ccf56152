"""Speed breakdown of a vsr run: is the pipeline model-bound?

    python -m benchmarks.speed [--scale 2] [--steps 2] [--model PATH] [--out benchmarks/results]

1. Test clip: the first 24 frames of ``tree.avi`` (320x240, Debian opencv-doc) downscaled
   to 160x120 (MJPEG, written with OpenCV as a fixture), or --source.
2. End to end: `upscale_video` on that clip with the real engine wrapped in a timer that
   splits the engine thread's wall time into *busy* (inside ``Upscaler.stream``), *waiting
   for decode* (the input queue was empty) and *waiting for encode* (the output queue was
   full). The decoder and encoder run in their own threads.
3. Serial stages on the same frames, each timed on its own: decode (`vsr.video.decode`),
   engine resize (`vsr.engine.resize`), noise draws, the model (the denoiser called on as
   many tile batches as the sampler calls it), and tiling/blending + DDIM arithmetic (the
   engine's time minus resize, noise and model); encode is the I/O-only floor: the same
   `upscale_video` call with a bicubic stand-in for the engine.

Writes ``speed.json`` and ``speed.md`` into --out.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np

from benchmarks.quality import CACHE, source_path

log = logging.getLogger(__name__)


class Resizer:
    """A stand-in engine for `upscale_video`: OpenCV resize to the planned size.

    The I/O-only floor: the same pipeline with a nearly free engine.
    """

    def __init__(self, interpolation: int, size: tuple[int, int] | None = None):
        self.interpolation, self.size = interpolation, size

    def with_config(self, size: tuple[int, int], **_: object) -> "Resizer":
        return Resizer(self.interpolation, tuple(size))

    def stream(self, frames: Iterable) -> Iterator:
        for f in frames:
            yield f.with_image(cv2.resize(f.image, self.size, interpolation=self.interpolation))


class TimedEngine:
    """Wraps an engine for `upscale_video` and splits the engine thread's time.

    wait_in: time spent waiting for the next decoded frame; busy: time inside the
    engine's generator (model, tiles, resize); wait_out: time the caller held a result
    before asking for the next one (putting it on a full encode queue).
    """

    def __init__(self, engine, stats: dict | None = None):
        self.engine = engine
        self.stats = stats if stats is not None else {"wait_in": 0.0, "busy": 0.0, "wait_out": 0.0, "frames": 0}

    def with_config(self, **overrides) -> "TimedEngine":
        return TimedEngine(self.engine.with_config(**overrides), self.stats)

    def stream(self, frames: Iterable) -> Iterator:
        st = self.stats

        def timed_input() -> Iterator:
            it = iter(frames)
            while True:
                t = time.perf_counter()
                f = next(it, None)
                dt = time.perf_counter() - t
                st["wait_in"] += dt
                st["busy"] -= dt  # this wait happens inside next(gen) below: not busy
                if f is None:
                    return
                yield f

        gen = self.engine.stream(timed_input())
        while True:
            t = time.perf_counter()
            try:
                out = next(gen)
            except StopIteration:
                st["busy"] += time.perf_counter() - t
                return
            st["busy"] += time.perf_counter() - t
            st["frames"] += 1
            t = time.perf_counter()
            yield out
            st["wait_out"] += time.perf_counter() - t


def make_clip(dst: Path, width: int = 160, height: int = 120, frames: int = 24) -> Path:
    """The first `frames` frames of tree.avi (320x240, Debian opencv-doc) downscaled to
    width x height (INTER_AREA), written once as lossless-ish MJPEG with OpenCV: a fixture
    file, not vsr output, so it does not go through vsr.video's encoder."""
    if dst.is_file():
        return dst
    from vsr.video import decode  # noqa: PLC0415

    dst.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"MJPG"), 25, (width, height))
    for f, _ in zip(decode(source_path("megamind").parent / "tree.avi"), range(frames)):
        small = cv2.resize(f.image, (width, height), interpolation=cv2.INTER_AREA)
        writer.write(cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    writer.release()
    return dst


def _time(fn, repeat: int = 1) -> float:
    """CPU seconds (this process, all threads) per call: on a shared machine wall time
    measures the neighbours as much as the code."""
    t = time.process_time()
    for _ in range(repeat):
        fn()
    return (time.process_time() - t) / repeat


def engine_breakdown(up, frames: list[np.ndarray]) -> dict[str, float]:
    """Seconds per frame in the engine's stages, timed serially on `frames` (HxWx3 uint8)."""
    import torch  # noqa: PLC0415

    from vsr.engine import resize  # noqa: PLC0415
    from vsr.noise import make_noise  # noqa: PLC0415
    from vsr.tiling import plan_tiles  # noqa: PLC0415

    n = len(frames)
    h, w = frames[0].shape[:2]
    H, W = up.output_size(h, w)
    ts = up.timesteps_for(math.sqrt((H / h) * (W / w)))
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255.0
    list(up.stream(frames[:1]))  # warm-up: lazy loading, first-call allocations
    total = _time(lambda: list(up.stream(frames))) / n
    t_resize = _time(lambda: resize(x, H, W)) / n
    noise = make_noise(up.config.noise, up.config.seed)
    t_noise = _time(lambda: [noise(i, H, W) for i in range(n)]) / n
    # the model on as many tiles as the sampler evaluates: tiles per frame x steps
    den, tile = up.denoiser(), up.tile
    n_tiles = len(plan_tiles(max(H, tile), max(W, tile), tile, up.overlap))
    crops = torch.randn(min(n_tiles * n, up.config.batch), 3, tile, tile)
    calls = math.ceil(n_tiles * n / crops.shape[0])
    with torch.inference_mode():
        den(crops, ts[0])
        t_model = _time(lambda: [den(crops, t) for t in ts for _ in range(calls)]) / n
    return {
        "engine_total": total,
        "resize": t_resize,
        "noise": t_noise,
        "model": t_model,
        "tiling_blending_sampler": max(total - t_resize - t_noise - t_model, 0.0),
        "tiles_per_frame": n_tiles,
        "steps": len(ts),
    }


def metric_timings(width: int = 1920, height: int = 1080, repeat: int = 3) -> dict[str, float]:
    """Milliseconds per frame of each vsr.metrics function on a 1080p photograph pair
    (skimage's astronaut resized, and its blurred copy); flow = the two DIS calls plus
    the forward-backward check of one consecutive pair."""
    from skimage import data  # noqa: PLC0415

    from vsr import metrics  # noqa: PLC0415

    a = cv2.resize(data.astronaut(), (width, height), interpolation=cv2.INTER_CUBIC)
    b = cv2.GaussianBlur(a, (0, 0), 1.0)
    try:
        model = metrics.load_niqe_model()
    except OSError:
        model = metrics.fit_niqe([data.coffee(), data.chelsea(), data.rocket()])
    flow, valid = metrics.consistent_flow(a, b)
    static = metrics.static_mask_from_guide(a, b)
    calls = {
        "luma": lambda: metrics.luma(a),
        "psnr": lambda: metrics.psnr(b, a),
        "ssim": lambda: metrics.ssim(b, a),
        "ms_ssim": lambda: metrics.ms_ssim(b, a),
        "gmsd": lambda: metrics.gmsd(b, a),
        "niqe": lambda: metrics.niqe(b, model),
        "flow (DIS fwd+bwd, occlusion)": lambda: metrics.consistent_flow(a, b),
        "warping_error_pair": lambda: metrics.warping_error_pair(a, b, flow, valid),
        "flicker_pair": lambda: metrics.flicker_pair(a, b, static),
    }
    out = {}
    for name, fn in calls.items():
        fn()
        out[name] = 1000 * _time(fn, repeat)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--model", default=None, help="vsr model (default: the shipped prior)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--source", type=Path, default=None, help="clip to upscale (default: 24 frames of tree.avi at 160x120)")
    parser.add_argument("--frames", type=int, default=8, help="frames for the serial stage timings")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--metrics", action="store_true", help="only time the metrics on a 1080p pair")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.metrics:
        timings = metric_timings()
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "metrics_speed.json").write_text(json.dumps(timings, indent=1) + "\n")
        print("| metric | CPU ms per 1080p frame |\n|---|---|")
        print("\n".join(f"| {k} | {v:.0f} |" for k, v in timings.items()))
        return 0

    import torch  # noqa: PLC0415

    from vsr import video  # noqa: PLC0415
    from vsr.engine import Upscaler  # noqa: PLC0415
    from vsr.transcode import upscale_video  # noqa: PLC0415

    torch.set_num_threads(args.threads)
    clip = args.source or make_clip(CACHE.resolve() / "speed" / "tree-160x120-24f.avi")
    info = video.probe(clip)
    n_total = sum(1 for _ in video.decode(clip))
    up = Upscaler.from_pretrained(args.model, scale=args.scale, steps=args.steps, device="cpu", dtype="float32")

    # 2. end to end
    with tempfile.TemporaryDirectory() as tmp:
        t_decode = _time(lambda: sum(1 for _ in video.decode(clip))) / n_total
        t0 = time.perf_counter()
        upscale_video(clip, Path(tmp) / "bicubic.mp4", upscaler=Resizer(cv2.INTER_CUBIC), scale=args.scale)
        t_io = (time.perf_counter() - t0) / n_total
        timed = TimedEngine(up)
        t0, c0 = time.perf_counter(), time.process_time()
        upscale_video(clip, Path(tmp) / "vsr.mp4", upscaler=timed, scale=args.scale)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    st = timed.stats
    frames = [f.image for f, _ in zip(video.decode(clip), range(args.frames))]
    stages = engine_breakdown(up.with_config(scale=args.scale), frames)
    h, w = info.upright_size[1], info.upright_size[0]
    oh, ow = up.output_size(h, w)
    doc = {
        "command": "python -m benchmarks.speed " + " ".join(sys.argv[1:] if argv is None else argv),
        "clip": f"{clip.name} {w}x{h}, {n_total} frames -> {ow}x{oh}",
        "threads": args.threads,
        "end_to_end": {
            "wall_s": wall,
            "sec_per_frame": wall / n_total,
            "cpu_sec_per_frame": cpu / n_total,  # all threads; robust on a shared machine
            "engine_busy_per_frame": st["busy"] / n_total,
            "waiting_for_decode_per_frame": st["wait_in"] / n_total,
            "waiting_for_encode_per_frame": st["wait_out"] / n_total,
            "engine_busy_fraction": st["busy"] / wall,
            "io_only_pipeline_sec_per_frame": t_io,
        },
        "serial_cpu_sec_per_frame": {"decode": t_decode, **stages},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(json.dumps(doc, indent=1) + "\n")
    e2e, ser = doc["end_to_end"], doc["serial_cpu_sec_per_frame"]
    lines = [
        f"clip: {doc['clip']}, {args.steps} steps, {args.threads} threads",
        "",
        "| stage (serial: CPU ms; end to end: wall ms) | ms per output frame |",
        "|---|---|",
        *(f"| {k} | {1000 * v:.1f} |" for k, v in ser.items() if k not in ("tiles_per_frame", "steps")),
        f"| **end to end (threads)** | {1000 * e2e['sec_per_frame']:.1f} (CPU {1000 * e2e['cpu_sec_per_frame']:.1f}) |",
        f"| engine busy | {1000 * e2e['engine_busy_per_frame']:.1f} ({100 * e2e['engine_busy_fraction']:.0f} % of wall) |",
        f"| engine waiting for decode | {1000 * e2e['waiting_for_decode_per_frame']:.1f} |",
        f"| engine waiting for encode | {1000 * e2e['waiting_for_encode_per_frame']:.1f} |",
        f"| I/O-only pipeline (bicubic stand-in) | {1000 * e2e['io_only_pipeline_sec_per_frame']:.1f} |",
    ]
    (args.out / "speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
