"""Runtime benchmark: latency, dead-sensor detection, replay speed, daemon CPU and RSS.

    .venv/bin/python bench/bench_runtime.py [--seconds 60] [--json bench/results/runtime.json]

Real processes on this machine: `edge-daemon` (real model on onnxruntime, default config:
2 s windows, 0.5 s hop, 100 ms lag), three synthetic `edge-sensor`s, this script as the
telemetry subscriber. Phases:

1. bare ZeroMQ ipc round trip (PAIR ping-pong with an echo process, 64-byte messages), and a
   bare one-way PUB -> SUB hop of an estimate-sized (2 KB) message, both between idle processes;
2. steady state for --seconds at real time: per estimate, capture stamp of its newest frame
   -> received here (end to end), received - (window end + lag) ("beyond the lag budget";
   the daemon runs the model `precompute_after_ms` after the window end and reuses it when
   the window did not change, so inference is mostly off this path),
   and publish -> received (the telemetry wire hop); daemon CPU % of one core and RSS
   sampled every second (slope reported); then phase 1's idle round trip again, with the
   pipeline still running (the wire hop's like-for-like transport baseline);
3. dead-sensor detection: SIGKILL the audio sensor --kills times; detection = the daemon's
   status document saying "dead" (stamped when it decided) minus the sensor's last heartbeat;
4. replay: record --record-seconds of a drive, replay it --fast into an event-clock daemon;
   speed = drive span / (replay start -> last estimate written).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from edge import wire  # noqa: E402
from edge.clock import monotonic_ns  # noqa: E402
from edge.config import default_model_dir  # noqa: E402

BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")

ECHO = """
import sys, zmq
s = zmq.Context().socket(zmq.PAIR); s.setsockopt(zmq.LINGER, 0); s.connect(sys.argv[1])
while True:
    m = s.recv()
    if m == b"stop": break
    s.send(m)
"""

# A bare PUB -> SUB hop of an estimate-sized message between idle processes: the transport the
# telemetry wire hop rides on, without the envelope, JSON or the daemon. The subscriber prints
# its one-way times (send stamp in the payload; both ends read the same monotonic clock).
PUB_SUB_ECHO = """
import json, sys, time, zmq
s = zmq.Context().socket(zmq.SUB); s.setsockopt(zmq.LINGER, 0); s.connect(sys.argv[1])
s.setsockopt(zmq.SUBSCRIBE, b"")
hops = []
while True:
    m = s.recv()
    now = time.monotonic_ns()
    if m == b"stop": break
    hops.append((now - int(m[:19])) / 1e6)
