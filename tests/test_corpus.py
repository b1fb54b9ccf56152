"""Corpus builder: the photograph rule, the manifest and idempotent builds.

Everything runs on a local `kind: dir` source that the tests fill with small images:
real photographs from skimage.data and synthetic non-photos (gradient, logo, text).
No test downloads anything.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import zipfile
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from vsr.pipelines.corpus import (
    FilterRule,
    build_corpus,
    corpus_manifest_hash,
    image_stats,
    load_config,
    load_split,
    manifest_hash,
    photo_verdict,
)
from vsr.cli import main as vsr_main
from vsr.errors import EXIT_INPUT, ConfigError, InputError

RULE = FilterRule()


def _verdict(rgb: np.ndarray, alpha: np.ndarray | None = None) -> str | None:
    return photo_verdict(min(rgb.shape[:2]), image_stats(rgb, alpha, RULE), RULE)


def _gradient(h: int = 300, w: int = 400) -> np.ndarray:
    ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    return np.stack([ramp, 255 - ramp, np.full_like(ramp, 128)], -1).astype(np.uint8)


def _logo(h: int = 300, w: int = 400) -> np.ndarray:
    img = np.full((h, w, 3), 255, np.uint8)
    cv2.circle(img, (120, 150), 80, (200, 30, 30), -1, cv2.LINE_AA)
    cv2.rectangle(img, (230, 60), (360, 240), (20, 90, 200), -1)
    return img


def _text(h: int = 300, w: int = 400) -> np.ndarray:
    img = np.full((h, w, 3), 255, np.uint8)
    for k in range(8):
        cv2.putText(img, "lorem ipsum dolor", (10, 30 + 34 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (0, 0, 90), 2, cv2.LINE_AA)
    return img


def _write(path: Path, rgb: np.ndarray, alpha: np.ndarray | None = None) -> None:
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if alpha is not None:
        bgr = np.dstack([bgr, alpha])
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), bgr)


@pytest.fixture(scope="module")
def photos(photos) -> dict[str, np.ndarray]:
    """conftest's photographs, the astronaut cropped to 400x400 (a third size to the others)."""
    return {**photos, "astronaut": photos["astronaut"][:400, 100:500]}


