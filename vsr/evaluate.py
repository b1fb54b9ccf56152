"""`vsr eval`: quality and temporal metrics of an output video, with or without a reference.

Full-reference (``vsr eval OUT --reference REF``): frames are compared one to one (frame i
of OUT with frame i of REF), so both must have the same size and the same number of
frames; any mismatch is an `InputError`, never a silent resize or truncation. Per frame:
Y-PSNR, Y-SSIM, MS-SSIM, GMSD, NIQE; per consecutive pair: warping error with the flow
computed on the reference, flicker in the reference's static regions.

No-reference (``vsr eval OUT``): NIQE per frame, warping error and flicker with the flow
of the output itself, or of ``--guide LR`` (the low-resolution source, resized to the
output size) when given.

The core, `evaluate_frames`, works on any iterables of HxWx3 RGB arrays and keeps only the
previous frame in memory, so a long video streams through it.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from vsr import metrics
from vsr.errors import InputError, ModelError, OutputError, UsageError

log = logging.getLogger(__name__)

# how each summary is read: higher or lower is better (printed in the table header)
BETTER = {"psnr": "higher", "ssim": "higher", "ms_ssim": "higher", "gmsd": "lower", "niqe": "lower",
          "warp_error": "lower", "flicker": "lower"}


@dataclass
class EvalResult:
    """mode: "full-reference" or "no-reference"; rows: one dict per output frame (frame
    index plus each metric; temporal metrics belong to the pair (i-1, i), NaN on frame 0);
    summary: mean of each metric over frames (or pairs), NaN entries ignored."""

    mode: str
    rows: list[dict[str, float]] = field(default_factory=list)
    summary: dict[str, float] = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return len(self.rows)


def _zip_strict(
    outputs: Iterable[np.ndarray], refs: Iterable[np.ndarray], other: str = "reference"
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Pairs of frames; a count mismatch is an InputError naming both counts seen so far
    (`other` names the second video in it: "reference" or "guide")."""
    it_o, it_r = iter(outputs), iter(refs)
    n = 0
    while True:
        o = next(it_o, None)
        r = next(it_r, None)
        if o is None and r is None:
            return
        if o is None or r is None:
            longer = other if o is None else "output"
            raise InputError(
                f"frame counts differ: the {longer} has more than {n} frames, the other has {n}; "
                f"the output and the {other} must be frame-aligned (trim them to the same frames)"
            )
        yield o, r
        n += 1


def evaluate_frames(
    outputs: Iterable[np.ndarray],
    references: Iterable[np.ndarray] | None = None,
    *,
    guides: Iterable[np.ndarray] | None = None,
    crop_border: int = 0,
    niqe_model: metrics.NiqeModel | None = None,
    temporal: bool = True,
    callback=None,
) -> EvalResult:
    """Score a clip frame by frame.

    outputs/references: HxWx3 RGB frames (uint8, uint16 or float [0, 1]), frame-aligned.
    guides (no-reference only): frames whose motion drives the temporal metrics, any size
    (resized to the output's, bicubic); default: the outputs themselves.
    niqe_model: None skips NIQE; frames too small for it are an InputError without a
    reference, and with one NIQE is left out with one warning. callback(i) is called
    after each frame.
    """
    if references is not None and guides is not None:
        raise UsageError("--guide is for no-reference eval: with --reference the flow comes from the reference")
    mode = "full-reference" if references is not None else "no-reference"
    if references is not None:
        pairs: Iterable[tuple[np.ndarray, np.ndarray | None]] = _zip_strict(outputs, references)
    elif guides is not None:
        pairs = _zip_strict(outputs, guides, "guide")
    else:
        pairs = ((o, None) for o in outputs)

    result = EvalResult(mode)
    prev_out = prev_guide = None
    for i, (out, other) in enumerate(pairs):
        row: dict[str, float] = {"frame": i}
        y_out = None
        if 2 * crop_border >= min(out.shape[:2]):
            raise UsageError(f"--crop-border {crop_border} leaves nothing of the {out.shape[1]}x{out.shape[0]} frames")
        if references is not None:
            if out.shape != other.shape:
                raise InputError(
                    f"frame {i}: output is {out.shape[1]}x{out.shape[0]} but the reference is "
                    f"{other.shape[1]}x{other.shape[0]}; full-reference eval needs the same size"
                )
            y_out, y_ref = metrics.luma(out), metrics.luma(other)
            row["psnr"] = metrics.psnr(y_out, y_ref, crop_border)
            row["ssim"] = metrics.ssim(y_out, y_ref, crop_border)
            row["ms_ssim"] = metrics.ms_ssim(y_out, y_ref, crop_border)
            row["gmsd"] = metrics.gmsd(y_out, y_ref, crop_border)
        if niqe_model is not None:
            try:
                row["niqe"] = metrics.niqe(out if y_out is None else y_out, niqe_model, crop_border)
            except ValueError as exc:  # frames too small for NIQE's patches
                if references is None:
                    raise InputError(f"{exc}; evaluate without NIQE (--no-niqe)") from None
                log.warning("%s: NIQE is left out (the full-reference metrics do not need it)", exc)
                niqe_model = None
                for r in result.rows:
                    r.pop("niqe", None)
        if temporal:
            guide = out if other is None else other
            if references is None and guides is not None and guide.shape != out.shape:
                guide = cv2.resize(guide, (out.shape[1], out.shape[0]), interpolation=cv2.INTER_CUBIC)
            row["warp_error"] = row["flicker"] = math.nan
            if prev_out is not None:
                flow, valid = metrics.consistent_flow(prev_guide, guide)
                row["warp_error"] = metrics.warping_error_pair(prev_out, out, flow, valid)
                if references is not None or guides is not None:
                    static = metrics.static_mask_from_guide(prev_guide, guide)
                else:
                    static = metrics.static_mask_from_flow(flow, valid)
                row["flicker"] = metrics.flicker_pair(prev_out, out, static)
            prev_out, prev_guide = out, guide
        result.rows.append(row)
        if callback is not None:
            callback(i)
    if not result.rows:
        raise InputError("no frames to evaluate: the output is empty")
    keys = [k for k in result.rows[0] if k != "frame"]
    for k in keys:
        vals = np.array([r[k] for r in result.rows], dtype=np.float64)
        vals = vals[~np.isnan(vals)]
        result.summary[k] = float(vals.mean()) if vals.size else math.nan
    return result


