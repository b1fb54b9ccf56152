"""The Ray actor of `--runner ray` (`vsr.pipelines.ray_runner`): `ChunkWorker`, one per
GPU (or per `cpus_per_worker` CPUs), loads the model once per job and runs chunks.

Workers read the input from its path when it is readable there with the same size and
content fingerprint, else from Ray's object store (`Source.data`). Each pins
`torch.set_num_threads(threads)`; a local run with the same thread count computes the
same floats, so the output files are the same bytes.
"""
from __future__ import annotations

import dataclasses
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vsr.jobs import Job, run_chunk, source_fingerprint
from vsr.pipelines.ray_chunks import Chunk

PROGRESS_EVERY_S = 0.2  # how often workers report frames and the driver calls `progress`
WORK_PREFIX = "vsr-chunk-"  # a worker's local folder in the temp dir: vsr-chunk-<pid>-<random>


class SourceUnavailable(Exception):
    """Raised by a worker that can neither read the input's path nor has its bytes."""


@dataclass(frozen=True)
class Source:
    """How a worker gets the input: `path` if it reads the same file there (size and
    `source_fingerprint`), else the bytes behind `data[0]` (an ObjectRef, inside a list
    so Ray hands the reference, not the bytes, to workers that do not need them)."""

    path: str
    fingerprint: dict
    data: tuple = ()


class ChunkWorker:
    """A Ray actor (see the module doc): one job's model, loaded once, runs chunks.

    `run(key, job_box, chunk, source)` is a streaming generator of events (dicts):
    {"kind": "start", ...timings}, {"kind": "frames", "done": n} (frames of this chunk
    encoded so far), {"kind": "segment", "record": ..., "data": bytes}, {"kind": "damage",
    "why": ...} (input the decoder skipped). The job comes in
    a list (`[ObjectRef]`) and is fetched only when this worker has not prepared it yet
    (its first chunk, or after a restart)."""

    def __init__(self, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.threads = threads
        self.created = time.time()
        self._key: str | None = None
        self._job: Job | None = None
        self._dir: Path | None = None
        self._upscaler: Any = None

    def info(self) -> dict:
        import ray
        import torch

        ctx = ray.get_runtime_context()
        return {"pid": os.getpid(), "node_id": ctx.get_node_id(), "node_ip": ray.util.get_node_ip_address(),
                "threads": torch.get_num_threads(), "created": self.created}

    def runtime(self, upscaler: Any) -> dict:
        """Load `upscaler`'s model here and say what it computes on (`runtime_record`):
        --device/--dtype "auto" resolve on the workers, not on the driver."""
        t0 = time.perf_counter()
        self._upscaler = upscaler
        return {"runtime": _runtime(upscaler), "model_load_s": time.perf_counter() - t0}

    def _prepare(self, key: str, job_box: list, source: Source) -> dict:
        """Fetch the job, materialise the input, load the model (once per job)."""
        import ray

        timings = {"prepared": False}
        if self._key == key:
            return timings
        self.finish()
        t0 = time.perf_counter()
        job: Job = ray.get(job_box[0])
        timings["job_fetch_s"] = time.perf_counter() - t0
        _sweep_stale_dirs()
        self._dir = Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{os.getpid()}-"))
        t0 = time.perf_counter()
        path = source.path
        if not _same_file(path, source.fingerprint):
            if not source.data:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None
                raise SourceUnavailable(f"{path} is not readable on {ray.util.get_node_ip_address()}")
            data = ray.get(source.data[0])
            path = str(self._dir / ("source" + Path(source.path).suffix))
            with open(path, "wb") as f:
                f.write(data)
            timings["source_bytes"] = len(data)
        timings["source_s"] = time.perf_counter() - t0
        up = job.upscaler
        if self._upscaler is not None and getattr(self._upscaler, "config", None) == getattr(up, "config", 0):
            up = self._upscaler  # a kept pool's next job with the same engine: weights already loaded
        t0 = time.perf_counter()
        timings["runtime"] = _runtime(up)
        timings["model_load_s"] = time.perf_counter() - t0
        self._upscaler = up
        self._job = dataclasses.replace(job, source=path, folder=self._dir, upscaler=up)
        self._key = key
        timings["prepared"] = True
        return timings

    def run(self, key: str, job_box: list, chunk: Chunk, source: Source) -> Iterator[dict]:
        t0 = time.perf_counter()
        timings = self._prepare(key, job_box, source)
        yield {"kind": "start", "prepare_s": time.perf_counter() - t0, **timings, **self.info()}
        events: queue.SimpleQueue = queue.SimpleQueue()
        job = self._job

        def work() -> None:
            import torch

            torch.set_num_threads(self.threads)  # OpenMP's thread count is per thread: set it in this one too
            try:
                run_chunk(job, (chunk.start, chunk.stop), on_segment=lambda rec: events.put(("segment", rec)),
                          on_frame=lambda i: events.put(("frame", i)), on_error=lambda why: events.put(("damage", why)))
                events.put(("end", None))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the generator below
                events.put(("error", exc))

        threading.Thread(target=work, name="vsr-chunk", daemon=True).start()
        done, last, first_frame_s = 0, 0.0, None
        while True:
            kind, value = events.get()
            if kind == "frame":
                done += 1
                if first_frame_s is None:  # the chunk's fixed cost: seek, decode, encoder start, one frame
                    first_frame_s = time.perf_counter() - t0
                if time.monotonic() - last >= PROGRESS_EVERY_S:
                    last = time.monotonic()
                    yield {"kind": "frames", "done": done}
            elif kind == "segment":
                path = job.folder / value["file"]
                data = path.read_bytes()
                path.unlink()
                yield {"kind": "frames", "done": done}
                yield {"kind": "segment", "record": value, "data": data}
            elif kind == "damage":
                yield {"kind": "damage", "why": value}
            elif kind == "error":
                raise value
            else:
                yield {"kind": "end", "first_frame_s": first_frame_s, "seconds": time.perf_counter() - t0}
                return

    def finish(self) -> None:
        """Forget the job and delete its local files (the input's copy included)."""
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        self._key, self._job, self._dir = None, None, None


def _runtime(upscaler: Any) -> dict | None:
    """The model loaded on this process's device, and what it computes on."""
    if not callable(getattr(upscaler, "denoiser", None)):
        return None
    from vsr.device import runtime_record

    den = upscaler.denoiser()
    return runtime_record(den.device, den.dtype)


def _sweep_stale_dirs() -> None:
    """Delete the local folders of workers that were killed (their pid is gone): a
    killed worker cannot clean up its copy of the input."""
    for d in Path(tempfile.gettempdir()).glob(f"{WORK_PREFIX}*-*"):
        try:
            pid = int(d.name[len(WORK_PREFIX):].split("-", 1)[0])
            os.kill(pid, 0)
        except ValueError:
            continue
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:  # someone else's live process
            pass


def _same_file(path: str, fingerprint: dict) -> bool:
    try:
        return os.path.isfile(path) and source_fingerprint(path) == fingerprint
    except OSError:
        return False

