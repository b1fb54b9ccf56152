"""`vsr upscale --runner ray` on a real two-node Ray cluster (no mocks).

The cluster (`tests.ray_cluster.LoopbackCluster`) is a head node on 127.0.0.2 and a second
node process on 127.0.0.3, one CPU and one `vsr_worker` resource each, inside a private
network namespace: work lands on both nodes, and nothing can listen or connect beyond
loopback (checked). Workers and the local reference both run torch on one thread, so the
floats, and with a lossless codec (FFV1) the decoded frames, are identical.

These tests run wherever Ray is installed (it is in the test extras); in CI (CI set) they
never skip: a missing Ray fails them.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

if not os.environ.get("CI"):
    pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")
import ray  # noqa: E402

from tests.conftest import build_tiny_model_dir  # noqa: E402
from tests.media import audio_packets, decode_video, make_clip  # noqa: E402
from tests.ray_cluster import LoopbackCluster  # noqa: E402
from vsr import upscale_video  # noqa: E402
from vsr.pipelines.ray_runner import AHEAD, RayRunner, plan_chunks  # noqa: E402

FPS, FRAMES, SEGMENT = 24, 48, 4
CHUNK_SECONDS = 2 * SEGMENT / FPS  # two segments per chunk: 6 chunks for 2 workers
ENGINE = {"dtype": "float32", "device": "cpu", "steps": 2, "seed": 3}
THREADS = 1  # torch threads in the workers (1 CPU each) and in the local reference


@contextmanager
def torch_threads(n: int):
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    """A tiny model, and an H.264 clip (B-frames, a keyframe every 8 frames: seeking is
    real) with audio and subtitles."""
    work = tmp_path_factory.mktemp("ray-media")
    return {
        "model": build_tiny_model_dir(work / "tiny"),
        "clip": make_clip(work / "in.mkv", frames=FRAMES, fps=FPS, keyint=8, audio=("aac",), subtitles=True),
    }


def job(media: dict, dst: Path, **kw):
    """upscale_video with the tests' model, engine settings and segments."""
    return upscale_video(media["clip"], dst, model=str(media["model"]), config=ENGINE, scale=2,
                         segment_frames=SEGMENT, **kw)


@pytest.fixture(scope="module")
def reference(media, tmp_path_factory) -> dict:
    """The local runner's lossless output: decoded frames, times, other streams."""
    out = tmp_path_factory.mktemp("ray-ref") / "local.mkv"
    with torch_threads(THREADS):
        job(media, out, encode={"codec": "ffv1"})
    frames, times = decode_video(out)
    return {"path": out, "frames": frames, "times": times, "packets": audio_packets(out)}


