"""Fit the NIQE natural-scene-statistics model on the corpus's pristine photographs.

    python -m vsr.pipelines.fit_niqe --corpus data/corpus --out vsr/assets/niqe_model.npz

NIQE (Mittal et al. 2013) scores an image by how far its patch statistics are from those
of pristine photographs. The original model was fitted on 125 photographs that cannot be
had here, so vsr fits its own on the train split of its corpus (the photographs it also
trains the prior on), with the paper's settings: 96 px patches, patches kept when their
sharpness is above 0.75 of the image's sharpest. Scores are therefore comparable between
runs of vsr's model, not with published NIQE numbers.

Writes the model (.npz: mu (36,), cov (36, 36), patch size, threshold, patch count) and,
next to it, ``<name>.json`` with its provenance: the corpus manifest hash, settings,
counts, date and the command that made it.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from vsr.pipelines.corpus import corpus_manifest_hash, load_split
from vsr.errors import InputError, VsrError
from vsr.metrics import fit_niqe

log = logging.getLogger(__name__)


def _read_rgb(paths: list[Path]) -> Iterator[np.ndarray]:
    for path in paths:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise InputError(f"{path}: cannot decode the image; rebuild the corpus")
        yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def fit_from_corpus(corpus: Path, out: Path, *, patch_size: int = 96, sharpness: float = 0.75,
                    command: str | None = None) -> dict:
    """Fit on ``corpus``'s train split, write ``out`` (.npz) and ``out`` with .json; returns
    the provenance dict."""
    paths = load_split(corpus, "train")
    if not paths:
        raise InputError(f"corpus {corpus} has no train images")
    log.info("fitting NIQE on %d images", len(paths))
    model = fit_niqe(_read_rgb(paths), patch_size=patch_size, sharpness_threshold=sharpness)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    provenance = {
        "what": "NIQE pristine model (Mittal et al. 2013): mean and covariance of 36 NSS patch features",
        "corpus_manifest_hash": corpus_manifest_hash(corpus),
        "split": "train",
        "n_images": len(paths),
        "n_patches": model.n_patches,
        "patch_size": patch_size,
        "sharpness_threshold": sharpness,
        "luma": "BT.601 studio range, 0..255 scale",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command or f"python -m vsr.pipelines.fit_niqe --corpus {corpus} --out {out}",
    }
    out.with_suffix(".json").write_text(json.dumps(provenance, indent=1, sort_keys=True) + "\n")
    return provenance


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vsr.pipelines.fit_niqe", description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path("data/corpus"), help="corpus folder (manifest.json)")
    parser.add_argument("--out", type=Path, default=Path("vsr/assets/niqe_model.npz"))
    parser.add_argument("--patch-size", type=int, default=96)
    parser.add_argument("--sharpness", type=float, default=0.75, help="keep patches above this fraction of the sharpest")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    command = "python -m vsr.pipelines.fit_niqe " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        prov = fit_from_corpus(args.corpus, args.out, patch_size=args.patch_size, sharpness=args.sharpness,
                               command=command)
    except VsrError as exc:
        print(f"fit_niqe: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"{args.out}: {prov['n_patches']} patches from {prov['n_images']} images "
          f"(corpus {prov['corpus_manifest_hash'][:12]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
