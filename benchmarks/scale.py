"""How the Ray runner scales (`python -m benchmarks.scale`).

Measured here, on a two-node Ray cluster on loopback (`tests.ray_cluster`, one CPU per
node, in a private network namespace: needs root):
1. per-chunk costs: cluster and actor start, model load (the shipped prior), seeking
   (first frame of `decode(start=k)` vs decoding up to k), object-store transfer rates;
2. the driver's side: keeping a returned segment (write, fsync, journal) and the final
   assembly (`io.assemble`), in segments/s and MB/s;
3. the same job on one node and on two;
4. the rates of the stages a worker runs besides the model: 1080p H.264 decode and 4K
   H.264 encode (x264 medium, crf 18, vsr's default) per core.
Then the throughput model min(input, N x per-worker rate, driver) for a 100-GPU run of
a 2-hour 4K film, with these numbers, printed with what limits it. Results also go to
benchmarks/results/scale.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
FILM_S, FILM_FPS = 2 * 3600, 24  # the film of the model: 2 hours at 24 frames/s
SEGMENT_S = 4.0  # vsr's default segment length


def timed(fn, *args, **kw) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t0, out


# ------------------------------------------------------------------- codec stage rates
def codec_rates(work: Path) -> dict:
    """1080p H.264 decode fps (full decode), seek cost, index scan, 4K x264 encode fps."""
    import torch

    from tests.media import make_clip, moving_picture
    from vsr import io

    out: dict = {}
    clip = make_clip(work / "1080p.mp4", width=1920, height=1080, frames=96, fps=24, keyint=48, audio=())
    info = io.probe(clip)
    out["scan_s"], index = timed(io.scan, clip, info)
    t, frames = timed(lambda: sum(1 for _ in io.decode(clip, info)))
    out["decode_1080p_fps"] = frames / t
    k = 60  # keyframes at 0 and 48: seeking decodes 48..60, a full decode 0..60
    out["seek_first_frame_s"], _ = timed(lambda: next(iter(io.decode(clip, info, start=k, index=index))))
    out["no_seek_first_frame_s"], _ = timed(lambda: next(itertools.islice(io.decode(clip, info), k, None)))
    # 4K encode with vsr's defaults (x264 medium crf 18), through the segment writer
    from vsr.frame import Frame
    from vsr.pipelines.transcode import EncodeOptions

    settings = EncodeOptions().settings(info)
    for threads in (1, os.cpu_count() or 1):
        fmt = io.StreamFormat(settings=dataclasses.replace(settings, options=(("threads", str(threads)),)),
                              width=3840, height=2160, time_base=info.time_base, rate=info.rate, colour=info.colour,
                              hdr=None, global_header=True)
        pics = [np.repeat(np.repeat(moving_picture(i, 960, 540), 4, 0), 4, 1) for i in range(6)]
        w = io.SegmentWriter(work / f"enc{threads}.vsrseg", fmt)
        t0 = time.perf_counter()
        for i, p in enumerate(pics):
            w.write(Frame(p, pts=i, time_base=info.time_base, index=i))
        w.close()
        out[f"encode_4k_fps_{threads}thread"] = len(pics) / (time.perf_counter() - t0)
        out["segment_4k_bytes_per_frame"] = (work / f"enc{threads}.vsrseg").stat().st_size / len(pics)
    out["torch_threads"] = torch.get_num_threads()
    return out


# ----------------------------------------------------------------------- driver side
def driver_rates(work: Path) -> dict:
    """Keeping returned segments (write + fsync + journal) and assembling them."""
    from tests.media import make_clip
    from vsr import io
    from vsr.jobs import open_journal
    from vsr.jobs.chunk import Job, run_chunk
    from vsr.pipelines.ray_runner import _keep_segment
    from vsr.pipelines.transcode import EncodeOptions
    from vsr.targets import plan_output

    class Identity:  # the engine replaced by nothing: only the segment machinery is timed
        def stream(self, frames):
            return frames

    out: dict = {}
    for name, (w, h, frames, seg) in {"small": (96, 64, 800, 4), "1080p": (1920, 1080, 96, 8)}.items():
        clip = make_clip(work / f"asm-{name}.mp4", width=w, height=h, frames=frames, fps=24, audio=("aac",))
        info = io.probe(clip)
        plan = plan_output(w, h, scale=1.0, allow_downscale=True)
        fmt = io.StreamFormat(settings=EncodeOptions(preset="ultrafast").settings(info), width=w, height=h,
                              time_base=info.time_base, rate=info.rate, colour=info.colour, hdr=None, global_header=True)
        made = work / f"made-{name}"
        made.mkdir()
        records = run_chunk(Job(str(clip), info, plan, fmt, Identity(), made, seg), (0, None))
        payloads = [(r, (made / r["file"]).read_bytes()) for r in records]
        total = sum(len(d) for _, d in payloads)
        folder = work / f"kept-{name}"
        journal = open_journal(folder, {"bench": name}, resume=False, overwrite=True)
        ahead: dict = {}  # the worst order: every segment but the first arrives ahead of a gap
        t, _ = timed(lambda: [_keep_segment(folder, journal, ahead, r, d) for r, d in reversed(payloads[1:])])
        t2, _ = timed(lambda: _keep_segment(folder, journal, ahead, *payloads[0]))  # closes the gap: all journaled
        assert not ahead and len(journal.segments) == len(payloads)
        out[f"keep_{name}_segments_per_s"] = len(payloads) / (t + t2)
        out[f"keep_{name}_MB_per_s"] = total / 1e6 / (t + t2)
        t, _ = timed(io.assemble, clip, info, [folder / r["file"] for r in records], work / f"asm-{name}.mkv", fmt)
        out[f"assemble_{name}_segments_per_s"] = len(records) / t
        out[f"assemble_{name}_MB_per_s"] = total / 1e6 / t
        out[f"assemble_{name}_segments"] = len(records)
    return out


# ---------------------------------------------------------------------------- cluster
def cluster_rates(work: Path, frames: int) -> dict:
    import ray

    from tests.media import make_clip
    from tests.ray_cluster import LoopbackCluster
    from vsr import upscale_video
    from vsr.pipelines.ray_runner import ChunkWorker, RayRunner

    out: dict = {}
    root = Path(tempfile.mkdtemp(prefix="vsr-rb-", dir="/tmp"))
    cluster = LoopbackCluster(root)
    try:
        cluster.start()
        out["ray_start_head_s"], out["ray_start_node_s"] = cluster.start_seconds
        out["ray_connect_s"] = cluster.connect()  # ray.init plus waiting for every node

        @ray.remote(num_cpus=0, resources={"vsr_node_1": 0.001})
        def echo(blob):  # runs on node 1: the bytes cross from the driver's object store
            return len(blob)

        @ray.remote(num_cpus=0, resources={"vsr_node_1": 0.001})
        def make(n):
            return b"\1" * n

        size = 64 << 20
        blob = b"\0" * size
        ray.get(echo.remote(b""))  # warm the task's worker
        t, _ = timed(lambda: ray.get(echo.remote(ray.put(blob))))
        out["transfer_to_worker_MB_per_s"] = size / 1e6 / t
        t, _ = timed(lambda: ray.get(make.remote(size)))
        out["transfer_to_driver_MB_per_s"] = size / 1e6 / t
        # actor start (after the tasks above: an actor holding a node's only CPU keeps tasks off it)
        # a fresh process that imports torch, what each worker does first
        cls = ray.remote(ChunkWorker)
        t0 = time.perf_counter()
        actors = [cls.options(num_cpus=1, resources={f"vsr_node_{k}": 1}).remote(1) for k in range(2)]
        ray.get([a.info.remote() for a in actors])
        out["actor_start_s"] = time.perf_counter() - t0
        for a in actors:
            ray.kill(a)
        cluster.check_loopback_only()

        # the same job on one node and on two (the shipped prior, 96x64 -> 192x128: one tile)
        clip = make_clip(work / "job.mp4", width=96, height=64, frames=frames, fps=24, keyint=24, audio=("aac",))
        runs = {}
        for label, res in (("one_node", {"vsr_node_0": 1}), ("two_nodes", {"vsr_worker": 1})):
            runner = RayRunner(address=None, cpus_per_worker=1, threads=1, resources=res, chunk_seconds=16 / 24)
            r = upscale_video(clip, work / f"{label}.mkv", scale=2, config={"steps": 2}, segment_frames=8,
                              encode={"codec": "ffv1"}, runner=runner)
            st = runner.stats
            # per chunk, as the worker timed it: first frame (seek, decoder and encoder start, one frame) vs the rest
            steady = [(c["worker_seconds"] - c["first_frame_s"]) / (c["frames"] - 1) for c in st.chunks if c["frames"] > 1]
            per_frame = statistics.median(steady)
            overhead = statistics.median(c["first_frame_s"] - per_frame for c in st.chunks)
            runs[label] = {
                "seconds": r.seconds, "frames": r.frames, "fps": r.frames / st.seconds, "workers": len(st.workers),
                "nodes": sorted(st.nodes), "chunks": len(st.chunks), "median_s_per_frame_in_chunk": per_frame,
                "model_load_s": [runner.model_load_s] + [w.get("model_load_s") for w in st.workers[1:]],
                "prepare_s": [w.get("prepare_s") for w in st.workers], "chunk_overhead_s": overhead,
                "run_seconds": st.seconds,
            }
        out["runs"] = runs
        out["speedup_two_nodes"] = runs["one_node"]["run_seconds"] / runs["two_nodes"]["run_seconds"]
    finally:
        ray.shutdown()
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    return out


# ------------------------------------------------------------------------------ model
FILM_BYTES_PER_FRAME = 40e6 / 8 / FILM_FPS  # 4K film at x264 crf 18: about 40 Mbit/s (assumed)
GMACS_PER_TILE = 5.87  # the shipped prior, per 256x256 forward (RESULTS.md)


def tiles_per_4k_frame() -> int:
    from vsr.core.tiling import plan_tiles

    return len(plan_tiles(2160, 3840, 256, 32))


def gpu_fps_estimate(tflops: float, steps: int = 2, heavier: float = 1.0) -> float:
    """4K frames/s of one GPU running the shipped prior (x `heavier`) at `tflops` effective."""
    flops = tiles_per_4k_frame() * steps * GMACS_PER_TILE * heavier * 2e9
    return tflops * 1e12 / flops


def film_model(m: dict, gpus: int, gpu_fps: float, cpus_per_gpu: int, bytes_per_frame: float) -> dict:
    """min(input, N x per-worker, driver) for a 2-hour 4K film (1080p in, 2x), and the
    final assembly after it."""
    frames = FILM_S * FILM_FPS
    segments = FILM_S / SEGMENT_S
    worker = {
        "model on the GPU (estimate)": gpu_fps,
        "decode 1080p (measured per core x cores)": m["decode_1080p_fps"] / (os.cpu_count() or 1) * cpus_per_gpu,
        "encode 4K x264 medium (measured per thread x cores)": m["encode_4k_fps_1thread"] * cpus_per_gpu,
    }
    per_worker = min(worker.values())
    stages = {
        "N x per-worker": gpus * per_worker,
        "driver keeping segments (measured MB/s / bytes per frame)": m["keep_1080p_MB_per_s"] * 1e6 / bytes_per_frame,
    }
    fps = min(stages.values())
    assemble_s = segments / m["assemble_1080p_segments_per_s"] + frames * bytes_per_frame / 1e6 / m["assemble_1080p_MB_per_s"]
    return {"gpus": gpus, "frames": frames, "bytes_per_frame": bytes_per_frame, "worker_fps": worker,
            "worker_limit": min(worker, key=worker.get), "per_worker_fps": per_worker, "stages_fps": stages,
            "limit": min(stages, key=stages.get), "fps": fps, "upscaling_minutes": frames / fps / 60,
            "assembly_minutes": assemble_s / 60, "input_copy_minutes_per_node_object_store":
            FILM_S * 8e6 / 8 / 1e6 / m["transfer_to_worker_MB_per_s"] / 60}


def summary(m: dict) -> str:
    r1, r2 = m["runs"]["one_node"], m["runs"]["two_nodes"]
    lines = [
        f"machine: {m['machine']} (load after: {m['load_after']:.1f}); ray {m['ray']}, torch {m['torch']}",
        f"cluster start: head {m['ray_start_head_s']:.1f} s, second node {m['ray_start_node_s']:.1f} s, "
        f"connect {m['ray_connect_s']:.1f} s",
        f"per chunk: actor start {m['actor_start_s']:.1f} s, model load {max(r1['model_load_s']):.1f} s "
        f"(once per worker and job), chunk overhead {r1['chunk_overhead_s']:.2f} s (first frame - steady frame), "
        f"seek to frame 60: "
        f"{m['seek_first_frame_s']:.3f} s vs {m['no_seek_first_frame_s']:.3f} s decoding from 0",
        f"object store over loopback: {m['transfer_to_worker_MB_per_s']:.0f} MB/s to a worker, "
        f"{m['transfer_to_driver_MB_per_s']:.0f} MB/s back",
        f"driver: keeps {m['keep_1080p_segments_per_s']:.0f} segments/s ({m['keep_1080p_MB_per_s']:.0f} MB/s, fsync'ed); "
        f"assembles {m['assemble_1080p_segments_per_s']:.0f} segments/s ({m['assemble_1080p_MB_per_s']:.0f} MB/s), "
        f"{m['assemble_small_segments_per_s']:.0f} segments/s when tiny",
        f"codec stages: 1080p decode {m['decode_1080p_fps']:.0f} fps ({os.cpu_count()} threads); 4K x264 medium "
        f"{m['encode_4k_fps_1thread']:.2f} fps on 1 thread, {m['encode_4k_fps_2thread']:.2f} on 2",
        f"job (shipped prior, {r1['frames']} frames 96x64 -> 192x128): one node {r1['run_seconds']:.1f} s "
        f"({r1['fps']:.2f} fps), two nodes {r2['run_seconds']:.1f} s ({r2['fps']:.2f} fps): x{m['speedup_two_nodes']:.2f}",
    ]
    for key in ("film_100_gpus", "film_100_gpus_heavy"):
        f = m[key]
        lines.append(
            f"{key}: per worker {f['per_worker_fps']:.2f} fps (limit: {f['worker_limit']}); cluster "
            f"{f['stages_fps']['N x per-worker']:.0f} fps, driver {f['stages_fps'][next(iter(list(f['stages_fps'])[1:]))]:.0f} fps "
            f"-> {f['fps']:.0f} fps, limit: {f['limit']}; {f['upscaling_minutes']:.0f} min upscaling + "
            f"{f['assembly_minutes']:.1f} min assembly")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=96, help="frames of the one-node/two-node job")
    parser.add_argument("--gpu-tflops", type=float, default=100.0,
                        help="effective TFLOP/s of one GPU on the prior (an assumption: no GPU is measured here)")
    parser.add_argument("--cpus-per-gpu", type=int, default=4, help="CPU cores beside each GPU (decode, encode)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "scale.json")
    args = parser.parse_args(argv)
    import ray
    import torch

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="vsr-scale-"))
    m: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
               "ray": ray.__version__, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    try:
        t0 = time.perf_counter()
        m.update(codec_rates(work))
        m.update(driver_rates(work))
        m.update(cluster_rates(work, args.frames))
        m["benchmark_s"] = time.perf_counter() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    m["tiles_per_4k_frame"] = tiles_per_4k_frame()
    light, heavy = gpu_fps_estimate(args.gpu_tflops), gpu_fps_estimate(args.gpu_tflops, heavier=100)
    m["film_100_gpus"] = film_model(m, 100, light, args.cpus_per_gpu, FILM_BYTES_PER_FRAME)
    m["film_100_gpus_heavy"] = film_model(m, 100, heavy, args.cpus_per_gpu, FILM_BYTES_PER_FRAME)
    m["load_after"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(m, indent=2, default=float) + "\n")
    print(summary(m))
    print(f"(all numbers: {args.out})")


if __name__ == "__main__":
    main()
