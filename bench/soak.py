"""Soak: the real-time pipeline under random faults for minutes; RSS, missed hops, latency.

    .venv/bin/python bench/soak.py --minutes 30 [--seed 0] [--json bench/results/soak-30min.json]

Real processes on real ipc sockets, as deployed: `edge-daemon` (default config: 2 s windows,
0.5 s hop, heartbeat 100 ms; the shipped default model on onnxruntime) and the three synthetic
`edge-sensor`s. This script subscribes to the telemetry and injects faults on a schedule drawn
from --seed (the same seed gives the same schedule):

- ``kill``: SIGKILL a sensor, restart it after 0.5-3 s;
- ``stop``: SIGSTOP a sensor, SIGCONT it after 0.3-3 s;
- ``malformed``: a burst of 50-500 malformed envelopes (bad JSON, truncated payload, wrong
  version, garbage parts) on the ingress from a rogue publisher;
- ``stalled_subscriber``: a telemetry subscriber process that is SIGSTOPped for 5-30 s
  (its queue fills; the daemon must neither block nor grow), then killed.

Sensor faults never overlap on one modality but may on different ones. Faults start at once
(the warm-up runs under faults too) and stop ``--cooldown-s`` before the end, so every fault
has recovered when the run ends.

Measured:

- **missed hops**: the daemon writes every estimate it publishes (``--estimates-jsonl``); a
  missed hop is a gap between consecutive ``t_end_ns`` larger than one hop (a gap of k hops
  counts k - 1); a repeated or backward ``t_end_ns`` is counted apart. The same is counted on
  what this script's subscriber received (the telemetry path).
- **daemon RSS** (``VmRSS``) every ``--rss-every-s``. **Drift** = median of the samples in
  the last ``--median-window-s`` minus the median of the samples in the first
  ``--median-window-s`` after ``--warmup-s``. Medians over a window, not first/last samples,
  so one transient (a burst being decoded, a catch-up window) does not read as drift; the
  baseline is taken after a warm-up (under faults) so one-time growth -- onnxruntime's arena
  meeting each input shape, first restart, first malformed reason, allocator pools -- is not
  read as a leak, while steady growth (a leak) is. The least-squares slope after warm-up is
  reported too.
- **latency per minute bucket** (``--bucket-s``): p50 / p99 / max of the daemon's
  ``beyond_close_ms`` (publication - window close: the runtime's own delay) and of this
  subscriber's receive time - window close; the daemon's ``latency_ms`` (newest frame's
  capture -> publication) p50 / p99.
- **faults**: injected per kind; for sensor faults that lasted long enough to be seen
  (>= 2 x heartbeat + one hop), whether a window reported the modality ``dead`` and whether it
  was working again afterwards; malformed envelopes counted by the daemon vs injected; the
  daemon's restart counters.
"""

from __future__ import annotations

import argparse
import functools
import heapq
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench_runtime import rss_mb, tool  # noqa: E402  (bench/ is the script's own dir)

from edge import wire  # noqa: E402
from edge.clock import monotonic_ns  # noqa: E402
from edge.config import default_model_dir  # noqa: E402

MODALITIES = ("audio", "video", "text")
HOP_NS = 500_000_000  # the default config's hop; checked against the estimates
HEARTBEAT_MS, MISS_LIMIT = 100, 2  # the default config's watchdog
VISIBLE_S = (MISS_LIMIT * HEARTBEAT_MS + 500 + 100) / 1000  # a fault this long must read dead
# what a working sensor looks like: the synthetic transcript speaks every few seconds and is
# "empty" (or "stale": heartbeats, no utterance in the window) between
WORKING = {"audio": ("ok",), "video": ("ok",), "text": ("ok", "empty", "stale")}
FAULT_KINDS = ("kill", "stop", "malformed", "stalled_subscriber")
FAULT_WEIGHTS = (4, 4, 2, 1)

