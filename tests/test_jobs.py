"""vsr.jobs: run_chunk is the same whichever way a video is cut; prefetch is one safe thread."""
from __future__ import annotations

import pickle
import threading

import pytest

from tests.media import make_clip, stream_format
from vsr import io
from vsr.jobs import Job, prefetch, run_chunk
from vsr.targets import plan_output


def _job(tmp_path, up, name: str, **clip) -> Job:
    src = make_clip(tmp_path / name, **clip)
    info = io.probe(src)
    plan = plan_output(*info.upright_size, sar=info.upright_sar, scale=2)
    folder = tmp_path / f"{name}.work"
    folder.mkdir()
    fmt = stream_format(info, width=plan.out[0], height=plan.out[1], global_header=True)
    return Job(str(src), info, plan, fmt, up.with_config(size=plan.scaled), folder, 4, index=io.scan(src, info))


def _seen(records):
    return [(r["segment"], r["first"], r["frames"], r["file"], r["sha256"]) for r in records]


def test_two_chunks_give_the_segments_of_one_run(tmp_path, up):
    """A VFR, B-frame clip with a keyframe every 4 frames: the second chunk seeks."""
    job = _job(tmp_path, up, "in.mp4", vfr=True, frames=10, audio=("aac",), keyint=4)
    whole = run_chunk(job, (0, None))
    assert [r["frames"] for r in whole] == [4, 4, 2]
    digests = {r["file"]: r["sha256"] for r in whole}
    for f in job.folder.iterdir():
        f.unlink()
    journalled, frames = [], []
    first = run_chunk(job, range(0, 8), on_segment=journalled.append, on_frame=frames.append)
    worker = pickle.loads(pickle.dumps(job))  # what a distributed runner sends
    second = run_chunk(worker, (8, None), on_segment=journalled.append, on_frame=frames.append)
    assert _seen(first + second) == _seen(whole) == _seen(journalled)
    assert frames == list(range(10))
    assert {f.name: io.file_sha256(f) for f in job.folder.iterdir()} == digests
    with pytest.raises(ValueError, match="segment boundaries"):
        run_chunk(job, (2, 8))


def test_an_interrupted_chunk_keeps_only_finished_segments(tmp_path, up):
    job = _job(tmp_path, up, "in.mkv", frames=8, audio=(), keyint=4)

    def stop_at(index: int) -> None:
        if index == 5:
            raise KeyboardInterrupt

    journalled = []
    with pytest.raises(KeyboardInterrupt):
        run_chunk(job, (0, None), on_segment=journalled.append, on_frame=stop_at)
    assert [r["segment"] for r in journalled] == [0]
    assert sorted(f.name for f in job.folder.iterdir()) == ["segment-00000.vsrseg"]  # no .part left behind
    assert not [t for t in threading.enumerate() if t.name in ("vsr-decode", "vsr-engine")]


def test_prefetch_keeps_order_and_stays_bounded():
    made = []

    def numbers():
        for i in range(100):
            made.append(i)
            yield i

    with prefetch(numbers(), 3) as it:
        assert next(it) == 0
        threading.Event().wait(0.2)  # time for the thread to run ahead, if it would
        assert len(made) <= 1 + 3
        assert list(it) == list(range(1, 100))


def test_prefetch_raises_the_error_in_the_consumer_and_its_thread_ends():
    class Boom(Exception):
        pass

    def failing():
        yield 1
        yield 2
        raise Boom("from the producer")

    it = prefetch(failing(), 1)
    assert next(it) == 1 and next(it) == 2
    with pytest.raises(Boom, match="from the producer"):
        next(it)
    assert not it.running
    with pytest.raises(StopIteration):
        next(it)


def test_prefetch_stops_its_thread_when_the_consumer_stops():
    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()  # the generator's cleanup runs, in the producer's thread

    with prefetch(endless(), 2) as it:
        for i in it:
            if i == 5:
                break
    assert closed.is_set() and not it.running
    with pytest.raises(ValueError):
        prefetch([], 0)


def test_prefetch_keeps_the_callers_torch_thread_count():
    import torch

    before = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)

            def counts():
                yield torch.get_num_threads()

            with prefetch(counts(), 1) as it:
                assert list(it) == [n]  # a bare thread would report OpenMP's default
    finally:
        torch.set_num_threads(before)


def test_the_summary_line_after_a_resume_says_which_frames_this_run_made():
    from pathlib import Path

    from vsr.pipelines.transcode_parts import Result
    from vsr.pipelines.upscale_cli import summary_line

    fresh = Result(Path("o.mp4"), 96, 0, 8.0, 12.0, (960, 540))
    assert summary_line(fresh) == "wrote o.mp4: 96 frames, 960x540, 8.0 s (12.00 frames/s)"
    resumed = Result(Path("o.mp4"), 96, 60, 4.0, 9.0, (960, 540))
    assert summary_line(resumed) == "wrote o.mp4: 96 frames (60 resumed, 36 upscaled now), 960x540, 4.0 s (9.00 frames/s)"
    finished = Result(Path("o.mp4"), 96, 96, 3.9, 0.0, (960, 540))  # every segment was done: only assembled
    assert summary_line(finished) == "wrote o.mp4: 96 frames (all resumed), 960x540, 3.9 s"


def test_a_refused_resume_names_every_difference_and_the_option_behind_it():
    from vsr.jobs.journal import diff
    from vsr.pipelines.transcode import HEADER_OPTIONS

    old = {"encoder": {"codec": "libx264", "options": []}, "engine": {"steps": 1, "consistency": 4}, "span": [0, 1]}
    new = {"encoder": {"codec": "libx264", "options": [["tune", "film"]]}, "engine": {"steps": 1, "consistency": 1},
           "span": [0, 1]}
    assert diff(old, old, names=HEADER_OPTIONS) is None
    assert diff(old, new) == "encoder.options: [] != [['tune', 'film']]; engine.consistency: 4 != 1"
    assert diff(old, new, names=HEADER_OPTIONS) == (
        "--encoder-opt (encoder.options: [] != [['tune', 'film']]); --consistency (engine.consistency: 4 != 1)")
    # a key without an option of its own takes its section's
    assert diff({"engine": {"model": "a"}}, {"engine": {"model": "b"}}, names=HEADER_OPTIONS) == (
        "--model (engine.model: 'a' != 'b')")
    assert diff({"engine": {"clip": 1}}, {"engine": {"clip": 2}}, names=HEADER_OPTIONS) == (
        "--model/--config (engine.clip: 1 != 2)")
