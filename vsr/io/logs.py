"""Where FFmpeg's own log lines go."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import av

_verbose = False  # what route_ffmpeg_logs last set


def route_ffmpeg_logs(verbose: bool) -> None:
    """Let FFmpeg print its own log lines to stderr when `verbose` (`vsr --debug`), else
    silence them: the CLI promises one line on stderr per error, and every FFmpeg
    failure vsr cares about comes back as an exception it turns into that line."""
    # Never PyAV's Python log callback (set_level(<a level>)): FFmpeg's worker threads
    # must take the GIL to call it, which can deadlock a decode or encode that holds the
    # GIL while it waits for those threads. FFmpeg's own callback prints from C.
    global _verbose
    _verbose = bool(verbose)
    if verbose:
        av.logging.restore_default_callback()
        av.logging.set_libav_level(av.logging.VERBOSE)
    else:
        av.logging.set_level(None)
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 logs to stderr by itself; its level comes from the environment


def ffmpeg_logs_verbose() -> bool:
    """Whether `route_ffmpeg_logs` last let FFmpeg print its log (`vsr --debug`)."""
    return _verbose


@contextlib.contextmanager
def captured_ffmpeg_logs() -> Iterator[list[tuple[int, str, str]]]:
    """FFmpeg's warnings and errors logged on this thread inside the block, as
    (level, context name, message) in order; the routing `route_ffmpeg_logs` set is back
    afterwards.

    For a short call on the calling thread only (opening an encoder): PyAV's Python log
    callback is in place for the block, which is what the note above keeps out of
    decoding and encoding."""
    lines: list[tuple[int, str, str]] = []
    av.logging.set_level(av.logging.WARNING)
    capture = av.logging.Capture(True)
    try:
        with capture as logs:
            yield lines
    finally:
        route_ffmpeg_logs(_verbose)
        lines.extend((int(level), str(name or ""), str(msg).strip()) for level, name, msg in logs)
