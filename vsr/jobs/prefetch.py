"""`prefetch(iterable, size)`: run an iterator in its own thread, at most `size` ahead.

What torchaudio's StreamReader did with its bounded buffer, for any iterator: the stages
of a job (decode, engine, encode) overlap, and memory does not grow with the video.
"""
from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_ITEM, _END, _ERROR = range(3)
CLOSE_TIMEOUT = 60.0  # seconds `close` waits for the item being made (an engine batch, say)


class Prefetch(Generic[T]):
    """An iterator over `iterable`'s items, made ahead by a daemon thread (see `prefetch`)."""

    def __init__(self, iterable: Iterable[T], size: int, name: str = "vsr-prefetch"):
        if size < 1:
            raise ValueError(f"prefetch size must be at least 1, got {size}")
        self._items: queue.SimpleQueue = queue.SimpleQueue()  # the semaphore bounds it
        self._slots = threading.Semaphore(size)  # items made and not yet taken, at most `size`
        self._stop = threading.Event()
        self._finished = False
        self._torch_threads = _torch_threads()
        self._thread = threading.Thread(target=self._produce, args=(iter(iterable),), name=name, daemon=True)
        self._thread.start()

    def _produce(self, it: Iterator[T]) -> None:
        try:
            if self._torch_threads is not None:  # OpenMP's thread count is per thread: keep the caller's
                sys.modules["torch"].set_num_threads(self._torch_threads)
            while True:
                self._slots.acquire()
                if self._stop.is_set():
                    return
                try:
                    item = next(it)
                except StopIteration:
                    self._items.put((_END, None))
                    return
                self._items.put((_ITEM, item))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer's thread
            self._items.put((_ERROR, exc))
        finally:
            close = getattr(it, "close", None)
            if close is not None:  # a generator's `finally` runs here, in its own thread
                close()

    def __iter__(self) -> Prefetch[T]:
        return self

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        kind, value = self._items.get()
        if kind == _ITEM:
            self._slots.release()
            return value
        self._finished = True
        self._thread.join()
        if kind == _ERROR:
            raise value
        raise StopIteration

    def close(self) -> None:
        """Stop the thread once it has made its current item (it makes no more) and wait
        for it; the iterable is closed in that thread. Idempotent."""
        self._stop.set()
        self._slots.release()  # wakes the thread if it waits for room
        self._thread.join(CLOSE_TIMEOUT)

    @property
    def running(self) -> bool:
        """Whether the producing thread is still alive."""
        return self._thread.is_alive()

    def __enter__(self) -> Prefetch[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _torch_threads() -> int | None:
    """The caller's torch intra-op thread count when torch is loaded (never imports it).

    A new thread starts with OpenMP's default count, not the one `torch.set_num_threads`
    gave the caller, and the thread count changes float reductions: an engine in a
    prefetch thread must compute what it computes in the caller (tests/test_jobs.py)."""
    torch = sys.modules.get("torch")
    return int(torch.get_num_threads()) if torch is not None else None


def prefetch(iterable: Iterable[T], size: int, name: str = "vsr-prefetch") -> Prefetch[T]:
    """Iterate `iterable` in a daemon thread, keeping at most `size` items ready.

    The consumer gets the items in order; an exception raised by the iterable is raised
    again in the consumer, where the next item would have been; at the end, StopIteration.
    Use it as a context manager (or call `close()`): when the consumer stops early, by
    `break` or by an exception of its own (Ctrl-C included), the thread finishes the item
    it is making, makes no more, closes the iterable (a generator's cleanup runs) and ends.
    """
    return Prefetch(iterable, size, name)
