"""The corpus manifest: its canonical hash, and reading a built corpus's split."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from vsr.errors import ConfigError, InputError

Split = Literal["train", "val"]


def canonical_json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def manifest_hash(manifest: dict) -> str:
    """sha256 of the canonical JSON of a manifest dict (sorted keys, no spaces)."""
    return hashlib.sha256(canonical_json(manifest)).hexdigest()


def corpus_manifest_hash(corpus_dir: str | Path) -> str:
    """The hash of DIR/manifest.json, recomputed from its content (not read from the
    .sha256 file), so a hand-edited manifest shows a different hash."""
    path = Path(corpus_dir) / "manifest.json"
    try:
        return manifest_hash(json.loads(path.read_text()))
    except FileNotFoundError:
        raise InputError(f"{path} not found: build the corpus with 'vsr corpus build {corpus_dir}'") from None


def load_split(corpus_dir: str | Path, split: Split) -> list[Path]:
    """Absolute paths of the corpus images of `split` ("train" or "val"), manifest order.

    Raises InputError when the manifest is missing or a listed file is gone.
    """
    if split not in ("train", "val"):
        raise ConfigError(f"split must be 'train' or 'val', not {split!r}")
    corpus_dir = Path(corpus_dir).resolve()
    path = corpus_dir / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path} not found: build the corpus with 'vsr corpus build {corpus_dir}'") from None
    out = [corpus_dir / e["file"] for e in manifest["images"] if e["split"] == split]
    missing = [p for p in out if not p.is_file()]
    if missing:
        raise InputError(f"corpus {corpus_dir}: {len(missing)} listed images are missing (e.g. {missing[0]}); rebuild it")
    return out
