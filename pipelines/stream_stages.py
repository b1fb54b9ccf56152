"""The threads of `vsr stream` (`pipelines/stream.py` wires them together).

- `Reader`: opens the source in its own thread, calls `on_open` there (the output is
  opened before the first packet is read, and the source is never touched by two
  threads), then queues (arrival time, item) until the end, an error or `halt`.
- `ModelThread`: runs one model call at a time; the caller may stop waiting for it.
- `Writer`: encodes and muxes in order, measures each frame's latency, reports stats.
- `FrameRate`: the input's rate from its pts.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from vsr.frame import Frame

END = object()  # queued by the Reader after the last item, and to the Writer to finish


class ModelThread:
    """One daemon thread running one call at a time; the caller may stop waiting for it
    (a stop request during a slow frame), and the process may exit while it runs.
    `close()` ends the thread after the call it is in (a stream run from a long-lived
    process leaves no thread behind); it does not wait for that call."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="vsr-model", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._jobs.put(None)

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, args, box = job
            try:
                box["value"] = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                box["error"] = exc
            box["done"].set()

    def submit(self, fn: Callable, *args: Any) -> dict:
        box = {"done": threading.Event()}
        self._jobs.put((fn, args, box))
        return box


def timed(fn: Callable, *args: Any) -> float:
    t0 = time.monotonic()
    fn(*args)
    return time.monotonic() - t0


