"""`vsr upscale IN OUT --runner ray`: the same job spread over a Ray cluster, same bytes out.

The local runner runs one chunk (every frame not done yet) on this machine; this runner
cuts the video into chunks and maps `vsr.jobs.run_chunk` over them on Ray actors:

1. **Chunks** (`plan_chunks`) are whole runs of segments (segment k always holds frames
   [k * n, (k + 1) * n), encoded by a fresh encoder, so the cut changes no byte), sized so
   each worker gets several (load balancing), and snapped to segment boundaries that are
   keyframes where the probe's keyframe index (`io.scan`) has one nearby. A worker decodes
   its chunk by seeking to the keyframe at or before `start - warmup` (`Chunk.decode_from`);
   the frames before `start` are decoded and dropped (a future temporal method runs the
   engine over `warmup` of them and drops their output).
2. **Workers** (`ChunkWorker`) are Ray actors, one per GPU (`num_gpus=1`) where the cluster
   has GPUs, else one per `cpus_per_worker` CPUs, spread over the nodes. Each loads the
   model once per job and pulls chunks: the driver hands a chunk to whichever worker is
   free (a `ray.wait` loop), so a slow node simply takes fewer. Workers read the input from
   its path when it is readable there with the same size and content fingerprint, else
   from Ray's object store (`ray.put` of the file, done once, only when a worker asks).
3. **Segments** stream back through the object store as bytes, one item of the actor's
   streaming generator per segment, with the frame progress in between. The driver writes
   each into the job's local work folder (fsync'ed, sha256 checked) and journals it at
   once: in order in the job's journal, ahead of a gap in `journal-ahead.jsonl`, so
   `--resume` after a driver kill keeps every finished segment of every chunk.
   `upscale_video` then assembles and remuxes audio, subtitles and metadata once, exactly
   as for the local runner.
4. **Faults**: a worker that dies (process killed, node lost, out of memory) fails its
   chunk's stream; the segments it already sent are kept and the rest of the chunk goes
   back to the front of the queue for the next free worker (the dead actor restarts, up to
   `max_restarts`, and pulls again). A chunk that fails `max_attempts` times, or any error
   raised by vsr itself (a corrupt input, say), stops the job.

Threads: each worker pins `torch.set_num_threads(threads)`; a local run with the same
thread count computes the same floats, so the output files are the same bytes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import queue
import shutil
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vsr import io
from vsr.errors import InputError, UsageError, VsrError
from vsr.jobs import Job, Journal, run_chunk, source_fingerprint
from vsr.jobs.files import fsync_append, fsync_dir, write_new_file
from vsr.jobs.journal import journal_line, read_journal

log = logging.getLogger(__name__)

AHEAD = "journal-ahead.jsonl"  # segment records that arrived before an earlier segment
CHUNK_SECONDS_MAX = 60.0  # auto chunk length: at most this much video...
CHUNKS_PER_WORKER = 4  # ...and at least this many chunks per worker, for load balancing
PROGRESS_EVERY_S = 0.2  # how often workers report frames and the driver calls `progress`
WORK_PREFIX = "vsr-chunk-"  # a worker's local folder in the temp dir: vsr-chunk-<pid>-<random>

Progress = Callable[[dict], None]


class SourceUnavailable(Exception):
    """Raised by a worker that can neither read the input's path nor has its bytes."""


# ------------------------------------------------------------------------------- chunks
@dataclass(frozen=True)
class Chunk:
    """Output frames [start, stop) (stop None: to the end of the video), whole segments.
    decode_from: the keyframe decoding starts at (<= start - warmup); frames before
    `start` are decoded but not written."""

    start: int
    stop: int | None
    decode_from: int = 0

    def __str__(self) -> str:
        return f"frames {self.start}..{'end' if self.stop is None else self.stop}"