# --------------------------------------------------------------------------------------
# CLI


def add_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", help="the video (or a single image) to score")
    parser.add_argument("--reference", "-r", metavar="REF", help="frame-aligned ground truth of the same size")
    parser.add_argument("--guide", metavar="LR", help="no-reference only: low-res source whose motion drives the temporal metrics")
    parser.add_argument("--json", metavar="FILE", help="write the summary (and the per-frame rows) as JSON")
    parser.add_argument("--per-frame", metavar="CSV", help="write one row per frame as CSV")
    parser.add_argument("--crop-border", type=int, default=0, metavar="N", help="ignore N pixels at each edge (SR convention: the scale)")
    parser.add_argument("--no-niqe", action="store_true", help="skip NIQE")
    parser.add_argument("--no-temporal", action="store_true", help="skip warping error and flicker")
    parser.add_argument("--niqe-model", metavar="NPZ", help="NIQE model (default: the one shipped with vsr)")
    parser.add_argument("--max-frames", type=int, default=None, metavar="N", help="score only the first N frames")


def _read_frames(path: str, max_frames: int | None) -> Iterator[np.ndarray]:
    """HxWx3 RGB arrays of a video through vsr.video (the only module that reads files)."""
    if not Path(path).exists():
        raise InputError(f"{path}: no such file")
    from vsr import video  # noqa: PLC0415  (lazy: `vsr --help` must not import av)

    for i, frame in enumerate(video.decode(path)):
        if max_frames is not None and i >= max_frames:
            return
        yield frame.image


def _fmt(v: float) -> str:
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    if isinstance(v, float) and math.isnan(v):
        return "-"
    return f"{v:.4f}" if abs(v) < 100 else f"{v:.2f}"


def format_table(result: EvalResult) -> str:
    """The summary as a two-column text table (metric, mean) with which way is better."""
    lines = [f"{result.mode}, {result.n_frames} frames", f"{'metric':<12}{'mean':>12}  better"]
    for k, v in result.summary.items():
        lines.append(f"{k:<12}{_fmt(v):>12}  {BETTER.get(k, '')}")
    return "\n".join(lines)


def _json_value(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def _csv_value(v) -> str:
    """Full precision; NaN (no value, e.g. the first frame's temporal metrics) is empty."""
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    return str(v)


def result_to_dict(result: EvalResult, **extra) -> dict:
    """JSON-ready dict: infinite PSNR becomes "inf", NaN becomes null."""
    return {
        **extra,
        "mode": result.mode,
        "frames": result.n_frames,
        "summary": {k: _json_value(v) for k, v in result.summary.items()},
        "per_frame": [{k: _json_value(v) for k, v in row.items()} for row in result.rows],
    }


def _write(path: str, write) -> None:
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as fh:
            write(fh)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from None


def run_cli(args: argparse.Namespace) -> int:
    if args.crop_border < 0:
        raise UsageError("--crop-border must be >= 0")
    if args.max_frames is not None and args.max_frames < 1:
        raise UsageError(f"--max-frames must be at least 1, got {args.max_frames}")
    niqe_model = None
    if not args.no_niqe:
        try:
            niqe_model = metrics.load_niqe_model(args.niqe_model)
        except (OSError, ValueError, KeyError):  # missing, not an .npz, or lacking a field
            raise ModelError(
                f"NIQE model not found or not readable ({args.niqe_model or 'vsr/assets/niqe_model.npz'}): pass --niqe-model, "
                "fit one with `python -m vsr.pipelines.fit_niqe`, or use --no-niqe"
            ) from None
    outputs = _read_frames(args.output, args.max_frames)
    refs = _read_frames(args.reference, args.max_frames) if args.reference else None
    guides = _read_frames(args.guide, args.max_frames) if args.guide else None
    result = evaluate_frames(
        outputs, refs, guides=guides, crop_border=args.crop_border, niqe_model=niqe_model,
        temporal=not args.no_temporal,
    )
    print(format_table(result))
    if args.json:
        doc = result_to_dict(result, output=args.output, reference=args.reference, guide=args.guide,
                             crop_border=args.crop_border)
        _write(args.json, lambda fh: json.dump(doc, fh, indent=2))
    if args.per_frame:
        def write_csv(fh) -> None:
            writer = csv.DictWriter(fh, fieldnames=list(result.rows[0]))
            writer.writeheader()
            for row in result.rows:
                writer.writerow({k: _csv_value(v) for k, v in row.items()})
        _write(args.per_frame, write_csv)
    return 0
