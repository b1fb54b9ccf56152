"""The `vsrupscale` GStreamer element, run by the real `gst-launch-1.0` and in a real
gst-rtsp-server (no mocks).

GStreamer's Python plugin loader embeds the system Python; `vsr gst-plugin-path --env`
says which variables let it import vsr and torch. Locally the test is skipped when
GStreamer or its Python loader is missing; in CI (`CI=true`) that is a failure.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.live import need
from vsr.pipelines.gst import plugin_dir, python_path, system_python_version


def _gst_env(tmp_path) -> dict:
    env = dict(os.environ)
    env["GST_PLUGIN_PATH"] = str(plugin_dir())
    env["PYTHONPATH"] = os.pathsep.join(python_path())
    env["GST_REGISTRY"] = str(tmp_path / "registry.bin")  # a fresh scan, not a stale cache
    env["OMP_NUM_THREADS"] = "1"  # the element's torch in a busy test machine
    env["PATH"] = "/usr/bin:/bin:" + env.get("PATH", "")  # the loader's Python is the system's (see vsr.pipelines.gst)
    return env


def test_vsrupscale_in_gst_launch_scales_videotestsrc(tmp_path, tiny_model_dir):
    launch = need("gst-launch-1.0")
    mine = "%d.%d" % sys.version_info[:2]
    if system_python_version() != mine:
        msg = f"GStreamer's Python loader runs Python {system_python_version()}, vsr is installed for {mine}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)
    out = tmp_path / "out.rgb"
    n, w, h = 3, 32, 24
    cmd = [
        launch, "-v", "videotestsrc", f"num-buffers={n}", "pattern=ball", "!", f"video/x-raw,width={w},height={h}",
        "!", "vsrupscale", "scale=2", f"model={tiny_model_dir}", "steps=1", "!", "filesink", f"location={out}",
    ]
    p = subprocess.run(cmd, env=_gst_env(tmp_path), capture_output=True, text=True, timeout=300)
    if "no element \"vsrupscale\"" in p.stderr and not os.environ.get("CI"):
        pytest.skip("GStreamer's Python plugin loader is not installed (gstreamer1.0-python3-plugin-loader)")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    # the negotiated output caps: twice the size, RGB
    caps = re.findall(r"vsrupscale0\.GstPad:src: caps = video/x-raw, format=\(string\)RGB, "
                      r"width=\(int\)(\d+), height=\(int\)(\d+)", p.stdout)
    assert caps and caps[-1] == (str(2 * w), str(2 * h)), p.stdout[-3000:]
    # every buffer came out, each a full frame of the new size (RGB rows of 192 bytes: no padding)
    assert out.stat().st_size == n * (2 * w) * (2 * h) * 3


def test_vsrupscale_target_sets_the_output_height(tmp_path, tiny_model_dir):
    launch = need("gst-launch-1.0")
    if system_python_version() != "%d.%d" % sys.version_info[:2] and not os.environ.get("CI"):
        pytest.skip("GStreamer's Python loader runs another Python")
    cmd = [
        launch, "-v", "videotestsrc", "num-buffers=1", "!", "video/x-raw,width=32,height=24", "!",
        "vsrupscale", "target=72p", f"model={tiny_model_dir}", "steps=1", "!", "videoconvert", "!", "fakesink",
    ]
    p = subprocess.run(cmd, env=_gst_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert re.search(r"vsrupscale0\.GstPad:src: caps = .*width=\(int\)96, height=\(int\)72", p.stdout), p.stdout[-3000:]


def test_vsrupscale_in_a_gst_rtsp_server_pipeline(tmp_path, tiny_model_dir):
    """gst-rtsp-server (run by the system Python) serves videotestsrc through vsrupscale;
    PyAV plays it over RTSP: the frames have the new size."""
    import av

    from tests.live import free_port

    need("gst-launch-1.0")
    if system_python_version() != "%d.%d" % sys.version_info[:2] and not os.environ.get("CI"):
        pytest.skip("GStreamer's Python loader runs another Python")
    probe = subprocess.run(["/usr/bin/python3", "-c", "import gi; gi.require_version('GstRtspServer', '1.0')"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("gir1.2-gst-rtsp-server-1.0 is missing in CI")
        pytest.skip("gst-rtsp-server's introspection data is not installed (gir1.2-gst-rtsp-server-1.0)")
    port = free_port()
    server = subprocess.Popen(
        ["/usr/bin/python3", str(Path(__file__).with_name("rtsp_server.py")), str(port), str(tiny_model_dir)],
        env=_gst_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout.readline().strip() == "ready", server.stderr.read()
        sizes = []
        with av.open(f"rtsp://127.0.0.1:{port}/vsr", options={"rtsp_transport": "tcp"}, timeout=(120, 120)) as c:
            for f in c.decode(video=0):
                sizes.append((f.width, f.height))
                if len(sizes) == 5:
                    break
        assert sizes == [(64, 48)] * 5
    finally:
        server.terminate()
        server.wait(10)


@pytest.mark.parametrize("target, words", [
    ("nosuch", "target=nosuch"),
    ("32p", "target=32p"),
    ("100x20", "64x48 input"),  # a valid size, but not for this input
])
def test_vsrupscale_bad_target_says_why_on_the_bus(tmp_path, tiny_model_dir, target, words):
    launch = need("gst-launch-1.0")
    if system_python_version() != "%d.%d" % sys.version_info[:2] and not os.environ.get("CI"):
        pytest.skip("GStreamer's Python loader runs another Python")
    cmd = [
        launch, "videotestsrc", "num-buffers=1", "!", "video/x-raw,width=64,height=48", "!",
        "vsrupscale", f"target={target}", f"model={tiny_model_dir}", "steps=1", "!", "videoconvert", "!", "fakesink",
    ]
    p = subprocess.run(cmd, env=_gst_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert p.returncode != 0
    errors = [line for line in (p.stdout + p.stderr).splitlines() if line.startswith("ERROR: from element")]
    assert errors and words in errors[0], p.stdout[-2000:] + p.stderr[-2000:]
