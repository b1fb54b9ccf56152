"""Where FFmpeg's own log lines go."""
from __future__ import annotations

import os

import av


def route_ffmpeg_logs(verbose: bool) -> None:
    """Let FFmpeg print its own log lines to stderr when `verbose` (`vsr --debug`), else
    silence them: the CLI promises one line on stderr per error, and every FFmpeg
    failure vsr cares about comes back as an exception it turns into that line."""
    # Never PyAV's Python log callback (set_level(<a level>)): FFmpeg's worker threads
    # must take the GIL to call it, which can deadlock a decode or encode that holds the
    # GIL while it waits for those threads. FFmpeg's own callback prints from C.
    if verbose:
        av.logging.restore_default_callback()
        av.logging.set_libav_level(av.logging.VERBOSE)
    else:
        av.logging.set_level(None)
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 logs to stderr by itself; its level comes from the environment
