"""`vsr upscale IN OUT --runner ray`: the same job spread over a Ray cluster, same bytes out.

The local runner runs one chunk (every frame not done yet) on this machine; this runner
cuts the video into chunks and maps `vsr.jobs.run_chunk` over them on Ray actors:

1. **Chunks** (`plan_chunks`, in `ray_chunks`) are whole runs of segments, sized so each
   worker gets several (load balancing), and snapped to segment boundaries that are
   keyframes where the probe's keyframe index (`io.scan`) has one nearby; a worker seeks
   to the keyframe at or before `start - warmup` (`Chunk.decode_from`).
2. **Workers** (`ChunkWorker`, in `ray_worker`) are Ray actors, one per GPU (`num_gpus=1`)
   where the cluster has GPUs, else one per `cpus_per_worker` CPUs, spread over the
   nodes. Each loads the model once per job and pulls chunks: the driver hands a chunk to
   whichever worker is free (a `ray.wait` loop), so a slow node simply takes fewer. The
   input goes by its path where a worker reads the same file there, else through Ray's
   object store (`ray.put` of the file, done once, only when a worker asks).
3. **Segments** stream back through the object store as bytes, one item of the actor's
   streaming generator per segment, with the frame progress in between. The driver writes
   each into the job's local work folder (fsync'ed, sha256 checked) and journals it at
   once: in order in the job's journal, ahead of a gap in `journal-ahead.jsonl`, so
   `--resume` after a driver kill keeps every finished segment of every chunk
   (`ray_state`). `upscale_video` then assembles and remuxes audio, subtitles and
   metadata once, exactly as for the local runner.
4. **Faults**: a worker that dies (process killed, node lost, out of memory) fails its
   chunk's stream; the segments it already sent are kept and the rest of the chunk goes
   back to the front of the queue for the next free worker (the dead actor restarts, up to
   `max_restarts`, and pulls again). A chunk that fails `max_attempts` times, or any error
   raised by vsr itself (a corrupt input, say), stops the job.

Threads: see `ray_worker` (a worker computes the floats a local run computes).
"""
from __future__ import annotations

import dataclasses
import logging
import re
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vsr import io
from vsr.errors import InputError, UsageError, VsrError
from vsr.jobs import Job, Journal, source_fingerprint
from vsr.pipelines.ray_chunks import Chunk, plan_chunks
from vsr.pipelines.ray_state import AHEAD, RunStats, WorkerSlot, _Active, _flush_ahead, _keep_segment, _load_ahead  # noqa: F401
from vsr.pipelines.ray_worker import PROGRESS_EVERY_S, WORK_PREFIX, ChunkWorker, Source, SourceUnavailable  # noqa: F401

log = logging.getLogger(__name__)

CHUNK_SECONDS_MAX = 60.0  # auto chunk length: at most this much video...
CHUNKS_PER_WORKER = 4  # ...and at least this many chunks per worker, for load balancing
# --ray-address HOST:PORT (or ray://HOST:PORT, Ray's client); IPv6 hosts in brackets
ADDRESS = re.compile(r"(?:ray://)?(?P<host>[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{1,5})")
CONNECT_TIMEOUT_S = 10.0  # a head node that does not answer this fast is unreachable (ray.init would retry for minutes)


def head_address(address: str) -> tuple[str, int] | None:
    """(host, port) of an explicit --ray-address, None for "auto" and "local"; UsageError
    for anything else."""
    if address in ("auto", "local"):
        return None
    m = ADDRESS.fullmatch(address)
    if m is None or not 0 < int(m["port"]) < 65536:
        raise UsageError(f"--ray-address must be auto, local or HOST:PORT (e.g. 10.0.0.5:6379), got {address!r}")
    return m["host"].strip("[]"), int(m["port"])


def check_reachable(host: str, port: int, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """UsageError (one line) unless something accepts a TCP connection at host:port."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise UsageError(f"cannot reach a Ray cluster at {host}:{port}: {exc.strerror or exc} (start one with "
                         "'ray start --head', or pass --ray-address HOST:PORT, or 'local')") from None

Progress = Callable[[dict], None]


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
        if self.address is not None:
            head_address(self.address)
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
        head = head_address(self.address) if self.address else None
        if head is not None:  # ray.init retries an unreachable head for minutes, printing as it goes
            check_reachable(*head)
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


def resolve_runner(runner: Any) -> Any:
    """`upscale_video`'s runner argument -> an object with `.run(job, journal, ...)`:
    "ray" is a `RayRunner()` on the cluster this machine belongs to; an object with a
    `run` method is used as it is (a configured `RayRunner`, say)."""
    if runner == "ray":
        return RayRunner()
    if callable(getattr(runner, "run", None)):
        return runner
    raise UsageError(f"runner must be 'local', 'ray' or a runner object such as RayRunner(...), got {runner!r}")
