"""PRF calibration (`vsr calibrate`): measure t*(scale) for a model, as in METHOD.md 1.

For each scale s and noise level t/T on a grid, HR crops are downscaled by s, upscaled
back by the engine with noise injected at t, and compared with the truth:
- signature loss L_S(t): MSE of the output low-passed (downscaled by s) against the
  truth low-passed the same way; the content drifting away raises it with t;
- fidelity loss L_F(t): |E_out - E_true| / E_true, E the mean energy of the band above
  the LR Nyquist (image minus its down-up-sampled self); missing detail makes it large at
  small t, and it falls as the model restores detail.
w makes both terms the same magnitude (ratio of their means over all measurements); the
PRF is where L_S <= C_S and w*L_F <= C_F (thresholds: medians over all scales, so hard
scales can have no field, as 8x in the paper), and t* = argmin L_S + w*L_F inside it
(over the whole grid when there is none). The curve is made non-decreasing in s (the
least-squares non-decreasing fit, `monotone`) before it is written to the model card.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vsr.config import MAX_CONSISTENCY, MAX_STEPS, EngineConfig
from vsr.errors import InputError, OutputError, UsageError
from vsr.models import DEFAULT_MODEL, resolve_model, shipped_card_path
from vsr.engine import DEFAULT_CONSISTENCY, Upscaler, resize

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_GRID = tuple(round(0.05 * i, 2) for i in range(1, 15))  # 0.05 .. 0.70


# -- pure maths -------------------------------------------------------------------
def _down_up(x: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, H, W) [0, 1] -> (x downscaled by scale, that upscaled back to H x W)."""
    h, w = x.shape[-2:]
    small = resize(x, max(1, round(h / scale)), max(1, round(w / scale)))
    return small, resize(small, h, w)


def signature_loss(out: torch.Tensor, truth: torch.Tensor, scale: float) -> float:
    """MSE between out and truth after both are low-passed (downscaled by scale); [0, 1] images."""
    return float(((_down_up(out, scale)[0] - _down_up(truth, scale)[0]) ** 2).mean())


def fidelity_loss(out: torch.Tensor, truth: torch.Tensor, scale: float) -> float:
    """Relative distance of the high band's energy (above the LR Nyquist) from the truth's."""
    e_out = float(((out - _down_up(out, scale)[1]) ** 2).mean())
    e_true = float(((truth - _down_up(truth, scale)[1]) ** 2).mean())
    return abs(e_out - e_true) / max(e_true, 1e-12)


@dataclass(frozen=True)
class ScaleResult:
    scale: float
    grid: tuple[float, ...]
    sig: tuple[float, ...]
    fid: tuple[float, ...]
    t_star: float = 0.0
    field: tuple[float, float] | None = None  # (lowest, highest) t/T in the PRF; None: empty


def find_prf(res: ScaleResult, w: float, c_s: float, c_f: float) -> ScaleResult:
    """t* = argmin L_S + w*L_F inside {L_S <= c_s and w*L_F <= c_f} (whole grid if empty)."""
    total = [s + w * f for s, f in zip(res.sig, res.fid)]
    inside = [i for i, (s, f) in enumerate(zip(res.sig, res.fid)) if s <= c_s and w * f <= c_f]
    pool = inside or range(len(res.grid))
    best = min(pool, key=lambda i: total[i])
    field = (res.grid[min(inside)], res.grid[max(inside)]) if inside else None
    return dataclasses.replace(res, t_star=res.grid[best], field=field)


def balance_weight(results: list[ScaleResult]) -> float:
    """w so that L_S and w*L_F have the same mean magnitude over all measurements."""
    sig = np.mean([v for r in results for v in r.sig])
    fid = np.mean([v for r in results for v in r.fid])
    return float(sig / fid) if fid > 0 else 1.0