def plan_chunks(
    index: io.FrameIndex,
    segment_frames: int,
    chunk_segments: int,
    done: set[int] | frozenset[int] = frozenset(),
    *,
    warmup: int = 0,
    span: tuple[int, int | None] = (0, None),
) -> list[Chunk]:
    """The chunks covering every segment not in `done`, in order.

    Frames count from `span`'s first source frame (`Job.span`), as `run_chunk`'s do; the
    job has ceil(frames / segment_frames) segments. Each run of consecutive segments to do
    is cut about every `chunk_segments` segments, at the segment boundary nearest the
    nominal cut (within half a chunk; the later one of two) that is also a keyframe, when
    there is one: the worker's seek then lands exactly on its first frame. The chunk
    holding the last segment runs to the end of the job (stop None), whatever the index
    counted. `decode_from` is in the job's frames too (negative: before the span).
    """
    if segment_frames < 1 or chunk_segments < 1:
        raise ValueError(f"segment_frames and chunk_segments must be >= 1, got {segment_frames}, {chunk_segments}")
    n = segment_frames
    base, end = span
    frames = (len(index) if end is None else min(end, len(index) or end)) - base
    count = max(1, math.ceil(frames / n))
    keyframes = {p.frame - base for p in index.seek_points} | {-base}
    todo = [k for k in range(count) if k not in done]
    runs: list[tuple[int, int]] = []  # [a, b) segment indices
    for k in todo:
        if runs and runs[-1][1] == k:
            runs[-1] = (runs[-1][0], k + 1)
        else:
            runs.append((k, k + 1))
    chunks = []
    for a, b in runs:
        cuts = [a]
        while b - cuts[-1] > chunk_segments:
            nominal = cuts[-1] + chunk_segments
            half = chunk_segments // 2
            window = range(max(cuts[-1] + 1, nominal - half), min(b - 1, nominal + half) + 1)
            near = [j for j in window if j * n in keyframes]
            cuts.append(min(near, key=lambda j: (abs(j - nominal), -j)) if near else nominal)
        cuts.append(b)
        for s, e in zip(cuts, cuts[1:]):
            point = index.seek_point(max(0, base + s * n - warmup))
            chunks.append(Chunk(s * n, None if e == count else e * n, (point.frame if point else 0) - base))
    return chunks


# ------------------------------------------------------------------------------ workers
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


# ------------------------------------------------------------------------------- driver
@dataclass
class WorkerSlot:
    """The driver's view of one actor: its handle, what `info()` said, the chunk it runs."""

    actor: Any
    info: dict | None = None
    chunk: Chunk | None = None
    chunks_done: int = 0


@dataclass
class _Active:
    worker: WorkerSlot
    chunk: Chunk
    attempt: int
    started: float
    frames: int = 0  # frames of this attempt encoded so far
    kept: int = 0  # frames of this attempt in segments the driver has kept
    next_segment: int = 0  # the first segment of the chunk not received yet
    timing: dict = field(default_factory=dict)  # the worker's own timing of the chunk


@dataclass
class RunStats:
    """What a `RayRunner.run` did: per-worker start-up and per-chunk records, failures."""

    workers: list[dict] = field(default_factory=list)
    chunks: list[dict] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    damage: list[str] = field(default_factory=list)
    segments: int = 0
    bytes: int = 0
    resumed_segments: int = 0
    source: str = "path"
    seconds: float = 0.0

    @property
    def nodes(self) -> set[str]:
        return {c["node_ip"] for c in self.chunks}


