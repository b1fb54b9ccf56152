"""Old home of the video I/O, kept so `from vsr import video` and `vsr.video.X` go on
working: everything moved to the `vsr.io` package (probe, index, decode, encode,
segments, mux, logs)."""
from vsr.io import *  # noqa: F401,F403
from vsr.io import __all__  # noqa: F401