def test_rule_keeps_photos_and_rejects_synthetic_images(photos):
    for name, rgb in photos.items():
        assert _verdict(rgb) is None, name
    assert _verdict(_gradient()).startswith("few colours")
    assert _verdict(_logo()).startswith("few colours")
    assert _verdict(_text()).startswith(("few colours", "flat areas"))
    assert _verdict(photos["coffee"][:200, :200]).startswith("too small")
    gray = cv2.cvtColor(cv2.cvtColor(photos["coffee"], cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    assert _verdict(gray).startswith("grayscale")
    alpha = np.full(photos["coffee"].shape[:2], 255, np.uint8)
    alpha[:100] = 0
    assert _verdict(photos["coffee"], alpha).startswith("transparency")
    # a smooth gradient with sensor-like noise has many colours but no structure
    rng = np.random.default_rng(0)
    noisy = np.clip(_gradient().astype(np.float32) + rng.normal(0, 2.0, (300, 400, 3)), 0, 255).astype(np.uint8)
    assert _verdict(noisy).startswith("smooth")


def test_stats_ranges(photos):
    s = image_stats(photos["coffee"], None, RULE)
    assert 0 < s["unique_ratio"] <= 1 and 0 <= s["flat_fraction"] < 0.1 and s["edge_fraction"] > 0.1
    assert s["colourfulness"] > 20 and s["transparent_fraction"] == 0
    flat = np.full((64, 64, 3), 90, np.uint8)
    s = image_stats(flat, None, RULE)
    assert s["flat_fraction"] == 1.0 and s["edge_fraction"] == 0.0 and s["colourfulness"] == 0.0


def _fake_source(tmp_path: Path, photos, *, validation=("local__photos-coffee",), include=None, exclude=None,
                 extra_sources=()) -> Path:
    src = tmp_path / "pkg"
    _write(src / "photos" / "coffee.png", photos["coffee"])
    _write(src / "photos" / "chelsea.png", photos["chelsea"])
    cv2.imwrite(str(src / "photos" / "astronaut.jpg"), cv2.cvtColor(photos["astronaut"], cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 92])
    # the same coffee photo at a lower resolution under another name: a near duplicate
    _write(src / "photos" / "coffee_small.png", cv2.resize(photos["coffee"], (450, 300), interpolation=cv2.INTER_AREA))
    _write(src / "art" / "gradient.png", _gradient())
    _write(src / "art" / "logo.png", _logo())
    _write(src / "art" / "text.png", _text())
    _write(src / "art" / "tiny.png", photos["chelsea"][:100, :100])
    (src / "art" / "notes.txt").write_text("not an image")
    (src / "art" / "broken.png").write_bytes(b"\x89PNG not really")
    cfg = {
        "sources": [{"name": "local", "kind": "dir", "path": "pkg", "version": "1.0", "licence": "test-only",
                     "globs": ["*.png", "*.jpg"]}, *extra_sources],
        "validation": list(validation),
        "include": include or {},
        "exclude": exclude or {},
    }
    path = tmp_path / "corpus.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_build_writes_filtered_images_and_manifest(tmp_path, photos):
    cfg_path = _fake_source(tmp_path, photos)
    out = tmp_path / "corpus"
    manifest, digest = build_corpus(out, load_config(cfg_path), tmp_path / "cache")

    kept = {i["id"]: i for i in manifest["images"]}
    assert set(kept) == {"local__photos-coffee", "local__photos-chelsea", "local__photos-astronaut"}
    reasons = {r["id"]: r["reason"] for r in manifest["rejected"]}
    assert reasons["local__photos-coffee_small"] == "near duplicate of local__photos-coffee"
    assert reasons["local__art-gradient"].startswith("few colours")
    assert reasons["local__art-logo"].startswith("few colours")
    assert reasons["local__art-tiny"].startswith("too small")
    assert reasons["local__art-broken"] == "unreadable"
    assert "local__art-notes" not in reasons  # not an image suffix: never a candidate

    coffee = kept["local__photos-coffee"]
    assert coffee["split"] == "val" and kept["local__photos-chelsea"]["split"] == "train"
    assert coffee["file"] == "images/val/local__photos-coffee.png"
    assert coffee["source"] == "local" and coffee["version"] == "1.0" and coffee["licence"] == "test-only"
    assert coffee["path"] == "photos/coffee.png"
    original = (tmp_path / "pkg" / "photos" / "coffee.png").read_bytes()
    written = (out / coffee["file"]).read_bytes()
    assert coffee["sha256_original"] == hashlib.sha256(original).hexdigest()
    assert coffee["sha256"] == hashlib.sha256(written).hexdigest() and coffee["bytes"] == len(written)
    img = cv2.imread(str(out / coffee["file"]), cv2.IMREAD_UNCHANGED)
    assert img.shape == (400, 600, 3) == (coffee["height"], coffee["width"], 3)
    np.testing.assert_array_equal(img[..., ::-1], photos["coffee"])  # lossless, RGB order kept

    assert manifest["counts"]["local"] == {"train": 2, "val": 1, "rejected": len(manifest["rejected"])}
    assert (out / "manifest.sha256").read_text().strip() == digest == corpus_manifest_hash(out)
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert load_split(out, "val") == [out.resolve() / coffee["file"]]
    assert [p.name for p in load_split(out, "train")] == ["local__photos-astronaut.png", "local__photos-chelsea.png"]


def test_build_is_idempotent_and_hash_stable(tmp_path, photos):
    cfg = load_config(_fake_source(tmp_path, photos))
    out = tmp_path / "corpus"
    m1, h1 = build_corpus(out, cfg, tmp_path / "cache")
    stamp = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.rglob("*")}
    m2, h2 = build_corpus(out, cfg, tmp_path / "cache")
    assert h1 == h2 and m1 == m2
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.rglob("*")} == stamp  # untouched
    assert not list(tmp_path.glob("corpus.vsr-tmp*"))
    # the hash is of the canonical content: key order and formatting do not matter
    shuffled = json.loads(json.dumps(m1, sort_keys=False))
    assert manifest_hash(dict(reversed(list(shuffled.items())))) == h1
    # and it changes with the content
    m1["images"][0]["licence"] = "other"
    assert manifest_hash(m1) != h1


def test_reviewed_lists_override_statistics(tmp_path, photos):
    cfg = load_config(_fake_source(
        tmp_path, photos,
        include={"local__art-text": "pretend it is a photo of a page", "local__art-tiny": "too small anyway"},
        exclude={"local__photos-chelsea": "pretend it is a painting"},
    ))
    manifest, _ = build_corpus(tmp_path / "corpus", cfg, tmp_path / "cache")
    kept = {i["id"]: i for i in manifest["images"]}
    reasons = {r["id"]: r["reason"] for r in manifest["rejected"]}
    assert kept["local__art-text"]["included_by_review"] is True
    assert reasons["local__photos-chelsea"] == "reviewed: pretend it is a painting"
    assert reasons["local__art-tiny"].startswith("too small")  # review never overrides the hard limits