def monotone(values: list[float]) -> list[float]:
    """The closest non-decreasing curve (least squares): more upscaling never gets less noise.

    Pool-adjacent-violators (isotonic regression, a dozen lines, so no scipy for it).
    A running maximum would let one scale's outlier (a one-point field at 3x, say) lift
    every larger scale to it; pooling averages the violators instead.
    """
    blocks: list[list[float]] = []  # [mean, count]
    for v in values:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, n2 = blocks.pop()
            m1, n1 = blocks.pop()
            blocks.append([(m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2])
    return [m for m, n in blocks for _ in range(int(n))]


# -- measuring ----------------------------------------------------------------------
def load_crops(folder: str | os.PathLike, crop: int, max_images: int) -> torch.Tensor:
    """(N, 3, crop, crop) float [0, 1] center crops of the images in folder (smaller ones skipped)."""
    import cv2

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--images {folder} is not a folder of images")
    crops = []
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None or min(img.shape[:2]) < crop:
            log.info("skipping %s (unreadable or smaller than %d)", p.name, crop)
            continue
        h, w = img.shape[:2]
        y, x = (h - crop) // 2, (w - crop) // 2
        crops.append(np.ascontiguousarray(img[y:y + crop, x:x + crop, ::-1]))
        if len(crops) >= max_images:
            break
    if not crops:
        raise InputError(f"no usable images (>= {crop}x{crop}, {', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0


def measure(up: Upscaler, hr: torch.Tensor, scales: list[float], grid: list[float], progress=None) -> list[ScaleResult]:
    """Losses for every (scale, t/T): the engine upscales each HR crop's downscaled copy."""
    h, w = hr.shape[-2:]
    results = []
    for s in scales:
        lr = resize(hr, max(1, round(h / s)), max(1, round(w / s)))
        sig, fid = [], []
        for t in grid:
            u = up.with_config(size=(w, h), noise_level=t)
            out = u.upscale_tensor(lr).cpu()
            sig.append(signature_loss(out, hr, s))
            fid.append(fidelity_loss(out, hr, s))
            if progress is not None:
                progress(s, t, sig[-1], fid[-1])
        results.append(ScaleResult(float(s), tuple(grid), tuple(sig), tuple(fid)))
    return results


def calibrate(
    up: Upscaler, hr: torch.Tensor, scales: list[float], grid: list[float], progress=None
) -> tuple[list[ScaleResult], dict]:
    """Measure, balance, threshold and pick t* per scale; returns results + the settings used."""
    raw = measure(up, hr, scales, grid, progress)
    w = balance_weight(raw)
    c_s = float(np.median([v for r in raw for v in r.sig]))
    c_f = float(np.median([w * v for r in raw for v in r.fid]))
    return [find_prf(r, w, c_s, c_f) for r in raw], {"w": w, "c_s": c_s, "c_f": c_f}


# -- reporting ------------------------------------------------------------------------
def format_table(results: list[ScaleResult], settings: dict) -> str:
    lines = [
        f"w = {settings['w']:.4g}  C_S = {settings['c_s']:.4g}  C_F = {settings['c_f']:.4g}",
        f"{'scale':>6} {'t*':>6} {'field':>13} {'L_S(t*)':>10} {'w*L_F(t*)':>10}",
    ]
    for r in results:
        i = r.grid.index(r.t_star)
        field = f"{r.field[0]:.2f}-{r.field[1]:.2f}" if r.field else "none"
        lines.append(f"{r.scale:>6g} {r.t_star:>6.2f} {field:>13} {r.sig[i]:>10.4g} {settings['w'] * r.fid[i]:>10.4g}")
    return "\n".join(lines)


def plot(results: list[ScaleResult], settings: dict, out: Path) -> bool:
    """Both loss curves per scale, field shaded, t* marked (like the paper's Figure 4)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3), squeeze=False)
    for ax, r in zip(axes[0], results):
        ax.plot(r.grid, r.sig, "o-", label="signature L_S")
        ax.plot(r.grid, [settings["w"] * f for f in r.fid], "s-", label="fidelity w*L_F")
        ax.axhline(settings["c_s"], color="C0", ls=":", lw=1)
        ax.axhline(settings["c_f"], color="C1", ls=":", lw=1)
        if r.field:  # shade half a grid step either side, so a one-point field shows
            i, j = r.grid.index(r.field[0]), r.grid.index(r.field[1])
            lo = r.field[0] - ((r.grid[i] - r.grid[i - 1]) / 2 if i > 0 else 0)
            hi = r.field[1] + ((r.grid[j + 1] - r.grid[j]) / 2 if j + 1 < len(r.grid) else 0)
            ax.axvspan(lo, hi, color="green", alpha=0.15, label="PRF")
        ax.axvline(r.t_star, color="k", ls="--", lw=1)
        ax.set_title(f"{r.scale:g}x: t* = {r.t_star:.2f}")
        ax.set_xlabel("noise level t/T")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return True


# -- `vsr calibrate` ------------------------------------------------------------------
def add_cli(parser) -> None:
    parser.add_argument("--model", help="model name, folder or hub id (default: the shipped prior); a folder's "
                        "model_card.yaml is rewritten with the result")
    parser.add_argument("--scales", type=float, nargs="+", default=[2, 3, 4, 6, 8],
                        help="upscaling factors (default 2 3 4 6 8)")
    parser.add_argument("--images", required=True, help="a folder of high-resolution images (the truth)")
    parser.add_argument("--noise-predictor", action="store_true",
                        help="calibrate the model's noise predictor (InvSR) instead: its start t/T per scale, "
                             "written to the card's noise_predictor: entry")
    parser.add_argument("--grid", type=float, nargs="+",
                        help="noise levels t/T to try (default 0.05..0.70; with --noise-predictor 0.001..0.2)")
    parser.add_argument("--crop", type=int, help="center-crop size (default: the model card's crop)")
    parser.add_argument("--max-images", type=int, default=8, help="use at most this many images")
    parser.add_argument("--steps", type=int,
                        help="DDIM steps per run, 1..50 (default: 2 for the PRF; with --noise-predictor the count "
                             "its card records, 1 if none)")
    parser.add_argument("--consistency", type=int,
                        help=f"back-projection passes per step as the engine will run, 0..10 (default: "
                             f"{DEFAULT_CONSISTENCY} for the PRF; with --noise-predictor the count its card records, "
                             f"{DEFAULT_CONSISTENCY} if none)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--out", help="the loss curves, a .png, .pdf or .svg file (default: calibration-<model>.png); "
                        "with --noise-predictor a .json file of every score, which the card then names (default: "
                        "the scores go in the card)")
    parser.add_argument("--write", action="store_true", help="write the shipped model's card in configs/models")


def _card_target(model: str | None, write: bool) -> Path | None:
    """Where `vsr calibrate` writes: a model folder's own model_card.yaml, the shipped
    model's card in configs/models with --write, else nowhere (None)."""
    kind, location, _ = resolve_model(model)
    if kind == "local" and model is not None and Path(model).expanduser().is_dir():
        return Path(location) / "model_card.yaml"
    if kind == "local" and write:
        return shipped_card_path(DEFAULT_MODEL if model is None else str(model))
    return None


PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def run_cli(args) -> int:
    default_grid = DEFAULT_GRID
    if args.noise_predictor:  # the export's start levels
        from vsr.pipelines.train_noise_predictor import CALIBRATION_GRID as default_grid
    grid = sorted(set(args.grid or default_grid))
    if not all(0 < t < 1 for t in grid):
        raise UsageError("--grid values must be noise levels t/T in (0, 1)")
    if not all(math.isfinite(s) and s > 1 for s in args.scales):
        raise UsageError("--scales must be upscaling factors > 1")
    if args.max_images < 1:
        raise UsageError(f"--max-images must be at least 1, got {args.max_images}")
    if args.crop is not None and args.crop < 1:
        raise UsageError(f"--crop must be a positive size in pixels, got {args.crop}")
    for name, (low, high) in {"steps": (1, MAX_STEPS), "consistency": (0, MAX_CONSISTENCY)}.items():
        value = getattr(args, name)
        if value is not None and not low <= value <= high:
            raise UsageError(f"--{name} must be an integer in {low}..{high}, got {value}")
    scales = sorted(set(args.scales))
    out = Path(args.out) if args.out else None
    kinds = (".json",) if args.noise_predictor else PLOT_SUFFIXES
    if out is not None:  # fail before the long measurement
        if out.is_dir() or out.suffix.lower() not in kinds:
            raise UsageError(f"--out {out}: give a {' or '.join(kinds)} file"
                             f"{' (the scores of --noise-predictor)' if args.noise_predictor else ' (the loss curves)'}")
        if not out.parent.is_dir():
            raise OutputError(f"--out {out}: folder {out.parent} does not exist; create it first")
    if args.noise_predictor:
        return _run_predictor_cli(args, grid, scales)
    # the PRF is plain Diff-SR's field (what --noise-predictor off runs): a model's
    # predictor, when it has one, must not supply the noise being measured
    cfg = EngineConfig(
        model=args.model, steps=2 if args.steps is None else args.steps,
        consistency=DEFAULT_CONSISTENCY if args.consistency is None else args.consistency,
        device=args.device, dtype=args.dtype, overlap=0, noise_predictor="off",
    )
    up = Upscaler.from_pretrained(config=cfg)
    card = up.model.card
    crop = args.crop or card.crop
    up = up.with_config(tile=crop)  # one tile per crop: calibration measures the model, not the tiling
    hr = load_crops(args.images, crop, args.max_images)
    print(f"calibrating {card.name} on {hr.shape[0]} crops of {crop}x{crop}, {len(scales)} scales x {len(grid)} levels")
    results, settings = calibrate(up, hr, scales, grid, progress=lambda s, t, a, b: print(f"  {s:g}x t/T={t:.2f}: L_S={a:.4g} L_F={b:.4g}"))
    print(format_table(results, settings))
    levels = monotone([r.t_star for r in results])
    new_card = card.with_prf(
        tuple(scales),
        tuple(round(v, 3) for v in levels),
        calibration={
            "date": datetime.date.today().isoformat(), "images": int(hr.shape[0]), "crop": crop, "steps": up.steps,
            "consistency": up.consistency,
            "grid": [float(t) for t in grid], "w": float(f"{settings['w']:.4g}"), "c_s": float(f"{settings['c_s']:.4g}"),
            "c_f": float(f"{settings['c_f']:.4g}"),
            "fields": {f"{r.scale:g}": (list(r.field) if r.field else None) for r in results},
        },
    )
    png = out or Path(f"calibration-{card.name.replace('/', '_')}.png")
    try:  # the curves first: a card is rewritten only by a run that completes
        saved = plot(results, settings, png)
    except (OSError, ValueError) as exc:  # unwritable
        raise OutputError(f"cannot write the loss curves to {png}: {exc}") from None
    target = _card_target(args.model, args.write)
    if target is not None:
        new_card.save(target, header=f"Model card of {new_card.name}; prf measured by `vsr calibrate` (see calibration:).")
        print(f"PRF curve {list(scales)} -> {new_card.prf_t} written to {target}")
    else:
        print(f"PRF curve {list(scales)} -> {new_card.prf_t} (not written: pass --write for a shipped model)")
    print(f"loss curves saved to {png}" if saved else "PNG skipped: matplotlib is not installed")
    return 0


def _run_predictor_cli(args, grid: list[float], scales: list[float]) -> int:
    """`vsr calibrate --noise-predictor`: the start t/T per scale of the model's noise
    predictor (InvSR), measured and recorded as `vsr train predictor-export --calibrate`
    does (`calibrated_entry`), written to the card's `noise_predictor:` entry; the rest
    of the entry (architecture, training) is kept. The predictor trainer's scoring is
    borrowed here, in this command only (docs/ARCHITECTURE.md). Raises UsageError for a
    model without a noise predictor."""
    import json

    from vsr.noise.predicted import CARD_KEY, PredictedNoise
    from vsr.pipelines.train_noise_predictor import calibrated_entry

    up = Upscaler.from_pretrained(config=EngineConfig(model=args.model, device=args.device, dtype=args.dtype))
    if not isinstance(up.noise, PredictedNoise):
        raise UsageError(f"--noise-predictor: model {args.model or DEFAULT_MODEL} has no noise_predictor/ folder")
    steps = args.steps if args.steps is not None else (up.noise.calibrated_steps() or 1)
    consistency = args.consistency if args.consistency is not None else up.noise.calibrated_consistency()
    consistency = DEFAULT_CONSISTENCY if consistency is None else consistency
    card = up.model.card
    crop = args.crop or card.crop
    up.with_config(tile=crop)  # the same check of the crop as the PRF's (the model's multiple)
    hr = load_crops(args.images, crop, args.max_images)
    print(f"calibrating the noise predictor of {card.name} on {hr.shape[0]} crops of {crop}x{crop}, "
          f"{len(scales)} scales x {len(grid)} start levels, {steps} step(s), {consistency} pass(es)")
    keys, scores = calibrated_entry(up.noise.predictor, up.model, hr, scales=scales, grid=grid, steps=steps,
                                    consistency=consistency, device=args.device, dtype=args.dtype,
                                    scores_file=args.out)
    for s, t in zip(keys["scales"], keys["t"]):
        best = scores[f"{s:g}x"][f"t={t}"]
        print(f"  {s:g}x: t/T {t:g} (Y-PSNR {best['psnr']:.3f}, GMSD {best['gmsd']:.4f}; "
              f"bicubic {scores[f'{s:g}x']['bicubic']['psnr']:.3f})")
    if args.out:
        try:
            Path(args.out).write_text(json.dumps(scores, indent=1) + "\n")
        except OSError as exc:
            raise OutputError(f"cannot write the scores to {args.out}: {exc.strerror or exc}") from None
    entry = {k: v for k, v in (card.extra.get(CARD_KEY) or {}).items() if k != "calibration_note"}  # it spoke of the old levels
    new_card = dataclasses.replace(card, extra={**card.extra, CARD_KEY: {**entry, **keys}})
    target = _card_target(args.model, args.write)
    if target is None:
        print(f"start t/T {keys['scales']} -> {keys['t']} (not written: pass --write for a shipped model)")
        return 0
    new_card.save(target, header=f"Model card of {new_card.name}; noise_predictor start measured by "
                                 "`vsr calibrate --noise-predictor` (see noise_predictor.calibration).")
    print(f"start t/T {keys['scales']} -> {keys['t']} written to {target}")
    return 0
