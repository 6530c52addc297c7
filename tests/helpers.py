"""Shared helpers for the runtime's socket and process tests (short ipc paths, strict teardown)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zmq

from edge import wire

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# The real exported model (onnxruntime) the integration tests run; EDGE_TEST_MODEL_DIR points
# them at another export.
MODEL_DIR = Path(os.environ.get("EDGE_TEST_MODEL_DIR", REPO / "tests" / "assets" / "tiny_model"))
HOP_NS = 500_000_000


@contextlib.contextmanager
def short_tmp() -> Iterator[Path]:
    """ipc paths are limited to ~107 bytes: pytest's tmp_path can be too long."""
    path = Path(tempfile.mkdtemp(prefix="ee-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def entry_point(name: str) -> list[str]:
    exe = BIN / name
    if exe.exists():
        return [str(exe)]
    module = {"edge-sensor": "sensors.cli"}.get(name, "edge." + name.removeprefix("edge-"))
    return [sys.executable, "-m", module]


def spawn(
    name: str, *args: str, env: dict[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start an entry point; its output goes to `log` (the child keeps its own descriptor)."""
    out = open(log, "ab") if log else None  # noqa: SIM115 - closed right after the fork
    try:
        return subprocess.Popen(
            entry_point(name) + list(args),
            stdout=out or subprocess.DEVNULL,
            stderr=subprocess.STDOUT if out else subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=REPO,
        )
    finally:
        if out is not None:
            out.close()


def stop(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> int:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    return proc.returncode


class Subscriber:
    """A SUB socket collecting decoded envelopes (bounded wait on every receive)."""

    def __init__(
        self, ctx: zmq.Context[Any], endpoint: str, *, bind: bool = False, topic: bytes = b""
    ) -> None:
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, topic)
        (self.sock.bind if bind else self.sock.connect)(endpoint)

    def recv(self, timeout_s: float) -> wire.Envelope | None:
        if not self.sock.poll(int(timeout_s * 1000)):
            return None
        return wire.decode(self.sock.recv_multipart(copy=False))

    def collect(self, seconds: float) -> list[wire.Envelope]:
        out = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            env = self.recv(left)
            if env is not None:
                out.append(env)
        return out

    def close(self) -> None:
        self.sock.close(linger=0)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


class ToyBackend:
    """An in-test `Backend` for unit tests of the daemon loop (integration tests use the real
    onnxruntime model). Deterministic: probabilities follow how much each modality carried."""

    name = "toy"
    labels = ("neutral", "happy", "sad", "angry", "fear", "disgust", "surprise")

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.calls: list[tuple[str, ...]] = []

    def warmup(self) -> None:
        pass

    def predict(self, inputs: Any) -> Any:
        import numpy as np

        from engines.backend import Prediction

        if self.delay_s:
            time.sleep(self.delay_s)
        present = inputs.present()
        self.calls.append(present)
        logits = np.zeros(len(self.labels))
        if inputs.audio is not None:
            logits[1] += float(np.abs(inputs.audio.astype(np.float64)).mean()) / 1000
        if inputs.video is not None:
            logits[2] += float(inputs.video.mean()) / 100
        if inputs.text is not None:
            logits[3] += len(inputs.text)
        probs = np.exp(logits) / np.exp(logits).sum()
        router = {m: {e: 1.0 / len(present) for e in present} for m in present}
        return Prediction(probs=probs, router=router, used=present)
