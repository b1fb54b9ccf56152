"""Hostile inputs and faults against a real `vsr upscale` process (issue 11).

    python -m benchmarks.robustness [--only SUBSTRING] [--keep]

Every case runs `python -m vsr.cli upscale ...` as a subprocess, with a tiny random-init
model this script builds (so a case costs seconds, not minutes), on a tiny input the case
makes. The verdict of a case: the exit code it must have, no traceback on stderr (every
line `vsr: ...` or a `vsr: warning:` log line), no partial file left (no `.part`/`.tmp`, no OUT
from a failed run, no work folder unless the run is meant to be resumable), and the
case's own check (a victim file untouched, a resumed file equal to an uninterrupted one,
no code run by a crafted file). One line per case, then the count.

The cases of `benchmarks/robustness_cases_streams.py` (timestamps, alpha, damaged input,
partial runs) are run too, with the same verdict.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ["--steps", "1", "--tile", "32", "--overlap", "8", "--device", "cpu", "--dtype", "float32", "--quiet"]


# ------------------------------------------------------------------------------- set-up
def build_tiny_model(folder: Path, *, safetensors: bool = True) -> Path:
    """A random-init 2-level UNet2DModel (crop 32) and a linear DDPM schedule, as a vsr
    model folder; weights as safetensors, or as a pickle .bin."""
    import torch
    import yaml
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    unet.save_pretrained(folder / "unet", safe_serialization=safetensors)
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").save_pretrained(folder / "scheduler")
    (folder / "model_card.yaml").write_text(yaml.safe_dump(
        {"name": folder.name, "crop": 32, "pixel_unshuffle": 1, "value_range": [-1, 1], "clip_x0": True,
         "prf": {"scales": [2, 4, 8], "t": [0.2, 0.4, 0.55]}}))
    return folder


def clip(path: Path, *, frames: int = 12, width: int = 64, height: int = 48, audio: bool = True) -> Path:
    sys.path.insert(0, str(ROOT))
    from tests.media import make_clip

    return make_clip(path, frames=frames, width=width, height=height, audio=("aac",) if audio else ())


def env(**extra: str) -> dict:
    paths = (str(ROOT), os.environ.get("PYTHONPATH", ""))  # this checkout first, what was there kept
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(p for p in paths if p), **extra}


def argv(*args) -> list[str]:
    return [sys.executable, "-m", "vsr.cli", "upscale", *map(str, args)]


def upscale(*args, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv(*args), cwd=ROOT, env=kw.pop("env", env()), capture_output=True, text=True,
                          timeout=timeout, **kw)


def start(*args) -> subprocess.Popen:
    return subprocess.Popen(argv(*args), cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def work(out: Path) -> Path:
    return out.parent / f".{out.name}.vsr-tmp"


def segments_done(out: Path) -> int:
    j = work(out) / "journal.jsonl"
    return sum('"segment"' in x for x in j.read_text().splitlines()) if j.exists() else 0


def wait_for(pred: Callable[[], bool], proc: subprocess.Popen, timeout: float = 300) -> None:
    t0 = time.time()
    while not pred():
        if proc.poll() is not None or time.time() - t0 > timeout:
            raise RuntimeError(f"the run ended (rc {proc.returncode}) before the point to interrupt it")
        time.sleep(0.005)


def frames_of(path: Path) -> str:
    """A digest of every decoded frame and its timestamp."""
    h = hashlib.sha256()
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            h.update(f.to_ndarray(format="rgb24").tobytes())
            h.update(str(f.pts).encode())
    return h.hexdigest()


@dataclass
class Ctx:
    model: Path
    pickle_model: Path
    reference: Path  # the uninterrupted run of `source` (segments of 3 frames)
    source: Path
    dirs: Path


@dataclass
class Outcome:
    proc: subprocess.CompletedProcess | None
    problem: str | None = None  # the case's own check
    resumable: bool = False  # a work folder may stay (the run is meant to be resumed)
    killed_part: bool = False  # a kill -9's half-written segment may stay in it (until --resume)


CASES: list[tuple[str, int, Callable[[Path, Ctx], Outcome]]] = []


def case(name: str, expect: int):
    def register(fn: Callable[[Path, Ctx], Outcome]) -> Callable[[Path, Ctx], Outcome]:
        CASES.append((name, expect, fn))
        return fn

    return register


def simple(name: str, expect: int, make: Callable[[Path, Ctx], list], **kw) -> None:
    """A case that is one run: make(d, ctx) -> the arguments after `vsr upscale`."""
    def run(d: Path, ctx: Ctx) -> Outcome:
        src, out, *rest = make(d, ctx)
        return Outcome(upscale(src, out, "--model", ctx.model, *ENGINE, *rest), **kw)

    case(name, expect)(run)


def _write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


# ------------------------------------------------------------------------ bad inputs
simple("input-missing", 3, lambda d, c: [d / "nope.mp4", d / "o.mp4"])
simple("input-zero-bytes", 3, lambda d, c: [_write(d / "in.mp4", b""), d / "o.mp4"])
simple("input-text-renamed-mp4", 3, lambda d, c: [_write(d / "in.mp4", "hello, I am not a video\n" * 20), d / "o.mp4"])
simple("input-random-bytes", 3, lambda d, c: [_write(d / "in.mkv", np.random.default_rng(1).bytes(8000)), d / "o.mkv"])
simple("input-a-folder", 3, lambda d, c: [d, d / "o.mkv"])
simple("input-mp4-index-at-end-cut-50pct",
       3, lambda d, c: [_write(d / "cut.mp4", (b := clip(d / "in.mp4").read_bytes())[: len(b) // 2]), d / "o.mkv"])


def _audio_only(d: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from tests.media import _write_tone

    with av.open(str(d / "in.m4a"), "w") as o:
        s = o.add_stream("aac", rate=48000)
        _write_tone(o, s, 0.3, 440.0)
    return d / "in.m4a"


simple("input-audio-only", 3, lambda d, c: [_audio_only(d), d / "o.mkv"])


def _huge_png(d: Path) -> Path:
    """A valid PNG header claiming 100000 x 100000 pixels, with a 1-pixel body."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    body = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0\0\0\0")) + chunk(b"IEND", b"")
    return _write(d / "huge.png", body)


