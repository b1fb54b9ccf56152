"""The quality ladder of `vsr stream` on this machine: a 30 fps 360p source, in real time.

A 640x360, 30 fps clip with audio (the test publisher's moving picture) is served over a
loopback TCP socket as MPEG-TS at real-time pace; `vsr stream` (the shipped prior unless
--model) upscales it 2x to 720p into a file and writes its --stats JSON lines. Printed:
frames out, fps out, latency inside vsr (arrival to muxed: mean, p95, max), frames per
rung, and how the rung moved over time. Writes benchmarks/results/live-ladder.json.

    python -m benchmarks.live                  # 20 s, the shipped prior, 2 steps at the top
    python -m benchmarks.live --seconds 30 --steps 1 --threads 1
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.live import TsServer, vsr_argv, write_clip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--model", help="default: the shipped prior")
    ap.add_argument("--steps", type=int, help="top rung's steps (default: the config's, 2)")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--max-latency", type=float, default=2.0)
    ap.add_argument("--out", default="benchmarks/results/live-ladder.json")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip = write_clip(tmp / "in.ts", frames=int(args.seconds * args.fps), fps=args.fps, width=w, height=h)
        server = TsServer(clip, args.seconds)
        stats = tmp / "stats.jsonl"
        cmd = vsr_argv() + ["stream", server.url, str(tmp / "out.ts"), f"--stats={stats}",
                            "--max-latency", str(args.max_latency)]
        for flag, value in (("--model", args.model), ("--steps", args.steps), ("--threads", args.threads)):
            if value is not None:
                cmd += [flag, str(value)]
        load_before = os.getloadavg()
        t0 = time.monotonic()
        p = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.monotonic() - t0
        if p.returncode != 0:
            sys.exit(f"vsr stream failed ({p.returncode}): {p.stderr[-2000:]}")
        lines = [json.loads(x) for x in stats.read_text().splitlines() if x.strip()]
    done = lines[-1]
    timeline = [(d["time"], d["rung"], d["latency_max"], d["fps_out"]) for d in lines[:-1]]
    steady = [d["fps_out"] for d in lines[:-1][2:] if d["fps_out"]]  # after the first two seconds
    result = {
        "input": f"{w}x{h} {args.fps} fps, {args.seconds:g} s, MPEG-TS over TCP at real-time pace",
        "output": "x".join(map(str, done["size"])),
        "frames_in": int(args.seconds * args.fps),
        "frames_out": done["frames"],
        "dropped": done["dropped"],
        "fps_out_steady": round(sum(steady) / len(steady), 2) if steady else None,
        "latency_mean_s": done["latency_mean"],
        "latency_p95_s": done["latency_p95"],
        "latency_max_s": done["latency_max"],
        "frames_per_rung": done["frames_per_rung"],
        "rung_cost_s": done.get("rung_cost_s"),  # the ladder's last measure (steps=1: the background calibration)
        "wall_s": round(wall, 1),
        "load_average_before": [round(x, 2) for x in load_before],
        "cpus": os.cpu_count(),
        "command": " ".join(cmd[2:]),
        "timeline": timeline,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "timeline"}, indent=1))
    for t, rung, lat, fps in timeline:
        print(f"  t={t:6.1f} s  rung {rung:8s}  latency max {lat:5.2f} s  fps out {fps}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
