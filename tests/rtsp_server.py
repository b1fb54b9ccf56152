"""A gst-rtsp-server serving `videotestsrc ! vsrupscale ! jpegenc ! rtpjpegpay` (run by
the system Python, the one GStreamer's plugin loader embeds: `tests/test_gst.py`).

    /usr/bin/python3 tests/rtsp_server.py PORT MODEL_DIR
prints "ready" once it listens, and serves until killed.
"""
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

Gst.init(None)
port, model = sys.argv[1], sys.argv[2]
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(
    "( videotestsrc is-live=true num-buffers=20 ! video/x-raw,width=32,height=24,framerate=10/1 "
    f"! vsrupscale scale=2 steps=1 model={model} ! videoconvert ! video/x-raw,format=I420 "
    "! jpegenc ! rtpjpegpay name=pay0 pt=26 )"
)
server.get_mount_points().add_factory("/vsr", factory)
server.attach(None)
print("ready", flush=True)
GLib.MainLoop().run()
