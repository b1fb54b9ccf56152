"""Issue 11, items 6-14: faults a job must survive, each on a tiny input the test makes.

Out of memory (a real address-space cap), a full disk (a real 12 KiB tmpfs), two real
processes on one OUT, a torn journal line, SIGINT at every phase of a real process, the
encoder's bytes under CPU load and on any number of CPUs, the device/dtype a resume must
match, checkpoints and pickle weights that would run code, and symlinks planted where vsr
writes. Every failure is one `vsr: ...` line with its exit code, never a traceback.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import child_env
from tests.media import decode_video, make_clip, moving_picture
from vsr.errors import EXIT_INPUT, EXIT_INTERRUPTED, EXIT_MODEL, EXIT_OUTPUT, EXIT_RESOURCES, EXIT_USAGE
from vsr.jobs import JOURNAL, temp_dir_for
from vsr.jobs.journal import journal_line, read_journal

ROOT = Path(__file__).resolve().parents[1]
OPTS = ["--steps", "1", "--tile", "32", "--overlap", "8", "--device", "cpu", "--dtype", "float32",
        "--preset", "ultrafast", "--quiet"]


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "vsr.cli", "upscale", *map(str, args)]


def _env(**extra) -> dict:
    return child_env(**extra)


def _run(args: list, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(_cli(*args), cwd=ROOT, env=kw.pop("env", _env()), capture_output=True, text=True,
                          timeout=timeout, **kw)


def _assert_one_line(proc: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """Exit `code`, no traceback, and the last stderr line is `vsr: ...` naming `words`
    (earlier lines may only be `vsr: warning:` log lines)."""
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert err and err[-1].startswith("vsr: "), proc.stderr
    assert all(line.startswith("vsr: ") for line in err), proc.stderr
    for w in words:
        assert w in err[-1], (w, err[-1])
    return err[-1]


def _segments(journal: Path) -> int:
    return sum('"segment"' in x for x in journal.read_text().splitlines()) if journal.exists() else 0


def _wait(predicate, proc: subprocess.Popen | None = None, timeout: float = 300) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) first: {proc.stderr.read()}")
        time.sleep(0.005)
    raise AssertionError("timed out")


def _same_video(a: Path, b: Path) -> None:
    fa, ta = decode_video(a)
    fb, tb = decode_video(b)
    assert len(fa) == len(fb) and ta == tb
    assert all(np.array_equal(x, y) for x, y in zip(fa, fb))


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clip") / "in.mkv", width=64, height=48, frames=18, audio=("aac",))


@pytest.fixture(scope="module")
def reference(clip, tiny_model_dir, tmp_path_factory) -> Path:
    """The uninterrupted run every resumed run must equal."""
    ref = tmp_path_factory.mktemp("ref") / "ref.mkv"
    proc = _run([clip, ref, "--model", tiny_model_dir, *OPTS, "--segment-frames", "3"])
    assert proc.returncode == 0, proc.stderr
    return ref


# --------------------------------------------------------------------- 6. out of memory
def _baseline_address_space() -> int:
    """Bytes of address space a `vsr upscale` process has once torch, PyAV and vsr are in."""
    code = ("import vsr.pipelines.upscale_cli, vsr.engine, torch, av, cv2; torch.zeros(1); "
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmPeak')][0])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    return int(out.stdout.strip()) * 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmPeak from /proc")
def test_out_of_memory_retries_with_half_the_batch_then_exits_7(tmp_path, tiny_model_dir):
    """A 512x512 PNG to 2048x2048 with the address space capped 400 MiB above what the
    imports take: torch's allocator fails, the engine retries at half the batch, then one
    line naming --batch, --tile and the output size, exit 7."""
    import cv2

    png = tmp_path / "big.png"
    cv2.imwrite(str(png), (np.random.default_rng(0).random((512, 512, 3)) * 255).astype(np.uint8))
    cap_kib = (_baseline_address_space() + (400 << 20)) >> 10
    cmd = _cli(png, tmp_path / "o.mp4", "--model", tiny_model_dir, *OPTS, "--scale", "4", "--batch", "8")
    proc = subprocess.run(["sh", "-c", f'ulimit -v {cap_kib} && exec "$@"', "sh", *cmd], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=600)
    line = _assert_one_line(proc, EXIT_RESOURCES, "out of memory", "--batch", "--tile", "--target")
    assert "retrying with --batch 4" in proc.stderr, proc.stderr
    assert "even with --batch 4" in line
    assert not (tmp_path / "o.mp4").exists()


# --------------------------------------------------------------------- 7. disk full
@pytest.fixture()
def small_disk(tmp_path):
    """A real 12 KiB tmpfs (needs root; skipped elsewhere), grown by `grow(kib)`."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")

    def grow(kib: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={kib}k", str(mnt)], check=True)

    yield mnt, grow
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_while_writing_segments_is_one_line_and_resume_cleans_up(clip, reference, tiny_model_dir, small_disk):
    mnt, grow = small_disk
    out = mnt / "out.mkv"
    args = [clip, out, "--model", tiny_model_dir, *OPTS, "--segment-frames", "3"]
    proc = _run(args)
    _assert_one_line(proc, EXIT_OUTPUT, "disk full")
    folder = temp_dir_for(out)
    assert not out.exists() and folder.is_dir()
    assert not list(folder.glob("*.part")), list(folder.iterdir())  # the failed segment went
    # a partial segment left by a kill -9 (planted: what the kernel keeps of a killed write)
    grow(4096)
    (folder / "segment-00005.vsrseg.part").write_bytes(b"VSRSEG1\n" + b"\0" * 100)
    proc = _run([*args, "--resume"])
    assert proc.returncode == 0, proc.stderr
    _same_video(out, reference)
    assert not folder.exists()


# --------------------------------------------------------------------- 8. two processes
def test_a_second_process_on_the_same_out_is_refused_and_never_touches_the_work(clip, reference, tiny_model_dir,
                                                                                  tmp_path):
    """The first run is stopped (SIGSTOP) while it holds the work folder; a second run,
    the same command, with --overwrite, and with --resume, is refused naming its pid; the
    first then finishes with the uninterrupted run's file."""
    out = tmp_path / "out.mkv"
    args = [clip, out, "--model", tiny_model_dir, *OPTS, "--segment-frames", "3"]
    first = subprocess.Popen(_cli(*args), cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal = temp_dir_for(out) / JOURNAL
    try:
        _wait(lambda: _segments(journal) >= 1, first)
        first.send_signal(signal.SIGSTOP)
        before = sorted(p.name for p in temp_dir_for(out).iterdir())
        for extra in ([], ["--overwrite"], ["--resume"]):
            second = _run([*args, *extra])
            _assert_one_line(second, EXIT_OUTPUT, f"pid {first.pid}", "running")
        assert sorted(p.name for p in temp_dir_for(out).iterdir()) == before
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    _same_video(out, reference)
    assert not temp_dir_for(out).exists()


def test_two_processes_started_together_one_wins(clip, reference, tiny_model_dir, tmp_path):
    out = tmp_path / "out.mkv"
    args = [clip, out, "--model", tiny_model_dir, *OPTS, "--segment-frames", "3"]
    procs = [subprocess.Popen(_cli(*args), cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes[0] == 0 and codes[1] in (0, EXIT_OUTPUT), results  # 0, 0 only if one finished before the other began
    for rc, err in results:
        assert "Traceback" not in err
    _same_video(out, reference)
    assert not temp_dir_for(out).exists()
    assert not list(tmp_path.glob(".out.mkv.vsr-tmp*"))


# --------------------------------------------------------------------- 9. torn journal
def test_journal_lines_carry_a_checksum_and_a_torn_or_damaged_line_is_ignored(tmp_path):
    path = tmp_path / JOURNAL
    recs = [{"header": {"a": 1.5, "b": [1, 2]}}, {"segment": 0, "file": "s0", "frames": 3, "first": 0, "sha256": "x"},
            {"segment": 1, "file": "s1", "frames": 3, "first": 3, "sha256": "y"}]
    lines = [journal_line(r) for r in recs]
    assert all(json.loads(line)["check"] for line in lines)
    path.write_text("".join(lines))
    assert read_journal(path) == recs
    path.write_text("".join(lines) + lines[2][: len(lines[2]) // 2])  # torn while written
    assert read_journal(path) == recs
    damaged = lines[1].replace('"frames": 3', '"frames": 4')  # valid JSON, wrong checksum
    path.write_text(lines[0] + damaged + lines[2])
    assert read_journal(path) == recs[:1]


def _killed_after(clip, out, model, segments: int) -> list:
    """Start a 3-frame-segment job into `out`, SIGKILL it once `segments` are journalled;
    its arguments (for the resume)."""
    args = [clip, out, "--model", model, *OPTS, "--segment-frames", "3"]
    run = subprocess.Popen(_cli(*args), cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait(lambda: _segments(temp_dir_for(out) / JOURNAL) >= segments, run)
    run.kill()
    run.wait(timeout=60)
    return args


def test_kill_9_mid_journal_line_then_resume_redoes_that_segment(clip, reference, tiny_model_dir, tmp_path):
    out = tmp_path / "out.mkv"
    args = _killed_after(clip, out, tiny_model_dir, 3)
    journal = temp_dir_for(out) / JOURNAL
    # what a kill -9 inside write() leaves: the last record cut short, no newline
    text = journal.read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[1]
    journal.write_text(text[: len(text) - len(last) - 1] + last[: len(last) // 2])
    proc = _run([*args, "--resume"])
    assert proc.returncode == 0, proc.stderr
    assert "incomplete" in proc.stderr and "Traceback" not in proc.stderr
    _same_video(out, reference)


# --------------------------------------------------------------------- 10. SIGINT at any phase
def _check_after_interrupt(proc: subprocess.Popen, out: Path, reference: Path, args: list) -> str:
    """rc 130 with one line, and either a complete OUT or a work folder `--resume`
    finishes into the reference. Returns which of the two it was."""
    _, err = proc.communicate(timeout=600)
    folder = temp_dir_for(out)
    if proc.returncode == 0:  # the signal came after the job was done (then it is ignored): OUT is complete
        assert out.exists() and not folder.exists() and "Traceback" not in err
        _same_video(out, reference)
        return "complete"
    if proc.returncode == -signal.SIGINT and not err:  # the signal came before Python had started: nothing began
        assert not out.exists() and not folder.exists()
        return "not started"
    assert proc.returncode == EXIT_INTERRUPTED, (proc.returncode, err)
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines and lines[-1].startswith("vsr: interrupted"), err
    if out.exists():
        assert not folder.exists()
        _same_video(out, reference)
        return "complete"
    resumed = _run([*args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    _same_video(out, reference)
    return "resumed"


@pytest.mark.parametrize("phase", ["loading", "segments", "assemble"])
def test_sigint_at_any_phase_exits_130_with_out_complete_or_resumable(phase, clip, reference, tiny_model_dir, tmp_path):
    """A real SIGINT to a real process: while it loads (before the work folder exists),
    while it writes segments, and while it muxes OUT (caught by stopping the process the
    moment its staged file appears, so the signal lands inside the mux)."""
    out = tmp_path / "out.mkv"
    args = [clip, out, "--model", tiny_model_dir, *OPTS, "--segment-frames", "3"]
    proc = subprocess.Popen(_cli(*args), cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    folder, journal = temp_dir_for(out), temp_dir_for(out) / JOURNAL
    if phase == "loading":
        time.sleep(1.0)
        assert proc.poll() is None
    elif phase == "segments":
        _wait(lambda: _segments(journal) >= 2, proc)
    else:
        _wait(lambda: (folder / out.name).exists() or out.exists(), proc)
        proc.send_signal(signal.SIGSTOP)
    proc.send_signal(signal.SIGINT)
    if phase == "assemble":
        proc.send_signal(signal.SIGCONT)
    how = _check_after_interrupt(proc, out, reference, args)
    if phase == "segments":
        assert how == "resumed"


def test_sigint_swept_over_a_whole_run(clip, reference, tiny_model_dir, tmp_path):
    """SIGINT at fractions of an uninterrupted run's time: every outcome is one of the two."""
    args0 = [clip, tmp_path / "timing.mkv", "--model", tiny_model_dir, *OPTS, "--segment-frames", "3"]
    t0 = time.perf_counter()
    assert _run(args0).returncode == 0
    total = time.perf_counter() - t0
    for k, frac in enumerate((0.55, 0.8, 0.9, 0.97)):
        out = tmp_path / f"out{k}.mkv"
        args = [clip, out, "--model", tiny_model_dir, *OPTS, "--segment-frames", "3"]
        proc = subprocess.Popen(_cli(*args), cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        time.sleep(total * frac)
        if proc.poll() is not None:  # finished first: nothing to interrupt
            assert proc.returncode == 0
            continue
        proc.send_signal(signal.SIGINT)
        _check_after_interrupt(proc, out, reference, args)


# --------------------------------------------------------------------- 11. deterministic encoding
_ENCODE = """
import hashlib, os, sys
if {cpus!r}:
    os.sched_setaffinity(0, {cpus!r})  # before the encoder opens: x264 counts the CPUs it may use
from fractions import Fraction
sys.path.insert(0, {root!r})
from tests.media import moving_picture, stream_format
from vsr.frame import Frame
from vsr.io import SegmentWriter
fmt = stream_format(None, width=320, height=512, global_header=False, codec={codec!r}, crf=18, preset="medium",
                    **({{"options": (("x265-params", "log-level=error"),)}} if {codec!r} == "libx265" else {{}}))
with SegmentWriter({path!r}, fmt) as w:
    for i in range(24):
        w.write(Frame(moving_picture(i, 320, 512), i, Fraction(1, 24), i))
print(hashlib.sha256(open({path!r}, "rb").read()).hexdigest())
"""


# A busy CPU that still lets others be scheduled (20 ms of work, 1 ms asleep), and ends by itself.
SPIN = """
import time
t0 = time.time()
while time.time() - t0 < 300:
    end = time.perf_counter() + 0.02
    while time.perf_counter() < end:
        pass
    time.sleep(0.001)
"""


@pytest.mark.parametrize("codec", ["libx264", "libx265"])
def test_a_segment_encodes_to_the_same_bytes_under_load_and_on_any_number_of_cpus(codec, tmp_path):
    """The same 24 frames, encoded by real processes: three with both cores kept busy by
    two spinning processes, one on one CPU (taskset), one on all of them. x264's thread
    count used to follow the CPUs it could use, and the bytes with it; at a fixed count
    its AVX-512 code still gave other bytes under load (and on this machine, whose CPUs
    have AVX-512, it does not run: `x264_asm_cap`)."""
    import av

    if codec not in av.codecs_available:
        pytest.skip(f"{codec} is not in this PyAV build")
    cpus = sorted(os.sched_getaffinity(0))

    def encode(k: int, affinity: list[int] | None = None) -> str:
        code = _ENCODE.format(root=str(ROOT), codec=codec, path=str(tmp_path / f"s{k}.vsrseg"), cpus=affinity)
        out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in cpus]
    try:
        loaded = {encode(k) for k in range(3)}
    finally:
        for s in spinners:
            s.kill()
            s.wait()
    assert len(loaded) == 1
    assert encode(3, cpus[:1]) == encode(4, cpus) == loaded.pop()


# --------------------------------------------------------------------- 12. device and dtype
def test_x264_is_held_to_avx2_only_on_a_cpu_with_avx512():
    from vsr.io.encoder import EncoderSettings, x264_asm_cap

    avx2 = {"sse2", "ssse3", "sse4_2", "avx", "avx2", "fma", "bmi1", "bmi2", "abm"}
    assert x264_asm_cap(avx2 | {"avx512f", "avx512bw"}) == "AVX2"
    assert x264_asm_cap(avx2) is None  # x264 detects by itself: nothing to hold back
    assert x264_asm_cap({"sse2", "avx512f"}) is None  # never force what the CPU lacks
    assert x264_asm_cap(set()) is None  # not Linux x86: no /proc/cpuinfo flags
    # the option reaches the encoder after vsr's own and before the user's x264-params
    opts = EncoderSettings(codec="libx264", options=(("x264-params", "asm=auto"),)).codec_options(None)
    params = opts["x264-params"].split(":")
    assert params[:2] == ["sync-lookahead=0", "non-deterministic=0"] and params[-1] == "asm=auto"


def test_journal_records_the_resolved_device_dtype_and_torch_and_a_mismatch_is_refused(clip, tiny_model_dir, tmp_path):
    import torch

    out = tmp_path / "out.mkv"
    args = _killed_after(clip, out, tiny_model_dir, 1)
    journal = temp_dir_for(out) / JOURNAL
    records = read_journal(journal)
    header = records[0]["header"]
    assert header["runtime"] == {"device": "cpu", "dtype": "float32", "torch": torch.__version__}
    # the interrupted run computed in bfloat16 (say, `auto` on a CPU with native bf16)
    header["runtime"]["dtype"] = "bfloat16"
    journal.write_text("".join(journal_line(r) for r in records))
    proc = _run([*args, "--resume"])
    _assert_one_line(proc, EXIT_USAGE, "--resume", "bfloat16", "float32", "--dtype bfloat16")
    # the advice can be followed: the engine's record holds no device/dtype of its own ("auto" or a
    # typed value), only the runtime does
    proc = _run([*args, "--resume", "--dtype", "bfloat16"])
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("ext", ["mkv", "mp4"])
def test_the_same_command_gives_the_same_file_bytes(clip, tiny_model_dir, tmp_path, ext):
    """Two runs of one command, whole files compared: Matroska wrote random segment and
    track UIDs (60 bytes apart) until the muxer ran bitexact."""
    import hashlib

    digests = set()
    for k in range(2):
        out = tmp_path / f"run{k}.{ext}"
        proc = _run([clip, out, "--model", tiny_model_dir, *OPTS])
        assert proc.returncode == 0, proc.stderr
        digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
    assert len(digests) == 1


def test_journal_records_what_auto_resolved_to_and_a_new_calibration_is_refused(clip, tiny_model_dir, tmp_path):
    """`steps`/`consistency`/`noise_level: auto` resolve through the model card, which a new
    card or vsr version may change under the same options: the journal records the
    resolved values, so such a resume is refused instead of mixing two calibrations."""
    out = tmp_path / "out.mkv"
    args = _killed_after(clip, out, tiny_model_dir, 1)
    journal = temp_dir_for(out) / JOURNAL
    records = read_journal(journal)
    engine = records[0]["header"]["engine"]
    assert engine["consistency"] == 1 and engine["noise_predictor"] == "off"  # a model without a predictor
    assert engine["steps"] == 1 and engine["timesteps"] and all(isinstance(t, int) for t in engine["timesteps"])
    # tile/overlap as used (an unset one resumes against its typed value); device/dtype only in "runtime"
    assert engine["tile"] == 32 and engine["overlap"] == 8 and "device" not in engine and "dtype" not in engine
    # the interrupted run's card had the noise predictor calibrated with 4 passes
    engine["consistency"] = 4
    journal.write_text("".join(journal_line(r) for r in records))
    proc = _run([*args, "--resume"])
    _assert_one_line(proc, EXIT_USAGE, "--resume", "consistency", "4", "pass the value it had")
    assert out.exists() is False
    # every difference is named, each once (a helper needed three refused runs, one per key)
    engine["steps"] = 2
    journal.write_text("".join(journal_line(r) for r in records))
    line = _assert_one_line(_run([*args, "--resume"]), EXIT_USAGE, "engine.consistency: 4 != 1", "engine.steps: 2 != 1")
    assert line.count("!=") == 2
    engine["steps"] = 1
    # the interrupted run's values given explicitly resume it (here: what auto gave, 1 pass)
    engine["consistency"] = 1
    journal.write_text("".join(journal_line(r) for r in records))
    proc = _run([*args, "--resume", "--consistency", "1", "--noise-predictor", "off"])
    assert proc.returncode == 0, proc.stderr
    assert out.exists()


# --------------------------------------------------------------------- 13. unsafe loads
class _Evil:
    """Unpickling this creates `marker` (what a crafted checkpoint would do, harmlessly)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _evil_checkpoint(path: Path, marker: Path, **extra) -> Path:
    import torch

    torch.save({"config": {}, "unet": {}, "ema": {}, "net": {}, "payload": _Evil(marker), **extra}, path)
    # the file really would run code when unpickled without weights_only
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)
    return path


def test_a_crafted_checkpoint_never_runs_code(tmp_path):
    pytest.importorskip("diffusers")
    from vsr.cli import main

    marker = tmp_path / "pwned"
    ckpt = _evil_checkpoint(tmp_path / "last.pt", marker)
    assert main(["train", "export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "x")]) == EXIT_INPUT
    assert not marker.exists()
    # train prior --resume over a crafted last.pt (in-process: the library call the CLI makes)
    from vsr.pipelines import train_prior as tp
    from vsr.errors import InputError

    corpus = tmp_path / "corpus" / "images" / "train"
    corpus.mkdir(parents=True)
    import cv2

    cv2.imwrite(str(corpus / "a.png"), moving_picture(0, 96, 96))
    run = tmp_path / "run"
    run.mkdir()
    _evil_checkpoint(run / "last.pt", marker)
    cfg = tp.TrainConfig(corpus=str(tmp_path / "corpus"), run_dir=str(run), block_out_channels=(8, 16),
                         norm_num_groups=8, pixel_unshuffle=2, crop=32, val_crop=64, batch_size=2, steps=2,
                         checkpoint_every=1, val_every=0, warmup_steps=1, num_threads=1, device="cpu")
    with pytest.raises(InputError, match="cannot resume"):
        tp.train(cfg, resume=True, progress=False)
    assert not marker.exists()
    # a real checkpoint loads with weights_only=True and resumes
    shutil.rmtree(run)
    tp.train(cfg, progress=False, stop_at=1)
    assert tp.train(cfg, resume=True, progress=False).step == 2


def test_a_model_folder_of_pickle_weights_is_refused_unless_allowed(clip, tiny_model_dir, tmp_path):
    import torch

    model = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, model)
    st = model / "unet" / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(st), model / "unet" / "diffusion_pytorch_model.bin")
    st.unlink()
    args = [clip, tmp_path / "o.mkv", "--model", model, *OPTS]
    _assert_one_line(_run(args), EXIT_MODEL, "pickle", "--allow-pickle", "VSR_ALLOW_PICKLE")
    assert _run([*args, "--allow-pickle"]).returncode == 0
    # opted in, a crafted .bin still never runs code: torch loads it with weights_only=True
    marker = tmp_path / "pwned"
    _evil_checkpoint(model / "unet" / "diffusion_pytorch_model.bin", marker)
    proc = _run([clip, tmp_path / "o2.mkv", "--model", model, *OPTS], env=_env(VSR_ALLOW_PICKLE="1"))
    _assert_one_line(proc, EXIT_MODEL)
    assert not marker.exists()


# --------------------------------------------------------------------- 14. symlinks
def test_preview_never_writes_through_a_planted_symlink(clip, tiny_model_dir, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    outdir = tmp_path / "out"
    outdir.mkdir()
    out = outdir / "o.mkv"
    planted = outdir / "o.preview-00.png"
    planted.symlink_to(victim)
    args = [clip, out, "--model", tiny_model_dir, *OPTS, "--preview", "2"]
    _assert_one_line(_run(args), EXIT_OUTPUT, "exists")
    assert victim.read_text() == "precious"
    proc = _run([*args, "--overwrite"])
    assert proc.returncode == 0, proc.stderr
    assert victim.read_text() == "precious"
    assert not planted.is_symlink() and planted.read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in outdir.iterdir() if p.name.endswith(".tmp")]


def test_a_symlinked_work_folder_is_refused_in_one_line(clip, tiny_model_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    out = tmp_path / "o.mkv"
    temp_dir_for(out).symlink_to(elsewhere, target_is_directory=True)
    for extra in ([], ["--overwrite"], ["--resume"]):
        _assert_one_line(_run([clip, out, "--model", tiny_model_dir, *OPTS, *extra]), EXIT_OUTPUT, "symbolic link")
    assert [p.name for p in elsewhere.iterdir()] == ["keep.txt"]


def test_files_in_the_work_folder_are_created_without_following_symlinks(clip, reference, tiny_model_dir, tmp_path):
    """A symlink planted in an interrupted run's folder at the name of the next segment's
    .part and of the staged output: resume writes neither through it."""
    out = tmp_path / "out.mkv"
    args = _killed_after(clip, out, tiny_model_dir, 2)
    folder = temp_dir_for(out)
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"precious")
    for k in range(2, 7):
        p = folder / f"segment-{k:05d}.vsrseg.part"
        p.unlink(missing_ok=True)
        p.symlink_to(victim)
    (folder / out.name).symlink_to(victim)
    proc = _run([*args, "--resume"])
    assert proc.returncode == 0, proc.stderr
    assert victim.read_bytes() == b"precious"
    _same_video(out, reference)


# --------------------------------------------------------------------- found by benchmarks/robustness.py
def test_nan_crf_and_a_picture_too_big_for_the_default_scale_are_usage_errors(tmp_path, tiny_model_dir, capsys):
    import cv2

    from vsr.cli import main

    src = make_clip(tmp_path / "in.mkv", audio=(), frames=2)
    model = ["--model", str(tiny_model_dir), *OPTS]
    assert main(["upscale", str(src), str(tmp_path / "o.mkv"), *model, "--crf", "nan"]) == EXIT_USAGE
    assert capsys.readouterr().err.strip().startswith("vsr: --crf must be a finite number")
    big = tmp_path / "big.png"
    cv2.imwrite(str(big), np.zeros((8200, 8200), np.uint8))
    assert main(["upscale", str(big), str(tmp_path / "o.mkv"), *model]) == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--scale 2 (the default, 8200x8200 in) is too large" in err[0], err
    assert not list(tmp_path.glob(".*vsr-tmp*")) and not (tmp_path / "o.mkv").exists()