def test_rebuild_with_new_content_swaps_the_folder(tmp_path, photos):
    cfg_path = _fake_source(tmp_path, photos)
    out = tmp_path / "corpus"
    _, h1 = build_corpus(out, load_config(cfg_path), tmp_path / "cache")
    _write(tmp_path / "pkg" / "photos" / "rocket.png", photos["rocket"])
    manifest, h2 = build_corpus(out, load_config(cfg_path), tmp_path / "cache")
    assert h2 != h1 and corpus_manifest_hash(out) == h2
    assert "local__photos-rocket" in {i["id"] for i in manifest["images"]}
    assert (out / "images" / "train" / "local__photos-rocket.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "corpus.yaml", "pkg"]  # no leftovers


def test_config_errors_name_the_problem(tmp_path, photos):
    with pytest.raises(ConfigError, match="validation names unknown images"):
        build_corpus(tmp_path / "c", load_config(_fake_source(tmp_path, photos, validation=["local__nope"])),
                     tmp_path / "cache")
    with pytest.raises(ConfigError, match="validation images .*local__art-logo.* were rejected"):
        build_corpus(tmp_path / "c", load_config(_fake_source(tmp_path, photos, validation=["local__art-logo"])),
                     tmp_path / "cache")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: []\nrules: {}\n")
    with pytest.raises(ConfigError, match="unknown keys"):
        load_config(bad)
    bad.write_text("sources:\n  - {name: x, kind: rpm, package: x, version: '1', licence: l}\n")
    with pytest.raises(ConfigError, match="kind must be deb, pypi or dir"):
        load_config(bad)
    assert not (tmp_path / "c").exists()


def test_missing_source_is_an_error_or_skipped(tmp_path, photos):
    missing = {"name": "gone", "kind": "dir", "path": "no-such-folder", "licence": "x"}
    cfg = load_config(_fake_source(tmp_path, photos, extra_sources=[missing]))
    with pytest.raises(InputError, match="corpus source gone: folder .* not found"):
        build_corpus(tmp_path / "corpus", cfg, tmp_path / "cache")
    manifest, _ = build_corpus(tmp_path / "corpus", cfg, tmp_path / "cache", skip_missing=True)
    assert "not found" in manifest["sources"]["gone"]["missing"]
    assert len(manifest["images"]) == 3
    # a corpus without a single photograph is an error, not an empty folder
    only_art = load_config(_fake_source(tmp_path, photos, validation=()))
    only_art = type(only_art)(sources=(replace(only_art.sources[0], globs=("art/*",)),))
    with pytest.raises(InputError, match="no image passed the photograph filter"):
        build_corpus(tmp_path / "art", only_art, tmp_path / "cache")
    assert not (tmp_path / "art").exists()


def test_cli_builds_and_reports_errors_in_one_line(tmp_path, photos, capsys):
    cfg_path = _fake_source(tmp_path, photos)
    out = tmp_path / "corpus"
    assert vsr_main(["corpus", "build", str(out), "--sources", str(cfg_path), "--cache", str(tmp_path / "cache")]) == 0
    printed = capsys.readouterr().out
    assert "local: train 2, val 1" in printed
    assert f"manifest sha256 {corpus_manifest_hash(out)}" in printed

    code = vsr_main(["corpus", "build", str(out), "--sources", str(tmp_path / "nope.yaml")])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_INPUT and len(err.splitlines()) == 1 and "not found" in err
    with pytest.raises(InputError, match="manifest.json not found"):
        load_split(tmp_path / "empty", "train")


def test_colour_profiles_and_high_depth_files(tmp_path, photos):
    import skimage
    from PIL import Image, ImageCms

    from vsr.pipelines.corpus import read_image

    # skimage's rocket.jpg is tagged Adobe RGB (1998): converted to sRGB, not read raw
    rocket = Path(skimage.__file__).parent / "data" / "rocket.jpg"
    decoded = read_image(rocket)
    raw = cv2.imread(str(rocket), cv2.IMREAD_UNCHANGED)[..., ::-1]
    assert decoded.colour == "converted from Adobe RGB (1998)"
    assert decoded.rgb.shape == raw.shape and 2 < np.abs(decoded.rgb.astype(int) - raw).mean() < 20
    # a profile LittleCMS cannot turn into sRGB: rejected, even if listed in `include`
    xyz = ImageCms.ImageCmsProfile(ImageCms.createProfile("XYZ")).tobytes()
    src = tmp_path / "pkg"
    src.mkdir()
    Image.fromarray(photos["chelsea"]).save(src / "xyz.png", icc_profile=xyz)
    assert read_image(src / "xyz.png").colour.startswith("not sRGB")
    # a 10-bit PPM is scaled by its maxval, not by 65535
    ten_bit = np.round(photos["chelsea"].astype(np.float64) * (1023 / 255)).astype(">u2")
    header = f"P6\n{ten_bit.shape[1]} {ten_bit.shape[0]}\n1023\n".encode()
    (src / "ten.ppm").write_bytes(header + ten_bit.tobytes())
    assert np.abs(read_image(src / "ten.ppm").rgb.astype(int) - photos["chelsea"]).max() <= 1

    _write(src / "coffee.png", photos["coffee"])
    (src / "rocket.jpg").write_bytes(rocket.read_bytes())
    cfg = {"sources": [{"name": "c", "kind": "dir", "path": "pkg", "licence": "x"}],
           "include": {"c__xyz": "would be kept if it were sRGB"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    manifest, _ = build_corpus(tmp_path / "out", load_config(tmp_path / "c.yaml"), tmp_path / "cache")
    kept = {i["id"]: i for i in manifest["images"]}
    assert kept["c__rocket"]["colour"] == "converted from Adobe RGB (1998)" and kept["c__coffee"]["colour"] == "sRGB"
    assert {r["id"]: r["reason"] for r in manifest["rejected"]}["c__xyz"].startswith("colour space: not sRGB")
    assert kept["c__ten"]["width"] == 451  # the 10-bit PPM is a candidate like any other file


def test_wheel_target_args_pin_the_platform():
    from vsr.pipelines.corpus import wheel_target_args

    args = wheel_target_args("scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl")
    assert args == ["--abi", "cp311", "--platform", "manylinux_2_24_x86_64", "--platform", "manylinux_2_28_x86_64",
                    "--implementation", "cp", "--python-version", "3.11"]
    assert wheel_target_args("scikit_video-1.1.11-py2.py3-none-any.whl") == []
    with pytest.raises(ConfigError, match="not a wheel file name"):
        wheel_target_args("scikit_image.whl")


def _deb(tmp_path: Path, downloads: Path, photos) -> None:
    """A real .deb (built with dpkg-deb) as apt-get download would leave it."""
    root = tmp_path / "debroot"
    _write(root / "usr" / "share" / "backgrounds" / "coffee.png", photos["coffee"])
    _write(root / "usr" / "share" / "backgrounds" / "logo.png", _logo())
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        "Package: vsr-test-photos\nVersion: 2:1.0-1\nArchitecture: all\nMaintainer: t <t@t>\nDescription: test\n")
    downloads.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root),
                    str(downloads / "vsr-test-photos_2%3a1.0-1_all.deb")], check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian/Ubuntu)")
