"""The fault matrix's rig: a real edge-daemon (real onnxruntime model) with real synthetic
sensor processes on ipc endpoints in a short private run dir, fast settings so a fault and its
recovery take a second or two, and a telemetry subscriber that keeps every estimate.

Reuses tests.helpers (spawn/stop/short_tmp/Subscriber); adds only what a fault case needs:
timing settings, a sensor restart, an injector PUB socket and checks on the estimate stream.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from edge import wire
from edge.clock import monotonic_ns
from tests.helpers import MODEL_DIR, Subscriber, short_tmp, spawn, stop

HEARTBEAT_MS = 50
MISS_LIMIT = 2
HOP_MS = 200
WINDOW_MS = 1000
LAG_MS = 50
STALE_MS = 500
MAX_PAYLOAD = 256 * 1024
DEAD_BUDGET_NS = (MISS_LIMIT * HEARTBEAT_MS + HOP_MS) * 1_000_000
SENSORS = {"audio": "synthetic-audio", "video": "synthetic-video", "text": "synthetic-text"}
# what a working sensor looks like: the synthetic transcript speaks every 3 s and is "empty"
# between; a window without its utterance but with an "ok" heartbeat reads "stale"
WORKING = {"audio": ("ok",), "video": ("ok",), "text": ("ok", "empty", "stale")}


def working(estimate: dict[str, Any], *modalities: str) -> bool:
    return all(estimate["availability"][m] in WORKING[m] for m in modalities or WORKING)


def daemon_toml(run: Path) -> str:
    path = run / "daemon.toml"
    path.write_text(
        f"[daemon]\nmax_payload_bytes = {MAX_PAYLOAD}\nstatus_interval_ms = 200\n"
        f"[daemon.window]\nwindow_ms = {WINDOW_MS}\nhop_ms = {HOP_MS}\nmax_lag_ms = {LAG_MS}\n"
        f"[daemon.watchdog]\nheartbeat_ms = {HEARTBEAT_MS}\nmiss_limit = {MISS_LIMIT}\n"
        f"stale_ms = {STALE_MS}\n"
    )
    return str(path)


class Collector(threading.Thread):
    """Receives every estimate in the background (the test thread injects faults meanwhile)."""

    def __init__(self, ctx: zmq.Context[Any], endpoint: str) -> None:
        super().__init__(daemon=True)
        self.sub = Subscriber(ctx, endpoint, topic=b"estimate")
        self.sub.sock.setsockopt(zmq.RCVHWM, 100_000)
        self.estimates: list[dict[str, Any]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            env = self.sub.recv(0.05)
            if env is not None:
                self.estimates.append(env.json())

    def wait_for(self, pred: Any, timeout_s: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout_s
        seen = 0
        while time.monotonic() < deadline:
            for e in self.estimates[seen:]:
                if pred(e):
                    return e
            seen = len(self.estimates)
            time.sleep(0.02)
        return None

    def since(self, t_ns: int) -> list[dict[str, Any]]:
        return [e for e in self.estimates if e["t_close_ns"] >= t_ns]

    def close(self) -> None:
        self.halt.set()
        self.join(2)
        self.sub.close()


class Rig:
    def __init__(self, run: Path, logs: Path, ctx: zmq.Context[Any]) -> None:
        self.run, self.logs, self.ctx = run, logs, ctx
        self.ingress = f"ipc://{run}/ingress.ipc"
        self.telemetry = f"ipc://{run}/telemetry.ipc"
        self.sensors: dict[str, subprocess.Popen[bytes]] = {}
        self.daemon: subprocess.Popen[bytes] | None = None
        self.collector = Collector(ctx, self.telemetry)
        self._injector: zmq.Socket[Any] | None = None
        self.retired: list[subprocess.Popen[bytes]] = []

    def start_daemon(self) -> None:
        self.daemon = spawn(
            "edge-daemon",
            *("--run-dir", str(self.run), "--model-dir", str(MODEL_DIR)),
            *("--config", daemon_toml(self.run)),
            log=self.logs / "daemon.log",
        )

    def start_sensor(self, modality: str, *extra: str) -> None:
        self.sensors[modality] = spawn(
            "edge-sensor",
            SENSORS[modality],
            *("--run-dir", str(self.run), "--heartbeat-ms", str(HEARTBEAT_MS), *extra),
            log=self.logs / f"sensor-{modality}.log",
        )

    def signal(self, modality: str, sig: int) -> int:
        os.kill(self.sensors[modality].pid, sig)
        return monotonic_ns()

    def kill_sensor(self, modality: str) -> int:
        proc = self.sensors[modality]
        t = self.signal(modality, signal.SIGKILL)
        proc.wait(5)
        self.retired.append(proc)
        return t

    def all_ok(self, timeout_s: float = 40) -> dict[str, Any]:
        estimate = self.collector.wait_for(working, timeout_s)
        assert estimate is not None, self.log_tail()
        return estimate

    @property
    def injector(self) -> zmq.Socket[Any]:
        if self._injector is None:
            self._injector = self.ctx.socket(zmq.PUB)
            self._injector.setsockopt(zmq.LINGER, 0)
            self._injector.setsockopt(zmq.SNDHWM, 100_000)
            self._injector.connect(self.ingress)
            time.sleep(0.3)  # a fresh PUB drops what it sends before the subscription arrives
        return self._injector

    def log_tail(self) -> str:
        path = self.logs / "daemon.log"
        return path.read_text()[-3000:] if path.exists() else "(no daemon log)"

    def close(self) -> None:
        if self._injector is not None:
            self._injector.close(linger=0)
        self.collector.close()
        for proc in [*self.sensors.values(), *self.retired]:
            stop(proc)
        if self.daemon is not None:
            stop(self.daemon)


@contextlib.contextmanager
def rig(logs: Path, *, sensors: tuple[str, ...] = tuple(SENSORS)) -> Iterator[Rig]:
    """Daemon + sensors up, every modality ok, collector running."""
    ctx = zmq.Context()
    with short_tmp() as run:
        r = Rig(run, logs, ctx)
        try:
            r.start_daemon()
            for m in sensors:
                r.start_sensor(m)
            r.collector.start()
            if sensors == tuple(SENSORS):
                r.all_ok()
            yield r
        finally:
            r.close()
            ctx.term()


def hops_ok(estimates: list[dict[str, Any]]) -> bool:
    """An estimate every hop: consecutive windows, none missing or repeated."""
    ends = [e["t_end_ns"] for e in estimates]
    return len(ends) > 1 and bool(np.all(np.diff(ends) == HOP_MS * 1_000_000))


def envelope(
    modality: str,
    sensor: str,
    seq: int,
    *,
    kind: str = "frame",
    t_mono_ns: int | None = None,
    t_wall_ns: int = 0,
    payload: np.ndarray | None = None,
) -> list[bytes]:
    """A valid envelope (bytes parts) a test can then break."""
    if payload is None and kind == "frame":
        payload = {
            "audio": np.zeros(800, np.int16),
            "video": np.zeros((1, 48, 48), np.uint8),
            "text": np.frombuffer(b"hello", np.uint8),
        }[modality]
    header = wire.Header(
        sensor=sensor,
        modality=modality,
        kind=kind,
        seq=seq,
        t_mono_ns=monotonic_ns() if t_mono_ns is None else t_mono_ns,
        t_wall_ns=t_wall_ns,
        encoding="utf-8" if modality == "text" and kind == "frame" else "raw",
    )
    return [bytes(p) for p in wire.encode(header, payload)]