SUBSCRIBER = """
import sys, zmq
sock = zmq.Context().socket(zmq.SUB)
sock.setsockopt(zmq.SUBSCRIBE, b"")
sock.connect(sys.argv[1])
while True:
    sock.recv_multipart()
"""


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def hop_gaps(ends: list[int], hop_ns: int) -> dict[str, Any]:
    """Missed hops in a sequence of window ends: a gap of k hops misses k - 1."""
    missed, backward, worst = 0, 0, 0
    gaps: list[tuple[int, int]] = []
    for a, b in zip(ends, ends[1:], strict=False):
        d = b - a
        if d <= 0:
            backward += 1
        elif d > hop_ns:
            k = round(d / hop_ns) - 1
            missed += k
            gaps.append((a, k))
        worst = max(worst, d)
    return {
        "estimates": len(ends),
        "missed_hops": missed,
        "repeated_or_backward": backward,
        "longest_gap_ms": worst / 1e6 if ends else None,
        "gaps": gaps[:50],
    }


def malformed_burst(n: int, rng: random.Random, seq0: int) -> list[list[bytes]]:
    """n envelopes the daemon must count and drop, of four kinds."""
    out = []
    for i in range(n):
        header = wire.Header(
            sensor="soak-fuzz", modality="audio", kind="frame", seq=seq0 + i,
            t_mono_ns=monotonic_ns(), t_wall_ns=0,
        )
        topic, head, payload = (bytes(p) for p in wire.encode(header, np.zeros(800, np.int16)))
        kind = rng.randrange(4)
        if kind == 0:
            out.append([topic, b"{not json" + rng.randbytes(8), payload])
        elif kind == 1:
            out.append([topic, head, payload[:-1]])  # truncated: shape vs size
        elif kind == 2:
            doc = json.loads(head)
            doc["v"] = 99
            out.append([topic, json.dumps(doc).encode(), payload])
        else:
            out.append([topic, rng.randbytes(rng.randrange(1, 64))])  # wrong part count
    return out


@dataclass
class Fault:
    kind: str
    t_s: float  # since the run's start (first all-working estimate)
    target: str = ""  # modality, or "" for the daemon-wide faults
    hold_s: float = 0.0
    size: int = 0  # malformed envelopes sent
    t_start_ns: int = 0
    t_end_ns: int = 0
    detected: bool | None = None
    recovered: bool | None = None

    def doc(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "t_s": round(self.t_s, 2), "target": self.target,
            "hold_s": round(self.hold_s, 2), "size": self.size,
            "detected": self.detected, "recovered": self.recovered,
        }


def schedule(
    seed: int, run_s: float, cooldown_s: float, gap_s: tuple[float, float]
) -> list[Fault]:
    rng = random.Random(seed)
    faults, t = [], rng.uniform(*gap_s)
    while t < run_s - cooldown_s:
        kind = rng.choices(FAULT_KINDS, FAULT_WEIGHTS)[0]
        f = Fault(kind, t)
        if kind == "kill":
            f.target, f.hold_s = rng.choice(MODALITIES), rng.uniform(0.5, 3.0)
        elif kind == "stop":
            f.target, f.hold_s = rng.choice(MODALITIES), rng.uniform(0.3, 3.0)
        elif kind == "malformed":
            f.size = rng.randrange(50, 501)
        else:
            f.hold_s = min(rng.uniform(5.0, 30.0), max(1.0, run_s - cooldown_s - t))
        faults.append(f)
        t += rng.uniform(*gap_s)
    return faults