def test_cached_deb_and_wheel_are_extracted_once(tmp_path, photos):
    cache = tmp_path / "cache"
    downloads = cache / "downloads"
    _deb(tmp_path, downloads, photos)
    wheel = "vsr_test_photos-0.1-py3-none-any.whl"
    buf = cv2.imencode(".png", cv2.cvtColor(photos["chelsea"], cv2.COLOR_RGB2BGR))[1].tobytes()
    with zipfile.ZipFile(downloads / wheel, "w") as zf:
        zf.writestr("vsr_test_photos/data/chelsea.png", buf)
    cfg = {"sources": [
        {"name": "deb", "kind": "deb", "package": "vsr-test-photos", "version": "2:1.0-1", "licence": "l1",
         "root": "usr/share/backgrounds"},
        {"name": "whl", "kind": "pypi", "package": "vsr-test-photos", "version": "0.1", "licence": "l2",
         "root": "vsr_test_photos/data", "wheel": wheel},
    ]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    manifest, h1 = build_corpus(tmp_path / "out", load_config(tmp_path / "c.yaml"), cache)
    assert {i["id"]: i["path"] for i in manifest["images"]} == {
        "deb__coffee": "usr/share/backgrounds/coffee.png", "whl__chelsea": "vsr_test_photos/data/chelsea.png"}
    assert manifest["sources"]["deb"]["archive_sha256"] == hashlib.sha256(
        (downloads / "vsr-test-photos_2%3a1.0-1_all.deb").read_bytes()).hexdigest()
    assert manifest["sources"]["whl"]["wheel"] == wheel
    extracted = sorted(p.name for p in (cache / "extracted").iterdir())
    assert len(extracted) == 2 and not any(n.endswith(".vsr-tmp") for n in extracted)
    # a second build re-extracts nothing and gives the same manifest
    stamp = {p: p.stat().st_mtime_ns for p in (cache / "extracted").rglob("*")}
    assert build_corpus(tmp_path / "out", load_config(tmp_path / "c.yaml"), cache)[1] == h1
    assert {p: p.stat().st_mtime_ns for p in (cache / "extracted").rglob("*")} == stamp


def _rcc(files: dict[str, bytes]) -> bytes:
    """A Qt binary resource bundle (format 3, as `rcc -binary` writes it) holding `files`
    under one folder `res/`; even entries are zlib-compressed (qCompress layout)."""
    import struct
    import zlib

    names, data = bytearray(), bytearray()

    def name(text: str) -> int:
        off = len(names)
        names.extend(struct.pack(">HI", len(text), 0) + text.encode("utf-16-be"))
        return off

    nodes = [struct.pack(">IHII", 0, 2, 1, 1) + bytes(8),  # root: one child, node 1
             struct.pack(">IHII", name("res"), 2, len(files), 2) + bytes(8)]
    for k, (fname, blob) in enumerate(files.items()):
        flags = 1 if k % 2 == 0 else 0
        stored = struct.pack(">I", len(blob)) + zlib.compress(blob) if flags else blob
        nodes.append(struct.pack(">IHHHI", name(fname), flags, 0, 0, len(data)) + bytes(8))
        data.extend(struct.pack(">I", len(stored)) + stored)
    tree = b"".join(nodes)
    head = 24
    return (b"qres" + struct.pack(">IIIII", 3, head, head + len(tree), head + len(tree) + len(data), 0)
            + tree + bytes(data) + bytes(names))


def test_qt_resource_bundles_are_expanded(tmp_path, photos):
    from vsr.pipelines.corpus import extract_qt_resources

    png = {k: cv2.imencode(".png", cv2.cvtColor(v, cv2.COLOR_RGB2BGR))[1].tobytes() for k, v in photos.items()}
    bundle = tmp_path / "b.rcc"
    bundle.write_bytes(_rcc({"chelsea.png": png["chelsea"], "coffee.png": png["coffee"]}))
    assert extract_qt_resources(bundle, tmp_path / "x") == 2
    assert (tmp_path / "x" / "res" / "chelsea.png").read_bytes() == png["chelsea"]
    assert (tmp_path / "x" / "res" / "coffee.png").read_bytes() == png["coffee"]
    (tmp_path / "bad.rcc").write_bytes(b"qres" + bytes(8))
    with pytest.raises(InputError, match="bad.rcc"):
        extract_qt_resources(tmp_path / "bad.rcc", tmp_path / "y")

    # through the builder: a wheel whose bundle is expanded at extraction
    cache = tmp_path / "cache"
    (cache / "downloads").mkdir(parents=True)
    wheel = "vsr_test_rcc-0.1-py3-none-any.whl"
    with zipfile.ZipFile(cache / "downloads" / wheel, "w") as zf:
        zf.writestr("pkg/rcc/animals.rcc", bundle.read_bytes())
        zf.writestr("pkg/rcc/other.rcc", b"not listed in qt_resources, never read")
    cfg = {"sources": [{"name": "qt", "kind": "pypi", "package": "vsr-test-rcc", "version": "0.1", "licence": "l",
                        "wheel": wheel, "root": "pkg/rcc", "globs": ["*.rcc.d/*"],
                        "qt_resources": ["pkg/rcc/animals.rcc"], "name_regex": r"([^/]+)\.png$"}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    manifest, _ = build_corpus(tmp_path / "out", load_config(tmp_path / "c.yaml"), cache)
    assert {i["id"]: i["path"] for i in manifest["images"]} == {
        "qt__chelsea": "pkg/rcc/animals.rcc.d/res/chelsea.png", "qt__coffee": "pkg/rcc/animals.rcc.d/res/coffee.png"}