simple("input-huge-dimensions-header", 3, lambda d, c: [_huge_png(d), d / "o.mkv"])


def _too_big(d: Path) -> Path:
    """A real 8200 x 8200 picture: 2x would be 16400 pixels wide, beyond any output vsr makes."""
    import cv2

    cv2.imwrite(str(d / "big.png"), np.zeros((8200, 8200), np.uint8))
    return d / "big.png"


simple("input-dimensions-beyond-16384-at-2x", 2, lambda d, c: [_too_big(d), d / "o.mkv"])


def _unknown_codec(d: Path) -> Path:
    """A Matroska file whose video track's CodecID names a codec nobody has."""
    data = clip(d / "in.mkv", audio=False).read_bytes()
    assert b"V_MPEG4/ISO/AVC" in data
    return _write(d / "unknown.mkv", data.replace(b"V_MPEG4/ISO/AVC", b"V_QQQQQ/ISO/XYZ"))


simple("input-unknown-codec", 3, lambda d, c: [_unknown_codec(d), d / "o.mkv"])
simple("input-2x2-pixels", 0, lambda d, c: [clip(d / "in.mkv", width=2, height=2, frames=3, audio=False), d / "o.mkv",
                                              "--codec", "ffv1"])
simple("input-url-unreachable", 3, lambda d, c: ["http://127.0.0.1:9/none.mp4", d / "o.mkv"])

# ------------------------------------------------------------------------ outputs
simple("output-folder-missing", 4, lambda d, c: [c.source, d / "no" / "o.mkv"])
simple("output-folder-is-a-file", 4, lambda d, c: [c.source, _write(d / "afile", "x") / "o.mkv"])
simple("output-is-the-input", 4, lambda d, c: [shutil.copy(c.source, d / "in.mkv"), d / "in.mkv", "--overwrite"])
simple("output-exists", 4, lambda d, c: [c.source, _write(d / "o.mkv", "mine")])
simple("output-is-a-folder", 4, lambda d, c: [c.source, (d / "o.mkv").mkdir() or d / "o.mkv"])
simple("output-unknown-extension", 2, lambda d, c: [c.source, d / "o.xyz"])  # docs/cli.md: a usage error
simple("output-webm-with-x264", 6, lambda d, c: [c.source, d / "o.webm"])


@case("output-folder-read-only", 4)
def _read_only(d: Path, ctx: Ctx) -> Outcome:
    ro = d / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)], capture_output=True).returncode:
        os.chmod(ro, 0o500)  # not root: permissions do it
    try:
        return Outcome(upscale(ctx.source, ro / "o.mkv", "--model", ctx.model, *ENGINE))
    finally:
        subprocess.run(["umount", "-l", str(ro)], capture_output=True)


