"""Real servers and real-time media for the live tests: an nginx-rtmp server on a free
loopback port, a publisher that pushes a clip with audio at real-time pace, a plain TCP
server that serves an MPEG-TS file (paced, as fast as read, or stalling), and a reader
that records when each frame and audio sample arrives.

The clip carries a sync mark: frame `MARK` is white and a 1 kHz tone starts at the same
instant; everything else is a moving grey picture over silence.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from tests.media import moving_picture

RATE = 48000  # audio sample rate of the clips
MARK_SECONDS = 1.0  # the white frame and the tone start here
NGINX_MODULES = ("/usr/lib/nginx/modules/ngx_rtmp_module.so", "/usr/lib64/nginx/modules/ngx_rtmp_module.so")


def need(binary: str) -> str:
    """The path of `binary`; skipped locally when missing, a failure in CI (`CI=true`)."""
    import pytest

    path = shutil.which(binary) or (binary if os.path.isfile(binary) else None)
    if path:
        return path
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{binary} is missing in CI: the README's test command installs it (apt-get)")
    pytest.skip(f"{binary} is not installed (see the README's test command)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vsr_argv() -> list[str]:
    """How a server starts vsr: absolute paths only (nginx-rtmp gives an empty environment)."""
    return [sys.executable, "-m", "vsr.cli"]


# --------------------------------------------------------------------------- nginx
class Nginx:
    """nginx with the RTMP module from the distribution, in the foreground, in `folder`.

    `live_app`: the body of the `application live { ... }` block (exec_push lines), where
    `{rtmp}` stands for this server's base URL (rtmp://127.0.0.1:PORT);
    the `hd` application receives vsr's output, tells its players when it ends
    (`play_restart on`) and waits for late publishers (idle streams). `stat_url`: the
    RTMP statistics page (XML) to see who is connected.
    """

    def __init__(self, folder: Path, live_app: str):
        self.folder = folder
        self.port = free_port()
        self.http_port = free_port()
        module = next((m for m in NGINX_MODULES if os.path.exists(m)), None)
        if module is None:
            need("/usr/lib/nginx/modules/ngx_rtmp_module.so")
        user = "user root root;" if os.geteuid() == 0 else ""  # else workers run as nobody, without access to vsr
        for d in ("logs", "tmp"):
            (folder / d).mkdir(parents=True, exist_ok=True)
        conf = f"""
load_module {module};
{user}
daemon off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/logs/error.log info;
events {{ worker_connections 64; }}
rtmp {{
    server {{
        listen 127.0.0.1:{self.port};
        chunk_size 4096;
        application live {{
            live on;
            {live_app.replace("{rtmp}", f"rtmp://127.0.0.1:{self.port}")}
        }}
        application hd {{
            live on;
            play_restart on;
        }}
    }}
}}
http {{
    access_log off;
    client_body_temp_path {folder}/tmp/body;
    proxy_temp_path {folder}/tmp/proxy;
    fastcgi_temp_path {folder}/tmp/fastcgi;
    uwsgi_temp_path {folder}/tmp/uwsgi;
    scgi_temp_path {folder}/tmp/scgi;
    server {{
        listen 127.0.0.1:{self.http_port};
        location /stat {{ rtmp_stat all; }}
    }}
}}
"""
        self.conf = folder / "nginx.conf"
        self.conf.write_text(conf)
        self.proc: subprocess.Popen | None = None

    def url(self, app: str, name: str) -> str:
        return f"rtmp://127.0.0.1:{self.port}/{app}/{name}"

    @property
    def stat_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/stat"

    def __enter__(self) -> "Nginx":
        binary = need("nginx")
        self.proc = subprocess.Popen(
            [binary, "-p", str(self.folder), "-c", str(self.conf), "-e", str(self.folder / "logs" / "error.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx did not start: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not listen within 10 s")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: it ends its exec'd children too
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def clients(self, app: str, name: str) -> int:
        """How many clients (publisher and players) the stream app/name has now."""
        try:
            xml = urllib.request.urlopen(self.stat_url, timeout=2).read().decode()
        except OSError:
            return 0
        for a in re.findall(r"<application>(.*?)</application>", xml, re.S):
            if re.search(rf"<name>{re.escape(app)}</name>", a):
                for s in re.findall(r"<stream>(.*?)</stream>", a, re.S):
                    if re.search(rf"<name>{re.escape(_xml(name))}</name>", s):
                        m = re.search(r"<nclients>(\d+)</nclients>", s)
                        return int(m.group(1)) if m else 0
        return 0

    def log(self) -> str:
        p = self.folder / "logs" / "error.log"
        return p.read_text(errors="replace") if p.exists() else ""


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# ----------------------------------------------------------------------- publisher
@dataclass
class Published:
    """What the publisher sent: per frame, the wall time (monotonic) it was muxed."""

    frames: int = 0
    sent_at: list[float] = field(default_factory=list)
    error: BaseException | None = None


def clip_frame(i: int, fps: int, width: int, height: int) -> np.ndarray:
    if i == int(round(MARK_SECONDS * fps)):
        return np.full((height, width, 3), 255, np.uint8)
    return moving_picture(i, width, height)


def clip_audio(start: int, n: int) -> np.ndarray:
    """Samples start .. start+n of the mono track: silence, a 1 kHz tone from MARK_SECONDS
    for 0.2 s. (1, n) float32."""
    t = (np.arange(start, start + n) / RATE).astype(np.float64)
    tone = (t >= MARK_SECONDS) & (t < MARK_SECONDS + 0.2)
    return (0.5 * np.sin(2 * np.pi * 1000 * t) * tone).astype(np.float32)[None]


def publish(url: str, *, frames: int, fps: int, width: int, height: int, realtime: bool = True,
            ready=None, result: Published | None = None, fmt: str = "flv", audio: bool = True) -> Published:
    """Push `frames` frames (H.264) and their audio (AAC, 48 kHz mono) to `url`, paced at
    real time unless `realtime` is False. `ready()` is polled after the connection is
    made and before the first frame (e.g. "has the server's worker subscribed?")."""
    result = result or Published()
    try:
        with av.open(url, "w", format=fmt) as out:
            v = out.add_stream("libx264", rate=fps)
            v.width, v.height, v.pix_fmt = width, height, "yuv420p"
            v.codec_context.options = {"preset": "ultrafast", "tune": "zerolatency", "g": str(fps)}
            v.time_base = Fraction(1, 1000)
            v.codec_context.time_base = Fraction(1, fps)
            a = out.add_stream("aac", rate=RATE) if audio else None
            if a is not None:
                a.layout = "mono"
                a.codec_context.time_base = Fraction(1, RATE)
            out.start_encoding()  # connects and publishes (PyAV opens the URL with the header)
            if ready is not None:
                deadline = time.monotonic() + 300  # the worker's start-up (torch) on a loaded machine
                while not ready():
                    if time.monotonic() > deadline:
                        raise TimeoutError("the server's worker never subscribed")
                    time.sleep(0.05)
            t0 = time.monotonic()
            samples = 0
            for i in range(frames):
                if realtime:
                    delay = t0 + i / fps - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                # audio up to the end of this frame, in 1024-sample frames
                while a is not None and samples < (i + 1) * RATE // fps:
                    af = av.AudioFrame.from_ndarray(clip_audio(samples, 1024), format="fltp", layout="mono")
                    af.sample_rate, af.pts, af.time_base = RATE, samples, Fraction(1, RATE)
                    out.mux(a.encode(af))
                    samples += 1024
                vf = av.VideoFrame.from_ndarray(clip_frame(i, fps, width, height), format="rgb24")
                vf.pts, vf.time_base = i, Fraction(1, fps)
                out.mux(v.encode(vf))
                result.sent_at.append(time.monotonic())
                result.frames += 1
            out.mux(v.encode(None))
            if a is not None:
                out.mux(a.encode(None))
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        result.error = exc
    return result


def write_clip(path: Path, *, frames: int, fps: int, width: int, height: int, audio: bool = True) -> Path:
    """The publisher's clip as an MPEG-TS file, interleaved as a live source sends it."""
    res = publish(str(path), frames=frames, fps=fps, width=width, height=height, realtime=False, fmt="mpegts",
                  audio=audio)
    if res.error is not None:
        raise res.error
    return path