class Collector(threading.Thread):
    """Receives estimates; keeps only a few numbers per estimate (bounded by the run length)."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.sock: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"estimate")
        self.sock.connect(endpoint)
        self.rows: list[tuple[int, int, int, float, float | None, tuple[str, ...]]] = []
        self.last: dict[str, Any] | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            if not self.sock.poll(100):
                continue
            parts = self.sock.recv_multipart(copy=False)
            received = monotonic_ns()
            e = wire.decode(parts).json()
            states = tuple(e["availability"][m] for m in MODALITIES)
            self.rows.append(
                (e["t_end_ns"], e["t_close_ns"], received, e["beyond_close_ms"],
                 e["latency_ms"], states)
            )
            self.last = e

    def close(self) -> None:
        self.halt.set()
        self.join(2)
        self.sock.close(linger=0)


@dataclass
class Soak:
    run: Path
    model_dir: str
    seed: int
    run_s: float
    rss_every_s: float
    cooldown_s: float
    gap_s: tuple[float, float]
    bucket_s: float = 60.0
    log: Callable[[str], None] = print
    sensors: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    retired: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.logs = self.run / "logs"
        self.logs.mkdir(exist_ok=True)
        self.jsonl = self.run / "estimates.jsonl"
        self.ingress = f"ipc://{self.run}/ingress.ipc"
        self.telemetry = f"ipc://{self.run}/telemetry.ipc"
        self.rng = random.Random(self.seed + 1)

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with open(self.logs / f"{name}.log", "ab") as log:
            return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)

    def start_sensor(self, m: str) -> None:
        self.sensors[m] = self._spawn(
            m, tool("edge-sensor") + [f"synthetic-{m}", "--run-dir", str(self.run)]
        )

    def execute(self) -> dict[str, Any]:
        daemon = self._spawn(
            "daemon",
            tool("edge-daemon") + [
                "--run-dir", str(self.run), "--model-dir", self.model_dir,
                "--estimates-jsonl", str(self.jsonl),
            ],
        )
        self.daemon = daemon
        collector = Collector(self.telemetry)
        injector: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.PUB)
        injector.setsockopt(zmq.LINGER, 0)
        injector.setsockopt(zmq.SNDHWM, 100_000)
        injector.connect(self.ingress)
        stalled: list[subprocess.Popen[bytes]] = []
        try:
            for m in MODALITIES:
                self.start_sensor(m)
            collector.start()
            deadline = time.monotonic() + 120
            while not (
                collector.last
                and all(collector.last["availability"][m] in WORKING[m] for m in MODALITIES)
            ):
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise RuntimeError(f"pipeline did not come up; see {self.logs}")
                time.sleep(0.1)
            return self._loop(daemon, collector, injector, stalled)
        finally:
            injector.close(linger=0)
            collector.close()
            for proc in [*stalled, *self.retired, *self.sensors.values(), daemon]:
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGCONT)
                    proc.send_signal(signal.SIGTERM)
            for proc in [*stalled, *self.retired, *self.sensors.values(), daemon]:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def _loop(
        self,
        daemon: subprocess.Popen[bytes],
        collector: Collector,
        injector: zmq.Socket[Any],
        stalled: list[subprocess.Popen[bytes]],
    ) -> dict[str, Any]:
        faults = schedule(self.seed, self.run_s, self.cooldown_s, self.gap_s)
        t0_ns = monotonic_ns()
        t0 = time.monotonic()
        n_before = len(collector.rows)
        # (due, order, action): fault starts and their ends
        actions: list[tuple[float, int, Callable[[], None]]] = []
        order = 0

        def at(t_s: float, fn: Callable[[], None]) -> None:
            nonlocal order
            heapq.heappush(actions, (t0 + t_s, order, fn))
            order += 1

        busy: set[str] = set()
        skipped: list[str] = []
        fuzz_seq = 0

        def begin(f: Fault) -> None:
            nonlocal fuzz_seq
            f.t_start_ns = monotonic_ns()
            if f.kind in ("kill", "stop"):
                if f.target in busy:  # one fault at a time per sensor
                    f.target = next((m for m in MODALITIES if m not in busy), "")
                if not f.target:
                    skipped.append(f.kind)
                    f.kind = "skipped"
                    return
                busy.add(f.target)
                proc = self.sensors[f.target]
                if f.kind == "kill":
                    proc.kill()
                    proc.wait(10)
                    at(f.t_s + f.hold_s, lambda: end_kill(f))
                else:
                    os.kill(proc.pid, signal.SIGSTOP)
                    at(f.t_s + f.hold_s, lambda: end_stop(f))
            elif f.kind == "malformed":
                for parts in malformed_burst(f.size, self.rng, fuzz_seq):
                    injector.send_multipart(parts)
                fuzz_seq += f.size
                f.t_end_ns = monotonic_ns()
            else:
                proc = subprocess.Popen([sys.executable, "-c", SUBSCRIBER, self.telemetry])
                stalled.append(proc)
                at(f.t_s + 1.0, lambda: os.kill(proc.pid, signal.SIGSTOP))  # connected first
                at(f.t_s + 1.0 + f.hold_s, lambda: end_stalled(f, proc))

        def end_kill(f: Fault) -> None:
            self.retired.append(self.sensors[f.target])
            self.start_sensor(f.target)
            f.t_end_ns = monotonic_ns()
            busy.discard(f.target)

        def end_stop(f: Fault) -> None:
            os.kill(self.sensors[f.target].pid, signal.SIGCONT)
            f.t_end_ns = monotonic_ns()
            busy.discard(f.target)

        def end_stalled(f: Fault, proc: subprocess.Popen[bytes]) -> None:
            proc.kill()
            proc.wait(10)
            stalled.remove(proc)
            f.t_end_ns = monotonic_ns()

        for f in faults:
            at(f.t_s, functools.partial(begin, f))
        time.sleep(0.5)  # the injector's subscription reaches the daemon before any burst
        rss: list[tuple[float, float]] = []
        next_rss, next_log = t0, t0 + 60
        died = None
        while (now := time.monotonic()) - t0 < self.run_s:
            if daemon.poll() is not None:
                died = f"daemon exited with {daemon.returncode} at {now - t0:.1f} s"
                break
            if now >= next_rss:
                rss.append((round(now - t0, 1), round(rss_mb(daemon.pid), 2)))
                next_rss += self.rss_every_s
            while actions and actions[0][0] <= now:
                heapq.heappop(actions)[2]()
            if now >= next_log:
                self.log(
                    f"soak: {now - t0:6.0f} s  estimates {len(collector.rows) - n_before}  "
                    f"rss {rss[-1][1]:.1f} MB  load {os.getloadavg()[0]:.1f}"
                )
                next_log += 60
            time.sleep(min(0.05, max(0.0, (actions[0][0] - now) if actions else 0.05)))
        while actions and died is None:  # a fault still open ends before the measurement
            heapq.heappop(actions)[2]()
        # the last faults' recovery (a restarted sensor imports for a few seconds on a loaded
        # box) is judged on the estimates after the run too; at most 20 s more
        tail_end = time.monotonic() + 20
        time.sleep(1.5)  # the last windows reach the subscriber and the jsonl
        while died is None and time.monotonic() < tail_end and not (
            collector.last
            and all(collector.last["availability"][m] in WORKING[m] for m in MODALITIES)
        ):
            time.sleep(0.2)
        end_ns = t0_ns + int(self.run_s * 1e9)
        rows = collector.rows[n_before:]
        return self._report(faults, rows, rss, t0_ns, end_ns, skipped, died, collector.last)

    def _report(
        self,
        faults: list[Fault],
        rows: list[tuple[int, int, int, float, float | None, tuple[str, ...]]],
        rss: list[tuple[float, float]],
        t0_ns: int,
        end_ns: int,
        skipped: list[str],
        died: str | None,
        last: dict[str, Any] | None,
    ) -> dict[str, Any]:
        daemon_ends = [
            e["t_end_ns"]
            for e in map(json.loads, self.jsonl.read_text().splitlines())
            if e["t_close_ns"] >= t0_ns
        ] if self.jsonl.exists() else []
        received_ends = [r[0] for r in rows]
        # which sensor faults showed, and recovered
        for f in faults:
            if f.kind not in ("kill", "stop") or not f.t_end_ns:
                continue
            i = MODALITIES.index(f.target)
            window = [r for r in rows if f.t_start_ns < r[1] <= f.t_end_ns + 1_000_000_000]
            if f.hold_s >= VISIBLE_S:
                f.detected = any(r[5][i] == "dead" for r in window)
            after = [r for r in rows if r[1] > f.t_end_ns]
            f.recovered = any(
                r[5][i] in WORKING[f.target] for r in after if r[1] <= f.t_end_ns + 15 * 10**9
            )
        health = (last or {}).get("health", {})
        malformed_counted = sum(
            sum(reasons.values()) for reasons in health.get("malformed", {}).values()
        )
        counts = {k: sum(f.kind == k for f in faults) for k in FAULT_KINDS}
        sensor_faults = [f for f in faults if f.kind in ("kill", "stop")]
        fault_doc = {
            "injected": counts,
            "skipped_busy": len(skipped),
            "sensor_faults_visible": sum(f.detected is not None for f in sensor_faults),
            "sensor_faults_detected_dead": sum(bool(f.detected) for f in sensor_faults),
            "sensor_faults_recovered": sum(bool(f.recovered) for f in sensor_faults),
            "sensor_faults": len(sensor_faults),
            "malformed_injected": sum(f.size for f in faults if f.kind == "malformed"),
            "malformed_counted_by_daemon": malformed_counted,
            "daemon_restart_counters": health.get("restarts"),
            "daemon_lost_counters": health.get("lost"),
            "skipped_windows": health.get("skipped_windows"),
            "late": health.get("late"),
            "schedule": [f.doc() for f in faults],
        }
        return {
            "died": died,
            "hops": {
                "hop_ms": HOP_NS / 1e6,
                "daemon_jsonl": hop_gaps(daemon_ends, HOP_NS),
                "telemetry_subscriber": hop_gaps(received_ends, HOP_NS),
            },
            "rss": rss,
            "latency": buckets([r for r in rows if r[1] <= end_ns], t0_ns, self.bucket_s),
            "faults": fault_doc,
        }


def buckets(
    rows: list[tuple[int, int, int, float, float | None, tuple[str, ...]]],
    t0_ns: int,
    bucket_s: float,
) -> list[dict[str, Any]]:
    by: dict[int, list[tuple[int, int, int, float, float | None, tuple[str, ...]]]] = {}
    for r in rows:
        by.setdefault(int((r[1] - t0_ns) / 1e9 // bucket_s), []).append(r)
    out = []
    for k in sorted(by):
        rs = by[k]
        beyond = [r[3] for r in rs]
        received = [(r[2] - r[1]) / 1e6 for r in rs]
        e2e = [r[4] for r in rs if r[4] is not None]
        out.append({
            "t_s": k * bucket_s,
            "estimates": len(rs),
            "beyond_close_ms": {"p50": pct(beyond, 50), "p99": pct(beyond, 99),
                                "max": pct(beyond, 100)},
            "received_after_close_ms": {"p50": pct(received, 50), "p99": pct(received, 99),
                                        "max": pct(received, 100)},
            "latency_ms": {"p50": pct(e2e, 50), "p99": pct(e2e, 99)},
        })
    return out


def rss_summary(
    rss: list[tuple[float, float]], warmup_s: float, window_s: float, run_s: float
) -> dict[str, Any]:
    after = [(t, r) for t, r in rss if t >= warmup_s]
    first = [r for t, r in after if t < warmup_s + window_s]
    last = [r for t, r in after if t >= run_s - window_s]
    if not first or not last:
        return {"drift_mb": None, "note": "run too short for the warm-up and median windows"}
    slope = (
        float(np.polyfit([t / 60 for t, _ in after], [r for _, r in after], 1)[0])
        if len(after) > 2 else float("nan")
    )
    return {
        "warmup_s": warmup_s,
        "median_window_s": window_s,
        "baseline_median_mb": round(float(np.median(first)), 2),
        "final_median_mb": round(float(np.median(last)), 2),
        "drift_mb": round(float(np.median(last) - np.median(first)), 2),
        "slope_mb_per_min_after_warmup": round(slope, 4),
        "min_mb": min(r for _, r in rss),
        "max_mb": max(r for _, r in rss),
        "max_after_warmup_mb": max(r for _, r in after),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, required=True, help="run length (real time)")
    parser.add_argument("--seed", type=int, default=0, help="fault schedule seed")
    parser.add_argument("--json", type=Path, help="default bench/results/soak-<N>min.json")
    parser.add_argument("--model-dir", default=str(default_model_dir()))
    parser.add_argument("--rss-every-s", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, help="default min(120, run / 5)")
    parser.add_argument("--median-window-s", type=float, help="default min(60, run / 5)")
    parser.add_argument("--bucket-s", type=float, default=60.0, help="latency bucket")
    parser.add_argument(
        "--fault-gap-s", type=float, nargs=2, default=(4.0, 12.0), metavar=("MIN", "MAX"),
        help="seconds between fault starts, uniform",
    )
    parser.add_argument("--cooldown-s", type=float, help="no new fault this long before the end")
    args = parser.parse_args(argv)
    run_s = args.minutes * 60
    warmup_s = args.warmup_s if args.warmup_s is not None else min(120.0, run_s / 5)
    window_s = args.median_window_s if args.median_window_s is not None else min(60.0, run_s / 5)
    cooldown_s = args.cooldown_s if args.cooldown_s is not None else min(20.0, run_s / 5)
    out = args.json or REPO / "bench" / "results" / f"soak-{args.minutes:g}min.json"
    load_start = os.getloadavg()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="ees-", dir="/tmp") as tmp:
        soak = Soak(
            run=Path(tmp), model_dir=args.model_dir, seed=args.seed, run_s=run_s,
            rss_every_s=args.rss_every_s, cooldown_s=cooldown_s,
            gap_s=(args.fault_gap_s[0], args.fault_gap_s[1]), bucket_s=args.bucket_s,
            log=lambda s: print(s, file=sys.stderr, flush=True),
        )
        result = soak.execute()
        if result["died"]:
            print((Path(tmp) / "logs" / "daemon.log").read_text()[-3000:], file=sys.stderr)
    doc = {
        "command": "python bench/soak.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "minutes": args.minutes,
        "seed": args.seed,
        "model_dir": os.path.relpath(args.model_dir, REPO),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "started_unix": round(started),
        "load_average_at_start": load_start,
        "load_average_at_end": os.getloadavg(),
        "daemon_rss": rss_summary(result["rss"], warmup_s, window_s, run_s),
        **result,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print_table(doc)
    print(f"wrote {out}")
    ok = (
        not doc["died"]
        and doc["hops"]["daemon_jsonl"]["missed_hops"] == 0
        and doc["hops"]["daemon_jsonl"]["repeated_or_backward"] == 0
    )
    return 0 if ok else 1


def print_table(doc: dict[str, Any]) -> None:
    r, h, f = doc["daemon_rss"], doc["hops"], doc["faults"]
    d, s = h["daemon_jsonl"], h["telemetry_subscriber"]
    lat = doc["latency"]
    p99 = [b["beyond_close_ms"]["p99"] for b in lat]
    rows = [
        ("run", f"{doc['minutes']:g} min, seed {doc['seed']}, model {doc['model_dir']}"),
        ("daemon alive", "yes" if not doc["died"] else doc["died"]),
        ("estimates (daemon / subscriber)", f"{d['estimates']} / {s['estimates']}"),
        ("missed hops (daemon / subscriber)", f"{d['missed_hops']} / {s['missed_hops']}"),
        ("longest gap between estimates", f"{d['longest_gap_ms']} ms"),
        ("RSS baseline -> final (medians)",
         f"{r.get('baseline_median_mb')} -> {r.get('final_median_mb')} MB"),
        ("RSS drift / slope after warm-up",
         f"{r.get('drift_mb')} MB / {r.get('slope_mb_per_min_after_warmup')} MB/min"),
        ("RSS min / max", f"{r.get('min_mb')} / {r.get('max_mb')} MB"),
        ("beyond close p99 per bucket, min / median / max",
         f"{min(p99):.1f} / {float(np.median(p99)):.1f} / {max(p99):.1f} ms" if p99 else "-"),
        ("faults injected", ", ".join(f"{k} {v}" for k, v in f["injected"].items())),
        ("sensor faults dead-detected / visible",
         f"{f['sensor_faults_detected_dead']} / {f['sensor_faults_visible']}"),
        ("sensor faults recovered / all", f"{f['sensor_faults_recovered']} / {f['sensor_faults']}"),
        ("malformed counted / injected",
         f"{f['malformed_counted_by_daemon']} / {f['malformed_injected']}"),
        ("load average start / end",
         f"{doc['load_average_at_start'][0]:.1f} / {doc['load_average_at_end'][0]:.1f}"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    head = ("minute", "n", "beyond close p50/p99/max ms", "latency p50/p99 ms")
    print(f"\n{head[0]:>6}  {head[1]:>4}  {head[2]:>28}  {head[3]:>19}")
    for b in lat:
        bc, le = b["beyond_close_ms"], b["latency_ms"]
        print(
            f"{b['t_s'] / 60:6.1f}  {b['estimates']:4d}  {bc['p50']:>8} / {bc['p99']:>7} / "
            f"{bc['max']:>7}  {le['p50']!s:>8} / {le['p99']!s:>8}"
        )


if __name__ == "__main__":
    sys.exit(main())
