"""Capture processes at real time: CPU each, camera frame rate with detection, audio latency.

    .venv/bin/python bench/bench_capture.py [--seconds 20] [--json runs/bench_capture.json]

1. Camera throughput: `CameraSensor` decoding a 640x480 mp4v file as fast as it can, with
   Haar detection and cropping on every frame -> frames per second (one core).
2. Real time: the three real `edge-sensor` processes (audio through the ALSA file plugin on
   the drive's WAV, camera on the drive's video, transcript on its JSONL), all replaying a
   drive in real time and publishing over ZeroMQ ipc to a SUB socket bound here:
   - CPU of each process (utime + stime from /proc over the run, % of one core),
   - audio capture-to-publish latency: receive time minus the block's capture stamp (the
     stamp of its last sample) -> p50 / p99 ms,
   - frames received per modality per second.
The media are a short drive built by edge-make-drive from ../shared/data (EDGE_DATA_DIR).
Writes JSON and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge import wire  # noqa: E402
from sensors.camera import CameraConfig, CameraSensor  # noqa: E402
from sensors.drive import DriveScript, make_drive  # noqa: E402

SCRIPT = """
[drive]
name = "bench"
seed = 1
fps = 15
[[segment]]
emotion = "angry"
seconds = {a}
[[segment]]
emotion = "happy"
seconds = {b}
face = false
[[segment]]
emotion = "sad"
seconds = {a}
"""


def _data_dir() -> Path:
    env = os.environ.get("EDGE_DATA_DIR")
    for p in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if p.is_dir():
            return p
    raise SystemExit("real data not found: set EDGE_DATA_DIR or put ../shared/data beside")


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime (fields 14, 15 of stat)


def camera_throughput(video: Path) -> dict:
    cam = CameraSensor(CameraConfig(source=str(video)))
    cam.connect()
    n = 0
    start = time.perf_counter()
    try:
        while cam.read(timeout_s=2.0) is not None:
            n += 1
    finally:
        cam.close()
    elapsed = time.perf_counter() - start
    return {
        "frames": n,
        "fps": round(n / elapsed, 1),
        "faces": cam.counters["faces"],
        "resolution": "640x480",
    }


def realtime(drive: Path, seconds: float, tmp: Path) -> dict:
    alsa = tmp / "asound.conf"
    alsa.write_text(
        '</usr/share/alsa/alsa.conf>\npcm.drivemic { type file slave.pcm "null" '
        f'file "/dev/null" infile "{drive / "audio.wav"}" format "wav" }}\n'
    )
    endpoint = f"ipc://{tmp}/ingress.ipc"
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.bind(endpoint)
    t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC) + 2_000_000_000  # start together
    common = ["--connect", endpoint, "--seconds", str(seconds + 2.5), "--replay-t0-ns", str(t0)]
    cmds = {
        "audio": ["audio", "--device", "drivemic"],
        "video": ["camera", "--source", str(drive / "video.mp4")],
        "text": ["transcript", "--source", str(drive / "transcript.jsonl")],
    }
    env = {**os.environ, "ALSA_CONFIG_PATH": str(alsa)}
    procs = {
        m: subprocess.Popen(
            [sys.executable, "-m", "sensors.cli", *c, *common],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for m, c in cmds.items()
    }
    frames = {m: 0 for m in cmds}
    latency_ms: list[float] = []
    try:
        while time.clock_gettime_ns(time.CLOCK_MONOTONIC) < t0:  # start-up is not steady state
            if sub.poll(50):
                sub.recv_multipart()
        ticks0 = {m: _cpu_ticks(p.pid) for m, p in procs.items()}
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            if not sub.poll(100):
                continue
            parts = sub.recv_multipart(copy=False)
            now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            env_ = wire.decode(parts)
            if env_.header.kind != "frame":
                continue
            frames[env_.header.modality] += 1
            if env_.header.modality == "audio":
                latency_ms.append((now - env_.header.t_mono_ns) / 1e6)
        wall = time.monotonic() - start
        hz = os.sysconf("SC_CLK_TCK")
        cpu = {
            m: round(100 * (_cpu_ticks(p.pid) - ticks0[m]) / hz / wall, 1) for m, p in procs.items()
        }
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            p.wait(timeout=10)
        sub.close()
        ctx.term()
    lat = np.array(latency_ms) if latency_ms else np.zeros(1)
    return {
        "seconds": round(wall, 1),
        "cpu_percent_of_one_core": cpu,
        "frames_per_s": {m: round(n / wall, 1) for m, n in frames.items()},
        "audio_capture_to_publish_ms": {
            "p50": round(float(np.percentile(lat, 50)), 2),
            "p99": round(float(np.percentile(lat, 99)), 2),
            "n": len(latency_ms),
        },
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--json", type=Path, default=REPO / "runs" / "bench_capture.json")
    args = ap.parse_args()
    data = _data_dir()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        a = max(4.0, round((args.seconds + 6) / 3, 1))
        (tmp / "s.toml").write_text(SCRIPT.format(a=a, b=a))
        drive = tmp / "drive"
        make_drive(
            DriveScript.load(tmp / "s.toml"),
            emodb=data / "emodb" / "wav",
            ckplus=data / "ckplus48",
            meld=data / "meld_text" / "dev_sent_emo.csv",
            out=drive,
        )
        cam = camera_throughput(drive / "video.mp4")
        rt = realtime(drive, args.seconds, tmp)
    result = {
        "camera_max": cam,
        "realtime": rt,
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(
        f"camera, 640x480 mp4v, decode + Haar + crop, one process: {cam['fps']} fps "
        f"({cam['faces']}/{cam['frames']} frames with a face)"
    )
    print(
        f"real time for {rt['seconds']} s:   {'process':<10} {'CPU % of a core':>16} "
        f"{'frames/s':>9}"
    )
    for m in ("audio", "video", "text"):
        print(f"{'':22}{m:<10} {rt['cpu_percent_of_one_core'][m]:>16} {rt['frames_per_s'][m]:>9}")
    lat = rt["audio_capture_to_publish_ms"]
    print(
        f"audio capture -> publish (received): p50 {lat['p50']} ms, p99 {lat['p99']} ms "
        f"({lat['n']} blocks)"
    )
    print(f"-> {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
