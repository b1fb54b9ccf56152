"""Engine speed on the CPU or a GPU (`python -m benchmarks.engine [--device cuda]`).

Prints, for the shipped prior (or --model): ms per tile in fp32 and bf16 (and fp16 on a
GPU) for each --batch (tiles of several frames in one batch), tiles per 1080p frame,
seconds per 1080p frame (960x540 -> 1920x1080) at 1/2/4 steps, and the share of that time
spent outside the model (resize, noise, tiling, blending, conversions; the goal is under
10%). On CUDA every timing ends with a synchronisation, so it counts the kernels' time. `--stand-in` measures a randomly initialised UNet of the prior's
architecture (configs/prior/vsr-prior-s.yaml) when the trained weights are not there:
same cost, meaningless pictures.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vsr.config import EngineConfig
from vsr.engine import Upscaler
from vsr.models import cpu_supports_bf16
from vsr.noise.predicted import PredictedNoise

REPO = Path(__file__).resolve().parent.parent


class TimedNet(torch.nn.Module):
    """Wraps the UNet to add up the wall time spent inside it."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net
        self.seconds = 0.0

    def forward(self, x, t):
        _sync(x.device)
        t0 = time.perf_counter()
        out = self.net(x, t).sample
        _sync(x.device)
        self.seconds += time.perf_counter() - t0
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stand_in_folder(tmp: Path) -> Path:
    """The prior's architecture with random weights, in the shipped layout (plus a card)."""
    from vsr.pipelines.train_prior import TrainConfig, build_scheduler, build_unet

    cfg = TrainConfig.from_yaml(REPO / "configs" / "prior" / "vsr-prior-s.yaml")
    folder = tmp / "vsr-prior-s-standin"
    torch.manual_seed(0)
    build_unet(cfg).save_pretrained(folder / "unet")
    build_scheduler(cfg).save_pretrained(folder / "scheduler")
    (folder / "model_card.yaml").write_text(f"name: vsr-prior-s-standin\ncrop: 256\npixel_unshuffle: {cfg.pixel_unshuffle}\n")
    return folder


def ms_per_tile(up: Upscaler, dtype: str, batch: int, repeats: int) -> tuple[float, float]:
    """(wall ms, CPU ms) per tile; CPU time is steadier than wall time on a shared machine."""
    den = up.with_config(dtype=dtype).denoiser()
    x = (torch.rand(batch, 3, up.tile, up.tile) * 2 - 1).to(den.device)
    with torch.inference_mode():
        den(x, 200)  # warm-up (oneDNN or cuDNN picks its kernels)
        _sync(den.device)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(repeats):
            den(x, 200)
        _sync(den.device)
    n = repeats * batch
    return (time.perf_counter() - t0) / n * 1000, (time.process_time() - c0) / n * 1000


def frame_seconds(
    up: Upscaler, steps: int, frame: np.ndarray, noise_predictor: str = "off"
) -> tuple[float, float, float]:
    """(wall seconds for one 1080p output frame, CPU seconds, share of wall time outside
    the UNet: a noise predictor counts as outside)."""
    u = up.with_config(steps=steps, size=(1920, 1080), noise_level=0.2, noise_predictor=noise_predictor)
    den = u.denoiser()
    timed = TimedNet(den.net)
    den.net = timed
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        u(frame)
        _sync(den.device)
        total, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        den.net = timed.net
    return total, cpu, 1 - timed.seconds / total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model folder or name (default: the shipped prior)")
    p.add_argument("--stand-in", action="store_true", help="random weights of the prior's architecture")
    p.add_argument("--batch", type=int, nargs="+", default=[8], help="tiles per batch (the first one for the frames)")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    with tempfile.TemporaryDirectory() as tmp:
        model = str(stand_in_folder(Path(tmp))) if args.stand_in else args.model
        up = Upscaler.from_pretrained(model, config=EngineConfig(batch=args.batch[0], device=args.device))
        n_params = sum(p.numel() for p in up.model.net.parameters())
        print(f"model: {up.model.card.name} ({n_params / 1e6:.1f}M params, tile {up.tile}, "
              f"pixel_unshuffle {up.model.card.pixel_unshuffle}){' [stand-in: random weights]' if args.stand_in else ''}")
        print(f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (load average {load:.1f}), "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads, bf16 native: {cpu_supports_bf16()}")
        auto = up.denoiser().dtype
        cuda = up.denoiser().device.type == "cuda"
        if cuda:
            print(f"gpu: {torch.cuda.get_device_name(up.denoiser().device)}")
        print(f"auto dtype on this {'GPU' if cuda else 'CPU'}: {auto}")
        for dt in ("float32", "bfloat16", "float16") if cuda else ("float32", "bfloat16"):
            for batch in args.batch:
                wall, cpu = ms_per_tile(up, dt, batch, args.repeats)
                print(f"ms per {up.tile}x{up.tile} tile, {dt:>8}, batch {batch:4d}: {wall:8.2f} wall, {cpu:8.2f} CPU")
        tiles = up.tiles_per_frame(1080, 1920)
        print(f"tiles per 1080p frame (overlap {up.overlap}): {tiles}")
        frame = (np.random.default_rng(0).random((540, 960, 3)) * 255).astype(np.uint8)
        with_np = isinstance(up.with_config(noise_predictor="auto").noise, PredictedNoise)
        predictor = ("off", "auto") if with_np else ("off",)
        for np_mode in predictor:
            frame_seconds(up, 1, frame, np_mode)  # warm-up: the blend plan for 1080p is cached per frame size
        for steps in args.steps:
            for np_mode in predictor:
                sec, cpu, outside = frame_seconds(up, steps, frame, np_mode)
                label = " + noise predictor" if np_mode == "auto" else ""
                print(f"1080p frame, {steps} step(s){label}, {auto}: {sec:7.2f} s wall, {cpu:7.2f} s CPU, "
                      f"outside the model: {outside:6.1%}")
    return 0


if __name__ == "__main__":
    from vsr.errors import VsrError

    try:
        raise SystemExit(main())
    except VsrError as exc:  # a device this machine lacks, a model folder that is not one: one line
        print(f"benchmarks.engine: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