# ------------------------------------------------------------------- plain TCP source
class TsServer:
    """Serve one MPEG-TS file to the first client on a loopback port: at real-time pace
    (by bytes), as fast as the client reads, or only its first `stall_after` fraction
    and then nothing (the connection stays open: a silent source)."""

    def __init__(self, clip: Path, seconds: float, *, pace: bool = True, stall_after: float | None = None):
        self.data = clip.read_bytes()
        self.seconds, self.pace, self.stall_after = seconds, pace, stall_after
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.url = f"tcp://127.0.0.1:{self.sock.getsockname()[1]}"
        self.sent = 0
        self.finished = threading.Event()
        self.started: float | None = None
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        self.started = time.monotonic()
        n = len(self.data) if self.stall_after is None else int(len(self.data) * self.stall_after)
        chunk = 1316  # seven TS packets
        try:
            for i in range(0, n, chunk):
                if self.pace:
                    delay = self.started + self.seconds * i / len(self.data) - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                conn.sendall(self.data[i:i + chunk])
                self.sent = i + chunk
            self.finished.set()
            if self.stall_after is not None:
                time.sleep(60)
        except OSError:
            pass
        finally:
            conn.close()
            self.finished.set()


# --------------------------------------------------------------------------- reader
@dataclass
class Received:
    """What the reader got: per video frame (wall time, pts seconds, mean brightness),
    the audio as one array with the pts of its first sample, and the frame size."""

    frames: list[tuple[float, float, float]] = field(default_factory=list)
    audio: list[np.ndarray] = field(default_factory=list)
    audio_start: float | None = None
    size: tuple[int, int] | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


def read(url: str, result: Received | None = None, timeout: float = 60.0) -> Received:
    """Play `url` to its end, recording arrival times, brightness and audio."""
    result = result or Received()
    try:
        with av.open(url, "r", timeout=(timeout, timeout)) as c:
            streams = [s for s in (c.streams.video[:1] + c.streams.audio[:1])]
            for pkt in c.demux(streams):
                for f in pkt.decode():
                    if isinstance(f, av.VideoFrame):
                        img = f.to_ndarray(format="rgb24")
                        result.size = (f.width, f.height)
                        result.frames.append((time.monotonic(), float(f.pts * f.time_base), float(img.mean())))
                    else:
                        if result.audio_start is None:
                            result.audio_start = float(f.pts * f.time_base)
                        result.audio.append(f.to_ndarray().mean(axis=0))
    except BaseException as exc:  # noqa: BLE001
        result.error = exc
    finally:
        result.done.set()
    return result


def sync_offset(rec: Received) -> float:
    """Audio tone onset minus white-frame time, in seconds (both from received pts)."""
    mark = max(rec.frames, key=lambda f: f[2])[1]
    audio = np.concatenate(rec.audio)
    onset = int(np.argmax(np.abs(audio) > 0.1))
    return rec.audio_start + onset / RATE - mark