@pytest.fixture(scope="module")
def cluster():
    root = Path(tempfile.mkdtemp(prefix="vsr-ray-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    c = LoopbackCluster(root)
    try:
        c.start()
        c.connect()
        yield c
    finally:
        ray.shutdown()
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def runner(cluster):
    """One pool of workers (one per node) kept across the in-process jobs."""
    with RayRunner(address=None, cpus_per_worker=1, threads=THREADS, resources={"vsr_worker": 1},
                   chunk_seconds=CHUNK_SECONDS) as r:
        yield r


def assert_same_video(path: Path, reference: dict) -> None:
    frames, times = decode_video(path)
    assert len(frames) == len(reference["frames"]) == FRAMES
    assert times == reference["times"]
    for k, (a, b) in enumerate(zip(frames, reference["frames"])):
        assert np.array_equal(a, b), f"frame {k} differs from the local run's"
    assert audio_packets(path) == reference["packets"]


def test_chunks_are_whole_segments_snapped_to_keyframes(media):
    from vsr import io

    index = io.scan(media["clip"])
    assert [p.frame for p in index.seek_points] == [0, 8, 16, 24, 32, 40]
    # 12 segments of 4 frames, 3 per chunk: the cuts move to the nearest keyframe (every 8 frames)
    chunks = plan_chunks(index, SEGMENT, 3)
    assert [(c.start, c.stop) for c in chunks] == [(0, 16), (16, 32), (32, 40), (40, None)]
    assert all(c.decode_from == c.start for c in chunks)
    resumed = plan_chunks(index, SEGMENT, 3, done={0, 1, 5}, warmup=2)
    assert [(c.start, c.stop, c.decode_from) for c in resumed] == [(8, 20, 0), (24, 40, 16), (40, None, 32)]


def test_two_nodes_give_the_local_runs_frames(media, reference, runner, cluster, tmp_path):
    out = tmp_path / "ray.mkv"
    seen: list[dict] = []
    result = job(media, out, encode={"codec": "ffv1"}, runner=runner, progress=seen.append)
    assert_same_video(out, reference)
    stats = runner.stats
    assert stats.nodes == {"127.0.0.2", "127.0.0.3"}, "work should land on both nodes"
    assert stats.source == "path" and not stats.failures
    assert result.frames == FRAMES and seen[-1]["frames_done"] == FRAMES
    assert set(seen[-1]) == {"frames_done", "total", "fps", "eta_s", "elapsed_s"}
    assert [d["frames_done"] for d in seen] == sorted(d["frames_done"] for d in seen)
    cluster.check_loopback_only()

    # the same job with the input shipped through the object store, not read from its path
    runner.transfer = "object_store"
    try:
        job(media, tmp_path / "ray-bytes.mkv", encode={"codec": "ffv1"}, runner=runner)
    finally:
        runner.transfer = "auto"
    assert runner.stats.source == "object_store"
    assert_same_video(tmp_path / "ray-bytes.mkv", reference)


def test_default_lossy_codec_plays_with_every_frame_and_timestamp(media, runner, tmp_path):
    out = tmp_path / "ray.mp4"
    job(media, out, runner=runner)
    frames, times = decode_video(out)
    _, source_times = decode_video(media["clip"])
    assert len(frames) == FRAMES and frames[0].shape == (64, 96, 3)
    assert times == pytest.approx(source_times, abs=1e-6)
    assert times == sorted(times)


def test_a_killed_worker_changes_nothing(media, reference, runner, tmp_path):
    killed: list[int] = []

    def progress(d: dict) -> None:  # kill a worker that is in the middle of a chunk
        busy = [w for w in runner.workers if w.chunk is not None and w.info and w.info.get("pid")]
        if not killed and d["frames_done"] >= 10 and busy:
            pid = busy[-1].info["pid"]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    out = tmp_path / "ray.mkv"
    job(media, out, encode={"codec": "ffv1"}, runner=runner, progress=progress)
    assert killed, "no worker was busy to be killed"
    assert runner.stats.failures, "the kill went unnoticed"
    assert_same_video(out, reference)


def test_driver_killed_then_resume_keeps_finished_chunks(media, reference, runner, cluster, tmp_path):
    runner.close()  # free the nodes' CPUs for the command's own workers
    out = tmp_path / "ray.mkv"
    work = out.parent / f".{out.name}.vsr-tmp"
    cmd = [sys.executable, "-m", "vsr.cli", "upscale", str(media["clip"]), str(out), "--runner", "ray",
           "--ray-address", cluster.address, "--chunk-seconds", str(CHUNK_SECONDS), "--segment-frames", str(SEGMENT),
           "--model", str(media["model"]), "--scale", "2", "--codec", "ffv1", "--progress", "json",
           *[a for k, v in ENGINE.items() for a in (f"--{k}", str(v))]]
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journaled: list[dict] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and driver.poll() is None:
        journaled = segment_records(work)
        if len(journaled) >= 2:  # a whole chunk (two segments) is kept
            break
        time.sleep(0.05)
    assert driver.poll() is None, f"the driver ended before it was killed: {driver.communicate()[1][-2000:]}"
    assert len(journaled) >= 2, "no chunk was journaled in time"
    driver.send_signal(signal.SIGKILL)
    stdout, _ = driver.communicate()
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert lines and all(d["event"] == "progress" and {"frames_done", "total", "fps", "eta_s"} <= set(d) for d in lines)
    kept = segment_records(work)

    result = job(media, out, encode={"codec": "ffv1"}, runner=runner, resume=True)
    assert result.resumed_frames == sum(r["frames"] for r in kept) >= 2 * SEGMENT
    assert_same_video(out, reference)
    assert runner.stats.resumed_segments == len(kept)
    done_segments = {(c["start"], c["stop"]) for c in runner.stats.chunks}
    for r in kept:  # no kept segment was made again
        assert not any(s <= r["first"] < (e if e is not None else FRAMES) for s, e in done_segments)


def segment_records(work: Path) -> list[dict]:
    """The segment records journaled so far (in order, and ahead of a gap)."""
    recs = []
    for name in ("journal.jsonl", AHEAD):
        p = work / name
        if p.exists():
            for line in p.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if "segment" in rec:
                    recs.append(rec)
    return recs
