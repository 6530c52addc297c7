"""Benchmark the telemetry dashboard (`edge-dash`) as a real process on real sockets.

    .venv/bin/python bench/bench_dash.py [--out runs/bench_dash.json] [--browsers 2]

Phases (a ZeroMQ PUB in this process stands in for the daemon, publishing through edge.wire):
1. real time: one estimate per 0.5 s hop for `--realtime-s` seconds with `--browsers`
   WebSocket clients reading: dashboard CPU (% of one core) and RSS.
2. latency: 50 estimates/s; PUB send -> WebSocket receipt in a browser client, p50/p99.
3. flood: estimates as fast as the PUB can send, one healthy and one frozen browser: how many
   per second the dashboard takes in, its RSS before/after, drops to the frozen browser.
Writes JSON and prints a short table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import zmq
from websockets.sync.client import connect

from edge import wire

LABELS = ("neutral", "happy", "sad", "angry", "fear", "disgust", "surprise")


def estimate(i: int, **extra: Any) -> dict[str, Any]:
    top = LABELS[i % len(LABELS)]
    probs = {lab: (0.58 if lab == top else 0.07) for lab in LABELS}
    t_end = 10**10 + i * 500_000_000
    links = {
        f"{m}/s0": {"state": "ok", "heartbeat_age_ms": 40.0, "lost": 0, "frames_per_s": 25.0}
        for m in ("audio", "video", "text")
    }
    return {
        "t_start_ns": t_end - 2 * 10**9,
        "t_end_ns": t_end,
        "probs": probs,
        "label": top,
        "confidence": 0.58,
        "availability": {"audio": "ok", "video": "ok", "text": "ok"},
        "used": ["audio", "video", "text"],
        "router": {m: {"audio": 0.2, "video": 0.3, "text": 0.5} for m in ("audio", "video")},
        "latency_ms": 3.0,
        "links": links,
        **extra,
    }


def send(pub: zmq.Socket[bytes], i: int, **extra: Any) -> None:
    doc = estimate(i, **extra)
    pub.send_multipart(
        wire.json_message(
            kind="estimate", seq=i, t_mono_ns=doc["t_end_ns"], t_wall_ns=doc["t_end_ns"], doc=doc
        ),
        copy=False,
    )


def stats(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base}/stats", timeout=5) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Browser(threading.Thread):
    """A WebSocket client that reads everything and stamps receipt of tagged estimates."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.latencies_ms: list[float] = []
        self.received = 0
        self.stop = threading.Event()

    def run(self) -> None:
        with connect(self.url, max_size=None, open_timeout=5) as ws:
            while not self.stop.is_set():
                try:
                    msg = json.loads(ws.recv(timeout=0.2))
                except TimeoutError:
                    continue
                if msg["type"] != "estimate":
                    continue
                self.received += 1
                sent = msg["estimate"].get("sent_ns")
                if sent is not None:
                    self.latencies_ms.append((time.monotonic_ns() - sent) / 1e6)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(q / 100 * len(ordered) + 0.5) - 1))]


def frozen_browser(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(
        f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade"
        "\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    return sock  # never read again


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_dash.json"))
    parser.add_argument("--browsers", type=int, default=2)
    parser.add_argument("--realtime-s", type=float, default=20.0)
    parser.add_argument("--flood", type=int, default=20_000)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_dash_"))
    endpoint = f"ipc://{tmp / 'telemetry.ipc'}"
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(endpoint)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge.dash.server", "--telemetry", endpoint, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    match = re.search(r"(http://[\d.]+:\d+)/", proc.stdout.readline())
    assert match, "edge-dash did not start"
    base = match.group(1)
    ws_url = base.replace("http://", "ws://") + "/ws"
    result: dict[str, Any] = {"machine": platform.platform(), "cpus": os.cpu_count()}
    try:
        while stats(base)["received"] == 0:  # PUB drops until the SUB has joined
            send(pub, 0)
            time.sleep(0.05)
        browsers = [Browser(ws_url) for _ in range(args.browsers)]
        for b in browsers:
            b.start()
        while len(stats(base)["clients"]) < args.browsers:
            time.sleep(0.05)

        # 1. real time
        n_rt = int(args.realtime_s / 0.5)
        rss0, cpu0, t0 = stats(base)["rss_bytes"], cpu_seconds(proc.pid), time.monotonic()
        for i in range(n_rt):
            send(pub, i)
            time.sleep(0.5)
        cpu_pct = 100 * (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
        rss1 = stats(base)["rss_bytes"]
        result["realtime"] = {
            "seconds": args.realtime_s,
            "estimates": n_rt,
            "browsers": args.browsers,
            "cpu_pct_one_core": round(cpu_pct, 2),
            "rss_mib_start": round(rss0 / 2**20, 1),
            "rss_mib_end": round(rss1 / 2**20, 1),
        }

        # 2. latency at 50 estimates/s
        for i in range(500):
            send(pub, i, sent_ns=time.monotonic_ns())
            time.sleep(0.02)
        time.sleep(0.5)
        lat = [x for b in browsers for x in b.latencies_ms]
        result["latency"] = {
            "rate_hz": 50,
            "samples": len(lat),
            "p50_ms": round(percentile(lat, 50), 3),
            "p99_ms": round(percentile(lat, 99), 3),
            "max_ms": round(max(lat), 3),
        }

        # 3. flood with a frozen browser attached
        frozen = frozen_browser(base)
        while len(stats(base)["clients"]) < args.browsers + 1:
            time.sleep(0.05)
        before = stats(base)
        t0 = time.monotonic()
        for i in range(args.flood):
            send(pub, i)
        send_s = time.monotonic() - t0
        time.sleep(1.0)
        after = stats(base)
        taken = after["received"] - before["received"]
        result["flood"] = {
            "published": args.flood,
            "publish_rate_hz": round(args.flood / send_s),
            "dashboard_received": taken,
            "dashboard_rate_hz": round(taken / (send_s + 1.0)),
            "dropped_to_browsers": after["dropped_total"] - before["dropped_total"],
            "rss_mib_before": round(before["rss_bytes"] / 2**20, 1),
            "rss_mib_after": round(after["rss_bytes"] / 2**20, 1),
        }
        frozen.close()
        for b in browsers:
            b.stop.set()
            b.join(timeout=5)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        pub.close(linger=0)
        ctx.term()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    rt, la, fl = result["realtime"], result["latency"], result["flood"]
    print(f"{'metric':44} value")
    cpu_label = f"real time (2 Hz, {rt['browsers']} browsers) CPU % of a core"
    print(f"{cpu_label:44} {rt['cpu_pct_one_core']}")
    print(f"{'real time RSS MiB start -> end':44} {rt['rss_mib_start']} -> {rt['rss_mib_end']}")
    print(f"{'PUB -> browser latency p50 / p99 ms':44} {la['p50_ms']} / {la['p99_ms']}")
    print(
        f"{'flood: published / taken in by dashboard':44} "
        f"{fl['published']} / {fl['dashboard_received']}"
    )
    print(f"{'flood: dashboard intake estimates/s':44} {fl['dashboard_rate_hz']}")
    print(f"{'flood: dropped to browsers (frozen + slow)':44} {fl['dropped_to_browsers']}")
    print(f"{'flood: RSS MiB before -> after':44} {fl['rss_mib_before']} -> {fl['rss_mib_after']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