def warm_up(upscaler: Any) -> None:
    """Load the weights onto their device and run the model once on a tiny frame: the
    first call's one-off costs (allocations, kernel choices) must not count as a rung's."""
    import numpy as np

    side = max(8, upscaler.tile // 2)
    upscaler.with_config(size=(2 * side, 2 * side), steps=1)(np.zeros((side, side, 3), np.uint8))


class FrameRate:
    """The input's frame rate from the last frames' pts (the declared rate until then)."""

    def __init__(self, fps: float):
        self.fps = fps
        self._pts: deque = deque(maxlen=31)

    def add(self, frame: Frame) -> None:
        if frame.pts is None or frame.time_base is None:
            return
        self._pts.append(float(frame.pts * frame.time_base))
        if len(self._pts) >= 8 and self._pts[-1] > self._pts[0]:
            self.fps = (len(self._pts) - 1) / (self._pts[-1] - self._pts[0])


class Pace:
    """Hold each frame until its time comes: its pts after the first frame's, on the wall
    clock from when the first arrived (FFmpeg's `-re`, for a source that is not live: a
    file, a pipe). Packets and frames without pts pass at once; `wait` returns False when
    `halt` was set meanwhile."""

    def __init__(self, halt: threading.Event):
        self._halt = halt
        self._origin: tuple[float, float] | None = None  # (wall clock, pts in s) of the first frame

    def wait(self, item: Any) -> bool:
        if not isinstance(item, Frame) or item.pts is None or item.time_base is None:
            return not self._halt.is_set()
        t = float(item.pts * item.time_base)
        if self._origin is None:
            self._origin = (time.monotonic(), t)
        due = self._origin[0] + (t - self._origin[1])
        return not self._halt.wait(max(0.0, due - time.monotonic()))


class Reader:
    """Open the source (`LiveInput(src, **options)`) in a daemon thread, call `on_open`
    with it there, then queue (arrival time, item) into `q` until the end (`END`), an
    error (queued as the exception) or `halt`; `wait_open` returns (VideoInfo, what
    on_open returned). realtime: frames are read no faster than their timestamps (`Pace`)."""

    def __init__(self, src: str, q: queue.Queue, halt: threading.Event, on_open: Callable[[Any], Any], *,
                 realtime: bool = False, **options: Any):
        self._q = q
        self._stop = halt
        self._pace = Pace(halt) if realtime else None
        self._opened = threading.Event()
        self._error: BaseException | None = None
        self.live = None
        self.opened: Any = None  # what on_open returned
        threading.Thread(target=self._run, args=(src, on_open, options), name="vsr-reader", daemon=True).start()

    def wait_open(self, stop: threading.Event) -> tuple[Any, Any] | None:
        """(VideoInfo, what on_open returned) once the source is open; its error if it
        failed; None if `stop` was set first."""
        while not self._opened.wait(0.1):
            if stop.is_set():
                self._stop.set()
                return None
        if self._error is not None:
            raise self._error
        return self.live.info, self.opened

    def _run(self, src: str, on_open: Callable[[Any], Any], options: dict) -> None:
        from vsr.io.live import LiveInput

        try:
            self.live = LiveInput(src, **options)
            try:
                self.opened = on_open(self.live)  # in this thread: the input is not read meanwhile
            except BaseException:
                self.live.close()
                raise
        except BaseException as exc:  # noqa: BLE001 - raised in the caller by wait_open
            self._error = exc
            self._opened.set()
            return
        self._opened.set()
        try:
            for item in self.live:
                if self._pace is not None and not self._pace.wait(item):
                    return
                if not self._put((time.monotonic(), item)):
                    return
            self._put((time.monotonic(), END))
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self._put((time.monotonic(), exc))
        finally:
            self.live.close()

    def _put(self, entry: tuple) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def queued(self) -> int:
        """Items read and not yet taken (the bound is the queue's maxsize)."""
        return self._q.qsize()

    def drain(self) -> list[tuple]:
        out = []
        while True:
            try:
                out.append(self._q.get_nowait())
            except queue.Empty:
                return out


class Writer:
    """The encoding thread: encodes frames and muxes packets in order, measures latency
    and reports statistics. `finish()` queues the end, flushes the encoder and joins."""

    def __init__(self, out: Any, result: Any, stats: Callable[[dict], None] | None, interval: float,
                 names: list[str], t_start: float, reader: Reader):
        self._out = out
        self._result = result
        self._stats = stats
        self._interval = interval
        self._t_start = t_start
        self._reader = reader
        self._q: queue.Queue = queue.Queue(maxsize=256)
        self.error: BaseException | None = None
        self.latency = 0.0
        self._window: list[tuple[float, float]] = []  # (time out, latency) since the last report
        self._rung = names[-1]
        self._thread = threading.Thread(target=self._run, name="vsr-writer", daemon=True)
        self._thread.start()

    def put(self, entry: tuple) -> None:
        while self.error is None:
            try:
                self._q.put(entry, timeout=0.1)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        r = self._result
        last_report = time.monotonic()
        try:
            while True:
                entry = self._q.get()
                if entry is END:
                    break
                arrival, item, rung = entry
                if rung is None:
                    self._out.write_packet(item)
                    r.packets += 1
                    continue
                self._out.write(item)
                now = time.monotonic()
                self.latency = now - arrival
                r.frames += 1
                r.latencies.append(self.latency)
                r.frames_per_rung[rung] = r.frames_per_rung.get(rung, 0) + 1
                self._rung = rung
                self._window.append((now, self.latency))
                if self._stats is not None and now - last_report >= self._interval:
                    self._report(now - last_report)
                    last_report = now
        except BaseException as exc:  # noqa: BLE001 - raised in the main thread
            self.error = exc
        finally:
            try:
                self._out.close()
            except BaseException as exc:  # noqa: BLE001
                self.error = self.error or exc

    def _report(self, span: float) -> None:
        lat = [x for _, x in self._window]
        r = self._result
        self._stats({
            "event": "stats",
            "time": round(time.monotonic() - self._t_start, 3),
            "frames": r.frames,
            "fps_out": round(len(lat) / span, 2) if span > 0 else None,
            "latency": round(lat[-1], 3),
            "latency_max": round(max(lat), 3),
            "rung": self._rung,
            "frames_per_rung": dict(r.frames_per_rung),
            "queue": self._reader.queued(),
        })
        self._window = []

    def finish(self) -> None:
        if self._thread.is_alive():
            try:
                self._q.put(END, timeout=5)
            except queue.Full:
                pass
            self._thread.join()
        self._result.seconds = time.monotonic() - self._t_start