print(json.dumps(hops))
"""


def bare_pub_sub_hop(run: Path, n: int = 500, gap_s: float = 0.02) -> dict[str, float]:
    """One-way PUB -> SUB times of 2 KB messages (an estimate's size), sender idle between."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    endpoint = f"ipc://{run}/pubsub.ipc"
    sock.bind(endpoint)
    sub = subprocess.Popen([sys.executable, "-c", PUB_SUB_ECHO, endpoint], stdout=subprocess.PIPE)
    time.sleep(1.0)  # the subscription has to reach the publisher before anything is sent
    pad = b"x" * 2000
    for _ in range(n + 50):
        time.sleep(gap_s)
        sock.send(b"%019d" % time.monotonic_ns() + pad)
    time.sleep(0.1)
    sock.send(b"stop")
    out, _ = sub.communicate(timeout=10)
    sock.close()
    hops = json.loads(out)[50:]  # warm-up
    return {"p50_ms": pct(hops, 50), "p99_ms": pct(hops, 99), "n": len(hops)}


def tool(name: str) -> list[str]:
    exe = BIN / name
    return (
        [str(exe)]
        if exe.exists()
        else [sys.executable, "-m", {"edge-sensor": "sensors.cli"}.get(name, "edge." + name[5:])]
    )


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 3) if values else float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bare_round_trip(run: Path, n: int = 3000, gap_s: float = 0.0) -> dict[str, float]:
    """Ping-pong with an echo process. gap_s > 0 sleeps between pings, so both ends are woken
    from an idle poll each time, as the daemon's subscribers are (a fair baseline)."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.PAIR)
    sock.setsockopt(zmq.LINGER, 0)
    endpoint = f"ipc://{run}/pingpong.ipc"
    sock.bind(endpoint)
    echo = subprocess.Popen([sys.executable, "-c", ECHO, endpoint])
    msg = b"x" * 64
    rtts = []
    for i in range(n + 200):
        if gap_s:
            time.sleep(gap_s)
        t0 = time.perf_counter_ns()
        sock.send(msg)
        if not sock.poll(5000):
            raise RuntimeError("echo process did not answer")
        sock.recv()
        if i >= 200:  # warm-up
            rtts.append((time.perf_counter_ns() - t0) / 1e6)
    sock.send(b"stop")
    echo.wait(5)
    sock.close()
    return {"p50_ms": pct(rtts, 50), "p99_ms": pct(rtts, 99), "n": n}


DAEMON_NICE = 0  # set from --daemon-nice: the unit runs the daemon with Nice=-5


class Pipeline:
    def __init__(self, run: Path, model_dir: str, extra: list[str] | None = None) -> None:
        self.run = run
        self.logs = run / "logs"
        self.logs.mkdir(exist_ok=True)
        nice = ["nice", "-n", str(DAEMON_NICE)] if DAEMON_NICE else []
        self.daemon = self._spawn(
            "daemon",
            nice
            + tool("edge-daemon")
            + ["--run-dir", str(run), "--model-dir", model_dir, *(extra or [])],
        )
        self.sensors: dict[str, subprocess.Popen[bytes]] = {}

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with open(self.logs / f"{name}.log", "ab") as log:
            return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)

    def start_sensor(self, modality: str, *extra: str) -> None:
        argv = tool("edge-sensor") + [f"synthetic-{modality}", "--run-dir", str(self.run), *extra]
        self.sensors[modality] = self._spawn(modality, argv)

    def stop(self) -> None:
        for proc in [*self.sensors.values(), self.daemon]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [*self.sensors.values(), self.daemon]:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def subscribe(run: Path, topic: bytes) -> zmq.Socket[Any]:
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, topic)
    sock.connect(f"ipc://{run}/telemetry.ipc")
    return sock


def receive(sock: zmq.Socket[Any], timeout_s: float) -> tuple[dict[str, Any], int] | None:
    if not sock.poll(int(timeout_s * 1000)):
        return None
    parts = sock.recv_multipart(copy=False)
    received = monotonic_ns()
    return wire.decode(parts).json(), received


def steady_state(run: Path, model_dir: str, seconds: float) -> dict[str, Any]:
    pipe = Pipeline(run, model_dir)
    sub = subscribe(run, b"estimate")
    try:
        for m in ("audio", "video", "text"):
            pipe.start_sensor(m)
        if receive(sub, 60) is None:
            raise RuntimeError("no estimate from the daemon; see " + str(run / "logs"))
        time.sleep(3)  # everyone connected and warm
        while sub.poll(0):
            sub.recv_multipart()
        e2e, beyond, hop, infer, ahead, rss = [], [], [], [], [], []
        cpu0, t0 = cpu_seconds(pipe.daemon.pid), time.monotonic()
        next_sample = t0
        used_all = precomputed = 0
        while (now := time.monotonic()) - t0 < seconds:
            if now >= next_sample:
                rss.append((round(now - t0, 1), round(rss_mb(pipe.daemon.pid), 2)))
                next_sample += 1.0
            got = receive(sub, 0.2)
            if got is None:
                continue
            est, received = got
            hop.append((received - est["t_publish_ns"]) / 1e6)
            beyond.append((received - est["t_close_ns"]) / 1e6)
            infer.append(est["infer_ms"])
            ahead.append(est["ahead_ms"])
            if est["newest_frame_ns"] is not None:
                e2e.append((received - est["newest_frame_ns"]) / 1e6)
            used_all += est["pattern"] == "audio+video+text"
            precomputed += bool(est.get("precomputed"))
        wall = time.monotonic() - t0
        cpu = (cpu_seconds(pipe.daemon.pid) - cpu0) / wall * 100
        # the same bare round trip as phase 1, now with the sensors and the daemon running:
        # the wire hop competes with them for the two cores, so this is its like-for-like
        # transport baseline (phase 1's idle one is the issue's; both are reported)
        bare_loaded = bare_round_trip(run, n=500, gap_s=0.02)
        overhead = [b - i for b, i in zip(beyond, infer, strict=True)]
        minutes = np.array([t for t, _ in rss]) / 60
        slope = (
            float(np.polyfit(minutes, [r for _, r in rss], 1)[0]) if len(rss) > 2 else float("nan")
        )
        return {
            "seconds": seconds,
            "estimates": len(beyond),
            "estimates_with_all_three": used_all,
            "e2e_capture_to_received_ms": {"p50": pct(e2e, 50), "p99": pct(e2e, 99)},
            "beyond_window_end_plus_lag_ms": {
                "p50": pct(beyond, 50),
                "p99": pct(beyond, 99),
                "max": pct(beyond, 100),
            },
            # the model's time after the close: ~0 when it ran ahead of it (precompute_after_ms)
            "model_infer_ms": {"p50": pct(infer, 50), "p99": pct(infer, 99)},
            "precomputed_share": round(precomputed / max(len(beyond), 1), 4),
            "beyond_lag_minus_infer_ms": {"p50": pct(overhead, 50), "p99": pct(overhead, 99)},
            "telemetry_wire_hop_ms": {"p50": pct(hop, 50), "p99": pct(hop, 99)},
            "bare_zmq_ipc_round_trip_under_load": bare_loaded,
            "daemon_cpu_percent_of_one_core": round(cpu, 2),
            # inference wall time, ahead of and after the close, as a share of one core (an
            # upper bound on its CPU share; a precompute whose inputs then changed is not
            # counted: see health.precompute.misses)
            "model_share_percent_of_one_core": round(
                (sum(infer) + sum(ahead)) / 1000 / wall * 100, 2
            ),
            "model_ahead_of_close_ms": {"p50": pct(ahead, 50), "p99": pct(ahead, 99)},
            "daemon_rss_mb": {
                "first": rss[0][1],
                "last": rss[-1][1],
                "max": max(r for _, r in rss),
                "slope_mb_per_min": round(slope, 4),
            },
            "rss_samples": rss,
        }
    finally:
        sub.close()
        pipe.stop()


def dead_detection(run: Path, model_dir: str, kills: int) -> dict[str, Any]:
    pipe = Pipeline(run, model_dir)
    sub = subscribe(run, b"status")
    detections = []
    try:
        for m in ("audio", "video", "text"):
            pipe.start_sensor(m)
        for _ in range(kills):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # wait until audio is ok
                got = receive(sub, 1.0)
                if got and got[0]["links"]["audio"] == "ok":
                    break
            time.sleep(0.7)
            pipe.sensors["audio"].send_signal(signal.SIGKILL)
            pipe.sensors["audio"].wait()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                got = receive(sub, 1.0)
                if got is None:
                    continue
                change = [
                    c
                    for c in got[0].get("changes", [])
                    if c["modality"] == "audio" and c["to"] == "dead"
                ]
                if change:
                    detections.append((got[0]["t_mono_ns"] - change[0]["last_seen_ns"]) / 1e6)
                    break
            pipe.start_sensor("audio")
        return {
            "kills": kills,
            "detected": len(detections),
            "after_last_heartbeat_ms": {"p50": pct(detections, 50), "max": pct(detections, 100)},
            "samples_ms": [round(d, 1) for d in detections],
        }
    finally:
        sub.close()
        pipe.stop()


def replay_speed(run: Path, model_dir: str, record_seconds: float) -> dict[str, Any]:
    drive = run / "drive.mcap"
    demo = tool("edge-demo") + [
        "--seconds",
        str(record_seconds),
        "--record",
        str(drive),
        "--record-video",  # the replay must see the camera's frames too
        "--out",
        str(run / "demo"),
        "--model-dir",
        model_dir,
    ]
    subprocess.run(demo, check=True, capture_output=True, timeout=record_seconds + 120)
    replay_run = run / "replay"
    replay_run.mkdir()
    jsonl = replay_run / "estimates.jsonl"
    pipe = Pipeline(replay_run, model_dir, ["--clock", "event", "--estimates-jsonl", str(jsonl)])
    try:
        time.sleep(0.5)
        for _ in range(120):  # the daemon is up once it has written its resolved config
            if (replay_run / "daemon.resolved.json").exists():
                break
            time.sleep(0.25)
        time.sleep(1.0)  # model load + warm-up after the config is written
        t0 = monotonic_ns() / 1e9
        out = subprocess.run(
            tool("edge-replay") + [str(drive), "--fast", "--run-dir", str(replay_run), "--json"],
            check=True,
            capture_output=True,
            timeout=300,
        )
        summary = json.loads(out.stdout)
        last_size, stable_since = -1, monotonic_ns() / 1e9
        while monotonic_ns() / 1e9 - stable_since < 0.5:  # until the daemon stops writing
            size = jsonl.stat().st_size if jsonl.exists() else 0
            if size != last_size:
                last_size, stable_since = size, monotonic_ns() / 1e9
            time.sleep(0.005)
        first_send = summary["t_start_mono_ns"] / 1e9
        elapsed = stable_since - first_send if first_send > 0 else stable_since - t0
        n = sum(1 for _ in open(jsonl)) if jsonl.exists() else 0
        return {
            "drive_s": summary["span_s"],
            "messages": summary["messages"],
            "estimates": n,
            "replay_send_x_real_time": summary["x_real_time"],
            "model_infer_ms_total": round(
                sum(json.loads(line)["infer_ms"] for line in open(jsonl)), 1
            )
            if jsonl.exists()
            else None,
            "end_to_end_x_real_time": round(summary["span_s"] / elapsed, 1),
            "elapsed_s": round(elapsed, 3),
        }
    finally:
        pipe.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="steady-state phase length")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--record-seconds", type=float, default=30.0)
    parser.add_argument("--model-dir", default=str(default_model_dir()))
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "runtime.json")
    parser.add_argument(
        "--daemon-nice", type=int, default=0, help="run the daemon niced (the unit uses -5)"
    )
    args = parser.parse_args()
    global DAEMON_NICE
    DAEMON_NICE = args.daemon_nice
    with tempfile.TemporaryDirectory(prefix="eeb-", dir="/tmp") as tmp:
        run = Path(tmp)
        results: dict[str, Any] = {
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "model_dir": args.model_dir,
            "daemon_nice": args.daemon_nice,
            # this box is shared: the load average says how contended the numbers are
            "load_average_at_start": os.getloadavg(),
            "bare_zmq_ipc_round_trip": bare_round_trip(run),
            "bare_zmq_ipc_round_trip_idle": bare_round_trip(run, n=500, gap_s=0.02),
            "bare_zmq_ipc_pub_sub_hop_idle": bare_pub_sub_hop(run),
        }
        for name, phase in (
            ("steady_state", lambda d: steady_state(d, args.model_dir, args.seconds)),
            ("dead_detection", lambda d: dead_detection(d, args.model_dir, args.kills)),
            ("replay", lambda d: replay_speed(d, args.model_dir, args.record_seconds)),
        ):
            phase_dir = run / name
            phase_dir.mkdir()
            results[name] = phase(phase_dir)
    results["load_average_at_end"] = os.getloadavg()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    bi = results["bare_zmq_ipc_round_trip_idle"]
    s, d, r, b = (
        results["steady_state"],
        results["dead_detection"],
        results["replay"],
        results["bare_zmq_ipc_round_trip"],
    )

    def pair(doc: dict[str, float], a: str = "p50", b: str = "p99", unit: str = "ms") -> str:
        return f"{doc[a]:.2f} / {doc[b]:.2f} {unit}"

    rss = s["daemon_rss_mb"]
    dead = d["after_last_heartbeat_ms"]
    rows = [
        ("end to end, capture -> subscriber (p50/p99)", pair(s["e2e_capture_to_received_ms"])),
        ("beyond window end + lag (p50/p99)", pair(s["beyond_window_end_plus_lag_ms"])),
        ("  of which model inference (p50/p99)", pair(s["model_infer_ms"])),
        ("  estimates whose model ran ahead of the close", f"{s['precomputed_share']:.1%}"),
        ("  the model's time ahead of the close (p50/p99)", pair(s["model_ahead_of_close_ms"])),
        ("  beyond end + lag minus inference (p50/p99)", pair(s["beyond_lag_minus_infer_ms"])),
        ("telemetry wire hop (p50/p99)", pair(s["telemetry_wire_hop_ms"])),
        ("bare ZeroMQ ipc round trip, hot (p50/p99)", pair(b, "p50_ms", "p99_ms")),
        ("bare ZeroMQ ipc round trip, idle (p50/p99)", pair(bi, "p50_ms", "p99_ms")),
        ("  ... with the pipeline running (p50/p99)",
         pair(s["bare_zmq_ipc_round_trip_under_load"], "p50_ms", "p99_ms")),
        ("bare ZeroMQ ipc PUB->SUB hop, 2 KB, idle (p50/p99)",
         pair(results["bare_zmq_ipc_pub_sub_hop_idle"], "p50_ms", "p99_ms")),
        (
            "dead after last heartbeat (p50/max)",
            pair(dead, "p50", "max") + f" ({d['detected']}/{d['kills']})",
        ),
        (
            "replay --fast, end to end",
            f"{r['end_to_end_x_real_time']}x real time ({r['drive_s']} s drive)",
        ),
        ("replay --fast, sender alone", f"{r['replay_send_x_real_time']}x real time"),
        ("daemon CPU at real time", f"{s['daemon_cpu_percent_of_one_core']:.1f} % of one core"),
        ("  of which model inference (at most)", f"{s['model_share_percent_of_one_core']:.1f} %"),
        ("daemon RSS first / last", f"{rss['first']:.1f} / {rss['last']:.1f} MB"),
        ("daemon RSS slope", f"{rss['slope_mb_per_min']:+.3f} MB/min over {s['seconds']:.0f} s"),
    ]
    load = results["load_average_at_start"], results["load_average_at_end"]
    rows.append(("load average (1 min) start / end", f"{load[0][0]:.1f} / {load[1][0]:.1f}"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