# ------------------------------------------------------------------------ arguments
for _name, _extra in [
    ("arg-scale-nan", ["--scale", "nan"]), ("arg-scale-inf", ["--scale", "inf"]), ("arg-scale-negative", ["--scale", "-2"]),
    ("arg-scale-1e308", ["--scale", "1e308"]), ("arg-size-0x0", ["--size", "0x0"]),
    ("arg-size-400-digits", ["--size", "9" * 400 + "x" + "9" * 400]), ("arg-target-400-digits", ["--target", "9" * 400 + "p"]),
    ("arg-size-smaller-than-input", ["--size", "32x24"]), ("arg-seed-2**64", ["--seed", str(2**64)]),
    ("arg-seed-negative", ["--seed", "-1"]), ("arg-steps-0", ["--steps", "0"]), ("arg-tile-negative", ["--tile", "-32"]),
    ("arg-batch-0", ["--batch", "0"]), ("arg-crf-nan", ["--crf", "nan"]), ("arg-segment-frames-0", ["--segment-frames", "0"]),
    ("arg-noise-level-1.5", ["--noise-level", "1.5"]), ("arg-preview-0", ["--preview", "0"]),
    ("arg-device-cuda-missing", ["--device", "cuda"]), ("arg-steps-not-a-number", ["--steps", "many"]),
]:
    simple(_name, 2, lambda d, c, e=_extra: [c.source, d / "o.mkv", *e])
simple("arg-unknown-encoder", 6, lambda d, c: [c.source, d / "o.mkv", "--codec", "libnope"])
simple("arg-audio-encoder", 6, lambda d, c: [c.source, d / "o.mkv", "--codec", "aac"])
simple("arg-unknown-x264-preset", 6, lambda d, c: [c.source, d / "o.mkv", "--preset", "warp9"])
simple("arg-encoder-opt-nobody-reads", 6, lambda d, c: [c.source, d / "o.mkv", "--encoder-opt", "bogus=1"])


# ------------------------------------------------------------------------ configs
@case("config-yaml-python-object", 2)
def _yaml_object(d: Path, ctx: Ctx) -> Outcome:
    marker = d / "pwned"
    cfg = _write(d / "c.yaml", f'steps: !!python/object/apply:os.mkdir ["{marker}"]\n')
    proc = upscale(ctx.source, d / "o.mkv", "--model", ctx.model, *ENGINE, "--config", cfg)
    return Outcome(proc, "the YAML ran code" if marker.exists() else None)


simple("config-yaml-billion-laughs", 2, lambda d, c: [c.source, d / "o.mkv", "--config", _write(d / "c.yaml", (
    'a: &a ["x","x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n'
    'd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nsteps: [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n'))])
simple("config-binary-file", 2, lambda d, c: [c.source, d / "o.mkv", "--config", _write(d / "c.yaml", b"\x9f\x00\xff" * 30)])
simple("config-unknown-key", 2, lambda d, c: [c.source, d / "o.mkv", "--config", _write(d / "c.yaml", "stepz: 2\n")])
simple("config-missing", 2, lambda d, c: [c.source, d / "o.mkv", "--config", d / "none.yaml"])
simple("config-not-a-mapping", 2, lambda d, c: [c.source, d / "o.mkv", "--config", _write(d / "c.yaml", "- 1\n- 2\n")])


# ------------------------------------------------------------------------ models
@case("model-folder-missing", 5)
def _model_missing(d: Path, ctx: Ctx) -> Outcome:
    return Outcome(upscale(ctx.source, d / "o.mkv", "--model", d / "nomodel", *ENGINE))


@case("model-folder-empty", 5)
def _model_empty(d: Path, ctx: Ctx) -> Outcome:
    (d / "m").mkdir()
    return Outcome(upscale(ctx.source, d / "o.mkv", "--model", d / "m", *ENGINE))


@case("model-pickle-weights-refused", 5)
def _model_pickle(d: Path, ctx: Ctx) -> Outcome:
    return Outcome(upscale(ctx.source, d / "o.mkv", "--model", ctx.pickle_model, *ENGINE))


