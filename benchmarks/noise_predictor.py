"""The noise predictor (issue 10 items 2 and 5) against Gaussian noise, through `Upscaler`.

    python -m benchmarks.noise_predictor --model runs/np-vsr-prior-s/model [--corpus data/corpus]
        [--scales 2 4] [--steps auto] [--predictor-steps 1 2] [--frames 8]
        [--json benchmarks/results/noise_predictor.json] [--mosaic benchmarks/results/mosaic]

1. Fidelity on the corpus's held-out photographs (256x256 centre crops, 8-bit LR by
   antialiased bicubic, as benchmarks.prior): bicubic, bicubic + back-projection, vsr
   with shared Gaussian noise at the card's PRF, and vsr with the predictor at its
   calibrated start t: Y-PSNR, GMSD, hf (Laplacian energy over the truth's,
   benchmarks.prior's sharpness) and band (luma energy above the input's Nyquist over
   the truth's). `--degrade` scores inputs as real video has them instead: blur:SIGMA
   (Gaussian, HR pixels, before the downscale), jpeg:QUALITY or h264:CRF (the 8-bit input
   through OpenCV's JPEG or a one-frame libx264 stream), the training degradations
   (pipelines/predictor_data.py) at one fixed strength.
2. Temporal: a panning clip cut from each held-out photograph (a window moving 1.5 px
   right and 0.5 px down per frame at the output resolution, made by resampling, so the
   motion is sub-pixel as in real video), downscaled like (1). Warping error (Lai et al.
   2018, flow of the truth) and flicker (static blocks of the truth) of shared, fresh
   and predicted noise; issue 10 asks that predicted noise not flicker more than shared.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from collections.abc import Callable

import numpy as np
import torch

from vsr.pipelines.train_noise_predictor import _scores, _u8, load_val_crops
from vsr.config import EngineConfig
from vsr.core.resample import resample
from vsr.core.sampling import back_project
from vsr.engine import Upscaler
from vsr.evaluate import evaluate_frames
from vsr.models import load_model
from vsr.noise import make_noise
from vsr.noise.predicted import load_noise_predictor


def _engines(model_dir: str, scale: float, steps: int | str, size: tuple[int, int] | None = None) -> dict[str, Upscaler]:
    """Shared, fresh and predicted noise at `steps` ("auto": each at its default, i.e. 2
    for the Gaussian sources and the card's calibrated count for the predictor); to `size`
    (w, h) when given (the truth's: at 3x a 256-pixel crop is 85 pixels, and 85 x 3 is 255),
    else by `scale`."""
    model = load_model(model_dir)
    cfg = EngineConfig().replace(**({"size": size} if size else {"scale": scale}), steps=steps, device="cpu")
    pred = load_noise_predictor(model, base=make_noise("shared", cfg.seed))
    if pred is None:
        raise SystemExit(f"{model_dir} has no noise_predictor/")
    return {
        "vsr-shared": Upscaler(model, cfg, noise=make_noise("shared", cfg.seed)),
        "vsr-fresh": Upscaler(model, cfg, noise=make_noise("fresh", cfg.seed)),
        "vsr-predicted": Upscaler(model, cfg, noise=pred),
    }


def _dat_light(scale: float) -> Callable[[np.ndarray], np.ndarray] | str:
    """DAT-light (benchmarks.peers) at an integer scale, or why it cannot run."""
    from benchmarks.peers import PeerUnavailable, make_peer

    if scale != round(scale):
        return "DAT-light has integer scales only"
    try:
        return make_peer("dat-light", int(scale), threads=torch.get_num_threads())
    except PeerUnavailable as exc:
        return str(exc)


def parse_degradation(text: str | None) -> tuple[str, float] | None:
    """'blur:1.0' / 'jpeg:75' / 'h264:28' -> (kind, value); None or 'none' -> None.
    Raises SystemExit with a one-line message for anything else."""
    if text in (None, "none"):
        return None
    kind, _, value = text.partition(":")
    limits = {"blur": (0.1, 5.0), "jpeg": (1, 100), "h264": (0, 51)}
    try:
        v = float(value) if kind == "blur" else int(value)
    except ValueError:
        v = math.nan
    if kind not in limits or not limits[kind][0] <= v <= limits[kind][1]:
        raise SystemExit(f"--degrade {text!r}: need none, blur:SIGMA (0.1-5), jpeg:QUALITY (1-100) or h264:CRF (0-51)")
    return kind, v


def low_resolution(hr: torch.Tensor, n: int, degradation: tuple[str, float] | None = None) -> torch.Tensor:
    """(N, 3, n, n) 8-bit values in [0, 1]: hr (N, 3, H, W) [0, 1] downscaled by antialiased
    bicubic, after a blur or followed by JPEG / H.264 when `degradation` says so."""
    from vsr.pipelines.predictor_data import gaussian_blur, h264_roundtrip, jpeg_roundtrip

    kind, value = degradation or ("none", 0.0)
    if kind == "blur":
        hr = gaussian_blur(hr, value)
    low = (resample(hr, (n, n)).clamp(0, 1) * 255).round() / 255
    if kind in ("jpeg", "h264"):
        trip = jpeg_roundtrip if kind == "jpeg" else h264_roundtrip
        rgb = [trip(np.ascontiguousarray(x), int(value)) for x in _u8(low * 2 - 1)]
        low = torch.from_numpy(np.stack(rgb)).permute(0, 3, 1, 2).float() / 255
    return low


def fidelity(
    model_dir: str, corpus: str, scales: list[float], steps: int | str, max_images: int = 16,
    predictor_steps: tuple[int, ...] = (), keep: bool = False, degradation: tuple[str, float] | None = None,
) -> dict:
    """Scores per scale (see the module docstring); with keep, also the uint8 outputs
    under out["images"][scale][method] (lists of HxWx3) for `mosaic`."""
    hr = load_val_crops(corpus, 256, max_images)
    refs = _u8(hr * 2 - 1)
    out: dict = {"images": len(hr)}
    kept: dict = {}
    for s in scales:
        n = round(256 / s)
        low = low_resolution(hr, n, degradation)
        up = resample(low * 2 - 1, (256, 256))
        imgs = {"bicubic": _u8(up), "bicubic+bp": _u8(back_project(up, low * 2 - 1, 1))}
        row = {k: _scores(v, refs, s) for k, v in imgs.items()}
        dat = _dat_light(s)
        if isinstance(dat, str):
            row["dat-light"] = {"unavailable": dat}
            print(f"DAT-light left out at {s:g}x: {dat}", file=sys.stderr)  # and from the mosaic
        else:
            imgs["dat-light"] = [dat(x) for x in _u8(low * 2 - 1)]
            side = imgs["dat-light"][0].shape[0]
            if side != 256:  # n * s pixels (255 at 3x): to the truth's size with vsr's bicubic, as the row says
                dat_out = [torch.from_numpy(x).permute(2, 0, 1)[None].float() / 127.5 - 1 for x in imgs["dat-light"]]
                imgs["dat-light"] = [_u8(resample(x, (256, 256)))[0] for x in dat_out]
            row["dat-light"] = {**_scores(imgs["dat-light"], refs, s), **({"resized_from": side} if side != 256 else {})}
        engines = {k: v for k, v in _engines(model_dir, s, steps, (256, 256)).items() if k != "vsr-fresh"}
        for k in predictor_steps:
            if k != engines["vsr-predicted"].steps:
                engines[f"vsr-predicted-{k}step"] = _engines(model_dir, s, k, (256, 256))["vsr-predicted"]
        for name, eng in engines.items():
            t0 = time.perf_counter()
            res = torch.cat([eng.upscale_tensor(low[i : i + 1]) for i in range(len(low))])
            imgs[name] = _u8(res * 2 - 1)
            ts = eng.timesteps_for(256 / n)
            row[name] = {**_scores(imgs[name], refs, s), "t_start": ts[0], "steps": len(ts),
                         "seconds_per_image": round((time.perf_counter() - t0) / len(low), 3)}
        out[f"{s:g}x"] = row
        kept[f"{s:g}x"] = {**imgs, "truth": refs}
    if keep:
        out["images"] = kept
    return out


MOSAIC = ("bicubic", "dat-light", "vsr-shared", "vsr-predicted", "truth")
LABELS = {"vsr-shared": "vsr before", "vsr-predicted": "vsr now"}


def _most_detailed(truths: list[np.ndarray], k: int) -> list[int]:
    """Indices of the k images with the most Laplacian energy in their centre (what a
    mosaic of detail should show; flat sky shows nothing)."""
    import cv2

    def energy(img: np.ndarray) -> float:
        h, w = img.shape[:2]
        c = cv2.cvtColor(img[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4], cv2.COLOR_RGB2GRAY).astype(np.float32)
        return float(np.var(cv2.Laplacian(c, cv2.CV_32F)))

    return sorted(sorted(range(len(truths)), key=lambda i: -energy(truths[i]))[:k])


def mosaic(images: dict[str, list[np.ndarray]], picks: list[int], crop: int = 96, zoom: int = 2) -> np.ndarray:
    """One row per picked image, one column per method of MOSAIC (those present): the
    centre crop x crop of each output, enlarged `zoom`x by pixel repetition so detail is
    not smoothed by the viewer, a label above each column. HxWx3 uint8 RGB."""
    import cv2

    cols = [m for m in MOSAIC if m in images]
    rows = []
    for i in picks:
        tiles = []
        for m in cols:
            img = images[m][i]
            y, x = (img.shape[0] - crop) // 2, (img.shape[1] - crop) // 2
            tile = np.repeat(np.repeat(img[y : y + crop, x : x + crop], zoom, 0), zoom, 1)
            tiles.append(np.pad(tile, ((2, 2), (2, 2), (0, 0)), constant_values=255))
        rows.append(np.concatenate(tiles, axis=1))
    grid = np.concatenate(rows, axis=0)
    head = np.full((22, grid.shape[1], 3), 255, np.uint8)
    w = grid.shape[1] // len(cols)
    for k, m in enumerate(cols):
        cv2.putText(head, LABELS.get(m, m), (k * w + 6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([head, grid], axis=0)


def pan_clip(photo: torch.Tensor, frames: int, size: tuple[int, int], step=(0.5, 1.5)) -> torch.Tensor:
    """(frames, 3, *size) float [0, 1]: a window moving by `step` (dy, dx) px per frame,
    taken with bilinear sampling (sub-pixel motion) from photo (3, H, W)."""
    h, w = size
    H, W = photo.shape[-2:]
    out = []
    for k in range(frames):
        y0, x0 = 8 + k * step[0], 8 + k * step[1]
        ys = (torch.arange(h) + y0) / (H - 1) * 2 - 1
        xs = (torch.arange(w) + x0) / (W - 1) * 2 - 1
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1)[None]
        out.append(torch.nn.functional.grid_sample(photo[None], grid, mode="bicubic", align_corners=True)[0])
    return torch.stack(out).clamp(0, 1)


def temporal(model_dir: str, corpus: str, scales: list[float], steps: int | str, frames: int, max_images: int = 4) -> dict:
    photos = load_val_crops(corpus, 320, max_images)
    out: dict = {"clips": len(photos), "frames": frames, "motion_px_per_frame": [0.5, 1.5]}
    for s in scales:
        engines = _engines(model_dir, s, steps)
        acc: dict[str, list[dict]] = {k: [] for k in ["bicubic", *engines]}
        for photo in photos:
            hr = pan_clip(photo, frames, (192, 256))
            n = (round(192 / s), round(256 / s))
            low = (resample(hr, n).clamp(0, 1) * 255).round() / 255
            refs = [f for f in _u8(hr * 2 - 1)]
            outs = {"bicubic": _u8(resample(low * 2 - 1, (192, 256)))}
            for name, eng in engines.items():
                outs[name] = _u8(eng.upscale_tensor(low, list(range(frames))) * 2 - 1)
            for name, o in outs.items():
                acc[name].append(evaluate_frames(o, refs, crop_border=math.ceil(s)).summary)
        out[f"{s:g}x"] = {
            name: {k: round(float(np.nanmean([r[k] for r in rows])), 5) for k in rows[0]} for name, rows in acc.items()
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a model folder with noise_predictor/ (vsr train predictor-export)")
    ap.add_argument("--corpus", default="data/corpus")
    ap.add_argument("--scales", type=float, nargs="+", default=[2.0, 4.0])
    ap.add_argument("--steps", type=lambda v: v if v == "auto" else int(v), default="auto",
                    help="DDIM steps of every engine (default auto: 2 for Gaussian noise, the card's count for the predictor)")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--max-images", type=int, default=16, help="held-out photographs to score (the corpus has 9)")
    ap.add_argument("--skip-temporal", action="store_true")
    ap.add_argument("--predictor-steps", type=int, nargs="*", default=[1, 2],
                    help="also score the predictor at these step counts (default 1 2; its own count is not repeated)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--mosaic", help="write PREFIX-2x.png, PREFIX-4x.png: crops of bicubic, DAT-light, vsr "
                                     "before (no predictor), vsr now, truth")
    ap.add_argument("--degrade", default="none",
                    help="score inputs degraded as video is: blur:SIGMA, jpeg:QUALITY or h264:CRF (default none)")
    ap.add_argument("--mosaic-images", type=int, nargs="+",
                    help="which held-out images (default: the three with the most detail in the truth)")
    args = ap.parse_args(argv)
    try:
        degradation = parse_degradation(args.degrade)
    except SystemExit as exc:
        ap.error(str(exc))  # argparse's exit 2
    if not (Path(args.corpus) / "images" / "val").is_dir():
        ap.error(f"--corpus {args.corpus}: no images/val folder (build it: vsr corpus build data/corpus)")
    fid = fidelity(args.model, args.corpus, args.scales, args.steps, args.max_images, predictor_steps=tuple(args.predictor_steps),
                   keep=bool(args.mosaic), degradation=degradation)
    images = fid.pop("images", {})
    result = {"model": args.model, "steps": args.steps, "degrade": args.degrade, "fidelity": fid}
    print(json.dumps(result["fidelity"], indent=1))
    if args.mosaic:
        import cv2

        for key, imgs in images.items():
            picks = [i for i in args.mosaic_images or _most_detailed(imgs["truth"], 3) if i < len(imgs["truth"])]
            path = Path(f"{args.mosaic}-{key}.png")
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), mosaic(imgs, picks)[..., ::-1])
            print(f"wrote {path}")
    if not args.skip_temporal:
        result["temporal"] = temporal(args.model, args.corpus, args.scales, args.steps, args.frames)
        print(json.dumps(result["temporal"], indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