@dataclass
class RayRunner:
    """Runs a job's chunks on a Ray cluster (see the module doc).

    address: "auto" (the cluster this machine belongs to; RAY_ADDRESS), "HOST:PORT" of a
    head node, or "local" (start a private single-node Ray here); ignored when Ray is
    already initialised in this process. chunk_seconds: video per chunk (None: at most 60 s
    and at least 4 chunks per worker). cpus_per_worker: CPUs per worker where the cluster
    has no GPU, capped at the largest node's CPUs (with GPUs: one worker per GPU, 1 CPU
    each). threads: torch threads per
    worker (default cpus_per_worker). resources: custom Ray resources each worker needs
    (e.g. {"vsr": 1} to use only the nodes labelled so). transfer: "auto" (the path where
    workers can read it, else the object store), "path" or "object_store". warmup: frames
    before each chunk a temporal method needs (0 for today's methods). max_workers caps
    the pool. Use as a context manager to keep the workers (and loaded models) between
    jobs; otherwise each `run` starts and ends its own.
    """

    address: str | None = "auto"
    chunk_seconds: float | None = None
    cpus_per_worker: int = 4
    threads: int | None = None
    resources: dict[str, float] | None = None
    transfer: Literal["auto", "path", "object_store"] = "auto"
    warmup: int = 0
    max_workers: int | None = None
    max_attempts: int = 3
    max_restarts: int = 3
    workers: list[WorkerSlot] = field(default_factory=list, init=False, repr=False)
    stats: RunStats = field(default_factory=RunStats, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.transfer not in ("auto", "path", "object_store"):
            raise UsageError(f"transfer must be auto, path or object_store, got {self.transfer!r}")
        if self.chunk_seconds is not None and not self.chunk_seconds > 0:
            raise UsageError(f"--chunk-seconds must be positive, got {self.chunk_seconds}")
        if self.cpus_per_worker < 1:
            raise UsageError(f"cpus_per_worker must be at least 1, got {self.cpus_per_worker}")
        if self.warmup < 0:
            raise UsageError(f"warmup must be >= 0, got {self.warmup}")
        self._keep = False
        self._ray_started = False
        self._runtime: dict | None = None
        self.model_load_s: float | None = None  # the first worker's, asked by `runtime`

    # -- connection and pool ---------------------------------------------------------
    def connect(self) -> None:
        """Join the cluster (once per process)."""
        try:
            import ray
        except ImportError:
            raise UsageError("--runner ray needs Ray: pip install 'vsr[ray]'") from None
        if ray.is_initialized():
            return
        try:
            ray.init(address=None if self.address == "local" else self.address, logging_level=logging.WARNING,
                     log_to_driver=False, include_dashboard=False if self.address == "local" else None)
        except ConnectionError as exc:
            raise UsageError(f"cannot reach a Ray cluster at {self.address!r}: {exc} (start one with 'ray start "
                             "--head', or pass --ray-address HOST:PORT, or 'local')") from None
        self._ray_started = True

    def worker_count(self) -> tuple[int, dict]:
        """How many workers fit on the cluster's live nodes, and each one's Ray options:
        one per GPU where there are GPUs, else one per `cpus_per_worker` CPUs (capped at
        the largest node's CPUs, so a cluster of small nodes still gets workers)."""
        import ray

        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        if any(r.get("GPU", 0) >= 1 for r in nodes):
            opts: dict = {"num_gpus": 1, "num_cpus": 1}
        else:
            cpus = min(self.cpus_per_worker, max([int(r.get("CPU", 0)) for r in nodes] + [1]))
            opts = {"num_cpus": cpus}
        if self.resources:
            opts["resources"] = dict(self.resources)
        need = {"GPU": opts.get("num_gpus", 0), "CPU": opts["num_cpus"], **opts.get("resources", {})}
        count = sum(min(int(r.get(k, 0) // v) for k, v in need.items() if v) for r in nodes)
        if self.max_workers:
            count = min(count, self.max_workers)
        if count < 1:
            raise UsageError(f"the Ray cluster has no room for a worker (each needs {need}); its nodes have {nodes}")
        return count, opts

    def runtime(self, upscaler: Any) -> dict | None:
        """What the workers compute on (device, dtype, torch), asked of one worker, which
        loads the model for it: the journal records this, and `run` stops if a worker
        (a node of another kind) would compute on anything else. Starts the pool."""
        import ray
        from ray.exceptions import RayTaskError

        self.connect()
        self._grow_pool(*self.worker_count())
        try:
            answer = ray.get(self.workers[0].actor.runtime.remote(upscaler))
        except RayTaskError as exc:
            if isinstance(getattr(exc, "cause", None), VsrError):
                raise exc.cause from None
            raise
        self._runtime, self.model_load_s = answer["runtime"], answer["model_load_s"]
        return self._runtime

    def _grow_pool(self, count: int, opts: dict) -> None:
        import ray

        threads = self.threads or opts["num_cpus"]
        cls = ray.remote(ChunkWorker)
        while len(self.workers) < count:
            actor = cls.options(**opts, max_restarts=self.max_restarts, max_task_retries=0,
                                scheduling_strategy="SPREAD").remote(threads)
            self.workers.append(WorkerSlot(actor))

    def close(self) -> None:
        """End the workers, their local files deleted first (and Ray, if this runner started it)."""
        import ray

        if self.workers:
            self._finish_workers(timeout=10)
        for w in self.workers:
            try:
                ray.kill(w.actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.workers = []
        if self._ray_started:
            ray.shutdown()
            self._ray_started = False

    def __enter__(self) -> "RayRunner":
        self._keep = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._keep = False
        self.close()

    # -- the job ---------------------------------------------------------------------
    def run(self, job: Job, journal: Journal, *, progress: Progress | None = None, total: int | None = None,
            on_error: Callable[[str], None] | None = None) -> RunStats:
        """Produce every segment of `job` not in `journal`, journalling each as it arrives
        (in order in `journal`, ahead of a gap in `journal-ahead.jsonl`). On return the
        journal holds all the video's segments in order; `progress` gets the dicts
        `upscale_video` documents, for the whole cluster; `on_error` what the workers'
        decoders skipped (`run_chunk`'s on_error), as it arrives."""
        self.connect()
        t0 = time.perf_counter()
        self.stats = stats = RunStats()
        try:
            return self._run(job, journal, progress, total, on_error, stats, t0)
        finally:
            stats.seconds = time.perf_counter() - t0
            if not self._keep:
                self.close()
            else:
                self._finish_workers()

    def _run(self, job: Job, journal: Journal, progress: Progress | None, total: int | None,
             on_error: Callable[[str], None] | None, stats: RunStats, t0: float) -> RunStats:
        import ray
        from ray.exceptions import RayError, RayTaskError

        job = self._portable(job)
        n = job.segment_frames
        folder = journal.folder
        ahead = _load_ahead(journal)
        stats.resumed_segments = len(journal.segments) + len(ahead)
        total = total or ((job.span[1] if job.span[1] is not None else len(job.index)) - job.span[0]) or None
        resumed_frames = journal.frames + sum(r["frames"] for r in ahead.values())

        count, opts = self.worker_count()
        done = set(range(len(journal.segments))) | set(ahead)
        per_chunk = self._chunk_segments(job, count)
        chunks = deque(plan_chunks(job.index, n, per_chunk, done, warmup=self.warmup, span=job.span))
        if not chunks:
            _flush_ahead(journal, ahead)
            return stats
        self._grow_pool(min(count, len(chunks)), opts)
        log.info("ray: %d chunks of about %d frames on %d workers", len(chunks), chunks[0].stop - chunks[0].start
                 if chunks[0].stop is not None else n, len(self.workers))
        key = uuid.uuid4().hex
        job_box = [ray.put(dataclasses.replace(job, folder=Path(".")))]
        source = Source(job.source, source_fingerprint(job.source))
        if self.transfer == "object_store":
            source = self._with_bytes(source, stats)
        attempts: dict[int, int] = {}
        waiting = {w.actor.info.remote(): w for w in self.workers}  # not yet known alive
        idle: deque[WorkerSlot] = deque()
        active: dict[Any, _Active] = {}
        last_emit, last_done = 0.0, resumed_frames

        def emit(force: bool = False) -> None:
            """Call `progress` when frames were added (at most every PROGRESS_EVERY_S)."""
            nonlocal last_emit, last_done
            now = time.perf_counter()
            if progress is None or (not force and now - last_emit < PROGRESS_EVERY_S):
                return
            done = journal.frames + sum(r["frames"] for r in ahead.values())
            done += sum(max(0, a.frames - a.kept) for a in active.values())  # frames of segments under way
            if done <= last_done and not (force and done > resumed_frames):
                return
            last_emit, last_done = now, done
            elapsed = now - t0
            fps = (done - resumed_frames) / elapsed if elapsed > 0 else 0.0
            eta = (total - done) / fps if total and fps > 0 and total >= done else None
            progress({"frames_done": done, "total": total, "fps": fps, "eta_s": eta, "elapsed_s": elapsed})

        def fail(g: Any, a: _Active, why: str) -> None:
            """A worker died under chunk `a`: keep what it sent, requeue the rest first."""
            del active[g]
            a.worker.chunk = None
            rest = Chunk(a.next_segment * n, a.chunk.stop, a.chunk.decode_from)
            stats.failures.append(f"{a.chunk} on {(a.worker.info or {}).get('node_ip', '?')}: {why}")
            log.warning("ray: a worker failed on %s (%s); %s goes back to the queue", a.chunk, why, rest)
            if rest.stop is None or rest.start < rest.stop:
                tries = attempts.get(rest.start, 0) + 1
                if tries >= self.max_attempts:
                    raise RuntimeError(f"{rest} failed {tries} times on Ray workers; last: {why}")
                attempts[rest.start] = tries
                chunks.appendleft(rest)
            waiting[a.worker.actor.info.remote()] = a.worker  # back once restarted

        while chunks or active:
            while idle and chunks:
                w, c = idle.popleft(), chunks.popleft()
                g = w.actor.run.options(num_returns="streaming").remote(key, job_box, c, source)
                w.chunk = c
                active[g] = _Active(w, c, attempts.get(c.start, 0), time.perf_counter(), next_segment=c.start // n)
            if not active and not waiting:
                raise RuntimeError("no Ray worker is left to run the remaining chunks")
            ready, _ = ray.wait([*waiting, *active], num_returns=1, timeout=PROGRESS_EVERY_S)
            for r in ready:
                if r in waiting:
                    w = waiting.pop(r)
                    try:
                        w.info = ray.get(r)
                    except RayError as exc:  # gone for good (restarts used up)
                        stats.failures.append(f"worker lost: {type(exc).__name__}")
                        self.workers.remove(w)
                        continue
                    idle.append(w)
                    continue
                a = active[r]
                try:
                    event = ray.get(next(r))
                except StopIteration:
                    del active[r]
                    a.worker.chunk, a.worker.chunks_done = None, a.worker.chunks_done + 1
                    idle.append(a.worker)
                    where = a.worker.info or {}
                    stats.chunks.append({
                        "start": a.chunk.start, "stop": a.chunk.stop, "decode_from": a.chunk.decode_from, "frames": a.kept,
                        "attempt": a.attempt, "seconds": time.perf_counter() - a.started,
                        "node_ip": where.get("node_ip"), "pid": where.get("pid"),
                        "worker_seconds": a.timing.get("seconds"), "first_frame_s": a.timing.get("first_frame_s"),
                    })
                    continue
                except RayTaskError as exc:
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, SourceUnavailable) and self.transfer != "path":
                        del active[r]
                        a.worker.chunk = None
                        chunks.appendleft(a.chunk)
                        idle.append(a.worker)
                        source = self._with_bytes(source, stats)
                        continue
                    if isinstance(cause, SourceUnavailable):
                        raise InputError(f"{cause} (transfer 'path' needs the input at one path on every node)") from None
                    if isinstance(cause, VsrError):
                        raise cause from None
                    raise
                except RayError as exc:
                    fail(r, a, type(exc).__name__)
                    continue
                if event["kind"] == "start":
                    a.worker.info = {k: v for k, v in event.items() if k != "kind"}
                    if event.get("prepared"):
                        stats.workers.append(dict(a.worker.info))
                        if self._runtime is not None and event["runtime"] != self._runtime:
                            raise UsageError(
                                f"a worker on {event['node_ip']} computes on {event['runtime']}, the job on "
                                f"{self._runtime}: one output must come from one precision; pass --device and "
                                "--dtype, or use nodes of one kind")
                elif event["kind"] == "frames":
                    a.frames = event["done"]
                elif event["kind"] == "end":
                    a.timing = event
                elif event["kind"] == "damage":
                    stats.damage.append(event["why"])
                    if on_error is not None:
                        on_error(event["why"])
                else:
                    rec = event["record"]
                    _keep_segment(folder, journal, ahead, rec, event["data"])
                    stats.segments += 1
                    stats.bytes += len(event["data"])
                    a.kept += rec["frames"]
                    a.next_segment = rec["segment"] + 1
            emit()
        if ahead:
            raise RuntimeError(f"segments {sorted(ahead)} arrived but the ones before them never did")
        emit(force=True)
        return stats

    def _finish_workers(self, timeout: float = 30) -> None:
        """Have every worker delete its local files (the input's copy among them)."""
        import ray

        refs = [w.actor.finish.remote() for w in self.workers]
        ray.wait(refs, num_returns=len(refs), timeout=timeout)

    def _with_bytes(self, source: Source, stats: RunStats) -> Source:
        """The source with its bytes in the object store (put once)."""
        import ray

        if source.data:
            return source
        log.info("ray: sending %s to the workers through the object store", source.path)
        stats.source = "object_store"
        return dataclasses.replace(source, data=(ray.put(Path(source.path).read_bytes()),))

    def _portable(self, job: Job) -> Job:
        """The job as workers elsewhere read it: absolute input and model paths, the
        keyframe index built once here."""
        if io.is_url(job.source):
            raise UsageError("--runner ray needs a local input file (a URL would be read once per chunk)")
        source = str(Path(job.source).resolve())
        up = job.upscaler
        model = getattr(getattr(up, "config", None), "model", None)
        if model and Path(model).exists() and not Path(model).is_absolute():
            up = up.with_config(model=str(Path(model).resolve()))
        index = job.index or io.scan(source, job.info)
        if not index.seek_points:
            log.warning("ray: %s cannot be decoded from the middle (%s): every chunk decodes from frame 0",
                        source, index.reason)
        return dataclasses.replace(job, source=source, upscaler=up, index=index)

    def _chunk_segments(self, job: Job, workers: int) -> int:
        rate = float(job.info.rate) if job.info.rate else 25.0
        base, end = job.span
        frames = ((end if end is not None else len(job.index)) - base) or job.info.frames or job.segment_frames
        seconds = self.chunk_seconds
        if seconds is None:
            seconds = min(CHUNK_SECONDS_MAX, frames / rate / (CHUNKS_PER_WORKER * workers))
        return max(1, round(seconds * rate / job.segment_frames))


# ------------------------------------------------------------------- the driver's files
def _keep_segment(folder: Path, journal: Journal, ahead: dict[int, dict], rec: dict, data: bytes) -> None:
    """Write a segment that came back from a worker into the work folder (durably, its
    sha256 checked) and journal it; records ahead of a gap go to `AHEAD` until the gap
    closes. A segment already kept (a retried chunk's) is left as it is."""
    k = rec["segment"]
    if k < len(journal.segments) or k in ahead:
        return
    if hashlib.sha256(data).hexdigest() != rec["sha256"]:
        raise RuntimeError(f"segment {k} arrived damaged (sha256 differs)")
    write_new_file(folder / rec["file"], data, replace=True)  # fsync'ed, never through a symlink
    fsync_dir(folder)
    if k == len(journal.segments):
        journal.append(rec)
        _flush_ahead(journal, ahead)
    else:
        fsync_append(folder / AHEAD, journal_line(rec))  # checksummed like the journal's lines
        ahead[k] = rec


def _flush_ahead(journal: Journal, ahead: dict[int, dict]) -> None:
    while len(journal.segments) in ahead:
        journal.append(ahead.pop(len(journal.segments)))


def _load_ahead(journal: Journal) -> dict[int, dict]:
    """The records of `AHEAD` past the journal's segments whose files are intact, with
    those that now follow on moved into the journal (a resumed run)."""
    path = journal.folder / AHEAD
    ahead: dict[int, dict] = {}
    for rec in read_journal(path) if path.is_file() else []:  # up to a line torn by the kill
        k, seg = rec.get("segment", -1), journal.folder / str(rec.get("file", ""))
        if k >= len(journal.segments) and seg.is_file() and not seg.is_symlink() and io.file_sha256(seg) == rec.get("sha256"):
            ahead[k] = rec
    _flush_ahead(journal, ahead)
    return ahead


def resolve_runner(runner: Any) -> Any:
    """`upscale_video`'s runner argument -> an object with `.run(job, journal, ...)`:
    "ray" is a `RayRunner()` on the cluster this machine belongs to; an object with a
    `run` method is used as it is (a configured `RayRunner`, say)."""
    if runner == "ray":
        return RayRunner()
    if callable(getattr(runner, "run", None)):
        return runner
    raise UsageError(f"runner must be 'local', 'ray' or a runner object such as RayRunner(...), got {runner!r}")