@case("model-pickle-weights-allowed", 0)
def _model_pickle_ok(d: Path, ctx: Ctx) -> Outcome:
    return Outcome(upscale(ctx.source, d / "o.mkv", "--model", ctx.pickle_model, *ENGINE, "--allow-pickle"))


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@case("model-crafted-bin-allowed-runs-no-code", 5)
def _model_evil(d: Path, ctx: Ctx) -> Outcome:
    import torch

    model = d / "evil"
    shutil.copytree(ctx.pickle_model, model)
    marker = d / "pwned"
    torch.save({"x": _Evil(str(marker))}, model / "unet" / "diffusion_pytorch_model.bin")
    proc = upscale(ctx.source, d / "o.mkv", "--model", model, *ENGINE, env=env(VSR_ALLOW_PICKLE="1"))
    return Outcome(proc, "the crafted weights ran code" if marker.exists() else None)


@case("checkpoint-crafted-train-export", 3)
def _ckpt_evil(d: Path, ctx: Ctx) -> Outcome:
    import torch

    marker = d / "pwned"
    torch.save({"config": {}, "unet": {}, "ema": {}, "x": _Evil(str(marker))}, d / "last.pt")
    proc = subprocess.run([sys.executable, "-m", "vsr.cli", "train", "export", "--checkpoint", str(d / "last.pt"),
                           "--out", str(d / "exported")], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    return Outcome(proc, "the crafted checkpoint ran code" if marker.exists() else None)


# ------------------------------------------------------------------------ faults
@case("fault-out-of-memory", 7)
def _oom(d: Path, ctx: Ctx) -> Outcome:
    import cv2

    png = d / "big.png"
    cv2.imwrite(str(png), (np.random.default_rng(0).random((512, 512, 3)) * 255).astype(np.uint8))
    code = ("import vsr.pipelines.upscale_cli, vsr.engine, torch, av, cv2; torch.zeros(1); "
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmPeak')][0])")
    base = int(subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env(), capture_output=True, text=True).stdout) * 1024
    cap_kib = (base + (400 << 20)) >> 10  # 400 MiB more than the imports take
    cmd = argv(png, d / "o.mp4", "--model", ctx.model, *ENGINE, "--scale", "4", "--batch", "8")
    proc = subprocess.run(["sh", "-c", f'ulimit -v {cap_kib} && exec "$@"', "sh", *cmd], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=600)
    return Outcome(proc, None if "retrying with --batch 4" in proc.stderr else "no retry with half the batch",
                   resumable=True)


@case("fault-disk-full-then-resume", 0)
def _disk_full(d: Path, ctx: Ctx) -> Outcome:
    mnt = d / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12k", "tmpfs", str(mnt)], capture_output=True).returncode:
        return Outcome(None, "cannot mount a tmpfs (needs root)")
    try:
        out = mnt / "o.mkv"
        args = [ctx.source, out, "--model", ctx.model, *ENGINE, "--segment-frames", "3"]
        full = upscale(*args)
        if full.returncode != 4 or "disk full" not in full.stderr or list(work(out).glob("*.part")):
            return Outcome(full, f"disk full: exit {full.returncode}, {full.stderr.strip()[-200:]!r}")
        subprocess.run(["mount", "-o", "remount,size=4096k", str(mnt)], check=True)
        proc = upscale(*args, "--resume")
        problem = None if proc.returncode or frames_of(out) == frames_of(ctx.reference) else "resumed file differs"
        shutil.copy(out, d / "o.mkv") if out.exists() else None
        return Outcome(proc, problem)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@case("fault-second-process-same-out", 4)
def _second(d: Path, ctx: Ctx) -> Outcome:
    out = d / "o.mkv"
    args = [ctx.source, out, "--model", ctx.model, *ENGINE, "--segment-frames", "3"]
    first = start(*args)
    try:
        wait_for(lambda: segments_done(out) >= 1, first)
        first.send_signal(signal.SIGSTOP)
        second = upscale(*args, "--overwrite")
    finally:
        first.send_signal(signal.SIGCONT)
    first.communicate(timeout=600)
    problem = None
    if f"pid {first.pid}" not in second.stderr:
        problem = "the refusal does not name the running process"
    elif first.returncode != 0 or frames_of(out) != frames_of(ctx.reference):
        problem = f"the first run was disturbed (exit {first.returncode})"
    return Outcome(second, problem)


def _interrupt_then_resume(d: Path, ctx: Ctx, at: Callable[[Path, subprocess.Popen], None], how=signal.SIGINT,
                           tamper: Callable[[Path], None] | None = None, may_finish: bool = False) -> Outcome:
    """Signal a job at `at`, then resume it. may_finish: the signal may land after the work
    is done (the file renamed onto OUT, the work folder gone), when vsr ignores it and exits 0
    with a complete OUT (docs/cli.md); otherwise the job must exit 130."""
    out = d / "o.mkv"
    args = [ctx.source, out, "--model", ctx.model, *ENGINE, "--segment-frames", "3"]
    proc = start(*args)
    at(out, proc)
    proc.send_signal(how)
    _, err = proc.communicate(timeout=600)
    finished = may_finish and proc.returncode == 0 and out.exists() and not work(out).exists()
    if how != signal.SIGKILL and not finished and (proc.returncode != 130 or "Traceback" in err):
        return Outcome(subprocess.CompletedProcess(proc.args, proc.returncode, "", err), "the interrupt did not exit 130")
    if tamper is not None:
        tamper(work(out) / "journal.jsonl")
    if out.exists() and not work(out).exists():
        res = subprocess.CompletedProcess(proc.args, 0, "", "")
    else:
        res = upscale(*args, "--resume")
    problem = None if res.returncode or frames_of(out) == frames_of(ctx.reference) else "resumed file differs"
    return Outcome(res, problem)


def _after_segments(n: int) -> Callable[[Path, subprocess.Popen], None]:
    return lambda out, proc: wait_for(lambda: segments_done(out) >= n, proc)


def _tear(journal: Path) -> None:
    text = journal.read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[1]
    journal.write_text(text[: len(text) - len(last) - 1] + last[: len(last) // 2])


def _in_assemble(out: Path, proc: subprocess.Popen) -> None:
    wait_for(lambda: (work(out) / out.name).exists() or out.exists(), proc)


case("fault-sigint-in-segments-then-resume", 0)(lambda d, c: _interrupt_then_resume(d, c, _after_segments(2)))
case("fault-sigterm-in-segments-then-resume", 0)(
    lambda d, c: _interrupt_then_resume(d, c, _after_segments(2), how=signal.SIGTERM))
case("fault-sigint-in-assemble", 0)(lambda d, c: _interrupt_then_resume(d, c, _in_assemble, may_finish=True))
case("fault-kill-9-then-resume", 0)(lambda d, c: _interrupt_then_resume(d, c, _after_segments(2), how=signal.SIGKILL))
case("fault-torn-journal-line-then-resume", 0)(
    lambda d, c: _interrupt_then_resume(d, c, _after_segments(3), how=signal.SIGKILL, tamper=_tear))


def _killed_after_one_segment(d: Path, ctx: Ctx) -> list:
    """Start a 3-frame-segment job into d/o.mkv, SIGKILL it once a segment is done; its args."""
    out = d / "o.mkv"
    args = [ctx.source, out, "--model", ctx.model, *ENGINE, "--segment-frames", "3"]
    proc = start(*args)
    wait_for(lambda: segments_done(out) >= 1, proc)
    proc.kill()
    proc.wait()
    return args


@case("fault-work-folder-left-without-resume", 4)
def _left(d: Path, ctx: Ctx) -> Outcome:
    # refused without --resume, the run leaves the folder as the kill -9 did: a segment being
    # written then stays a .part, which --resume removes (docs/cli.md)
    return Outcome(upscale(*_killed_after_one_segment(d, ctx)), resumable=True, killed_part=True)


@case("fault-resume-with-other-options", 2)
def _changed(d: Path, ctx: Ctx) -> Outcome:
    return Outcome(upscale(*_killed_after_one_segment(d, ctx), "--resume", "--crf", "30"), resumable=True)


@case("fault-resume-other-dtype", 2)
def _dtype(d: Path, ctx: Ctx) -> Outcome:
    from vsr.jobs.journal import journal_line, read_journal

    args = _killed_after_one_segment(d, ctx)
    j = work(d / "o.mkv") / "journal.jsonl"
    recs = read_journal(j)
    recs[0]["header"]["runtime"]["dtype"] = "bfloat16"
    j.write_text("".join(journal_line(r) for r in recs))
    return Outcome(upscale(*args, "--resume"), resumable=True)


@case("symlink-work-folder", 4)
def _symlink_work(d: Path, ctx: Ctx) -> Outcome:
    target = d / "elsewhere"
    target.mkdir()
    work(d / "o.mkv").symlink_to(target, target_is_directory=True)
    proc = upscale(ctx.source, d / "o.mkv", "--model", ctx.model, *ENGINE, "--overwrite")
    problem = "the symlink's target was written" if list(target.iterdir()) else None
    work(d / "o.mkv").unlink()
    return Outcome(proc, problem)


@case("symlink-planted-at-preview", 0)
def _symlink_preview(d: Path, ctx: Ctx) -> Outcome:
    victim = _write(d.parent / f"{d.name}-victim.txt", "precious")
    (d / "o.preview-00.png").symlink_to(victim)
    proc = upscale(ctx.source, d / "o.mkv", "--model", ctx.model, *ENGINE, "--preview", "1", "--overwrite")
    problem = None if victim.read_text() == "precious" else "the preview was written through the symlink"
    victim.unlink()
    return Outcome(proc, problem)


# ------------------------------------------------------------------------ the runner
def leftovers(d: Path, resumable: bool) -> list[str]:
    """Partial files a run must not leave behind in its folder."""
    bad = []
    for p in d.rglob("*"):
        if p.name.endswith((".part", ".tmp")) or ".vsr-tmp." in p.name:
            bad.append(p.name)
        elif p.name.endswith(".vsr-tmp") and not resumable:
            bad.append(p.name)
    return bad


def verdict(expect: int, outcome: Outcome, d: Path) -> str | None:
    proc = outcome.proc
    if proc is None:
        return outcome.problem or "did not run"
    if proc.returncode != expect:
        tail = proc.stderr.strip().splitlines()[-1:] or [""]
        return f"exit {proc.returncode}, expected {expect}: {tail[0][:160]}"
    if "Traceback" in proc.stderr:
        return "a traceback on stderr"
    lines = proc.stderr.strip().splitlines()
    stray = [x for x in lines if not x.startswith("vsr: ")]
    if stray:
        return f"stderr line not from vsr: {stray[0][:160]!r}"
    if expect != 0 and not (lines and lines[-1].startswith("vsr: ")):
        return "no one-line 'vsr: ...' error"
    if outcome.problem:
        return outcome.problem
    left = [n for n in leftovers(d, outcome.resumable or expect == 0)
            if not (outcome.killed_part and n.startswith("segment-") and n.endswith(".vsrseg.part"))]
    return f"left {', '.join(left)}" if left else None


def stream_cases() -> list:
    try:
        from benchmarks import robustness_cases_streams
    except ImportError:
        return []
    return robustness_cases_streams.CASES


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help="run the cases whose name contains this")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    # the fault cases send real SIGINTs to `vsr` processes; started as a background job
    # (`&`, nohup) this process has SIGINT ignored, every child would inherit that and vsr
    # keeps a signal ignored at launch ignored: restore Python's handler (children then
    # start from SIG_DFL), as tests/conftest.py does for pytest
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.path.insert(0, str(ROOT))
    base = Path(tempfile.mkdtemp(prefix="vsr-robustness-"))
    ctx = Ctx(build_tiny_model(base / "tiny"), build_tiny_model(base / "tiny-pickle", safetensors=False),
              base / "ref.mkv", clip(base / "src.mkv", frames=18), base)
    ref = upscale(ctx.source, ctx.reference, "--model", ctx.model, *ENGINE, "--segment-frames", "3")
    if ref.returncode:
        print(f"the reference run failed: {ref.stderr}")
        return 1
    results: list[tuple[str, str | None]] = []
    t_all = time.perf_counter()
    cases = [(n, e, fn, "vsr") for n, e, fn in CASES] + [(c[0], c[3], c, "streams") for c in stream_cases()]
    for name, expect, fn, kind in cases:
        if args.only and args.only not in name:
            continue
        d = base / "cases" / name
        d.mkdir(parents=True)
        t0 = time.perf_counter()
        try:
            if kind == "vsr":
                problem = verdict(expect, fn(d, ctx), d)
            else:
                _, make_input, cargs, _, check = fn
                src = make_input(d)
                out = d / cargs[0]
                proc = upscale(src, out, *cargs[1:], "--model", ctx.model, *ENGINE)
                problem = verdict(expect, Outcome(proc, None), d)
                if problem is None:
                    problem = check(out)
        except Exception as exc:  # noqa: BLE001 - a case that cannot even be set up fails
            problem = f"case error: {type(exc).__name__}: {exc}"
        results.append((name, problem))
        mark = "ok  " if problem is None else "FAIL"
        print(f"{mark} {name:<44} exit {expect:<3} {time.perf_counter() - t0:5.1f} s  {problem or ''}", flush=True)
    good = sum(p is None for _, p in results)
    print(f"{good}/{len(results)} cases correct ({time.perf_counter() - t_all:.0f} s)")
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    return 0 if good == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
