"""Running the model ahead of a window's close (`FusionCore.precompute`), on the real
onnxruntime model: the estimate is the same as without it, and anything that changes the
window's inputs after the precompute makes the close run the model again."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edge import wire
from edge.config import DaemonConfig, WatchdogConfig, WindowConfig
from edge.fusion import CONTENT_KEYS, FusionCore
from engines.backend import Prediction, WindowInputs, load_backend
from tests.helpers import MODEL_DIR

MS = 1_000_000
WINDOW = WindowConfig(window_ms=1000, hop_ms=500, max_lag_ms=100, precompute_after_ms=60)
# Window [0.5 s, 1.5 s) closes at 1.6 s; its precompute point is 1.56 s.
END, CLOSE, AHEAD = 1500 * MS, 1600 * MS, 1560 * MS
ALL = ("audio", "video", "text")


class CountingBackend:
    """The real onnxruntime backend, counting the model runs."""

    def __init__(self) -> None:
        self.inner = load_backend(MODEL_DIR)
        self.name, self.labels = self.inner.name, self.inner.labels
        self.runs = 0

    def warmup(self) -> None:
        self.inner.warmup()

    def predict(self, inputs: WindowInputs) -> Prediction:
        self.runs += 1
        return self.inner.predict(inputs)


@pytest.fixture(scope="module")
def backend() -> CountingBackend:
    return CountingBackend()


def make_core(backend: CountingBackend, **window: Any) -> FusionCore:
    config = DaemonConfig(
        window=WindowConfig(**{**WINDOW.__dict__, **window}),
        watchdog=WatchdogConfig(heartbeat_ms=100, miss_limit=2),
        model_dir=str(MODEL_DIR),
    )
    core = FusionCore(config, backend)
    core.windower.start(0)
    return core


class Feed:
    """Stamped frames and heartbeats for one core, with per-link sequence numbers."""

    def __init__(self, core: FusionCore) -> None:
        self.core = core
        self.seq: dict[str, int] = {}
        self.rng = np.random.default_rng(7)

    def send(self, modality: str, t_ns: int, now_ns: int, kind: str = "frame") -> None:
        seq = self.seq.get(modality, 0)
        self.seq[modality] = seq + 1
        data: Any = None
        if kind == "frame":
            data = {
                "audio": lambda: (self.rng.standard_normal(1600) * 3000).astype(np.int16),
                "video": lambda: self.rng.integers(0, 255, (48, 48), dtype=np.uint8),
                "text": lambda: b"why is this traffic not moving",
            }[modality]()
        header = wire.Header(
            sensor=modality, modality=modality, kind=kind, seq=seq, t_mono_ns=t_ns,
            t_wall_ns=0, encoding="utf-8" if modality == "text" and kind == "frame" else "raw")
        self.core.ingest(wire.decode(wire.encode(header, data)), now_ns)

    def until(self, t_end_ns: int, modalities: tuple[str, ...] = ALL) -> None:
        """Every modality sends a frame and a heartbeat every 100 ms up to `t_end_ns`."""
        for t in range(100 * MS, t_end_ns + 1, 100 * MS):
            for m in modalities:
                if m != "text" or t % (500 * MS) == 0:
                    self.send(m, t - 1, t)
                self.send(m, t, t, kind="heartbeat")


def content(estimate: dict[str, Any]) -> dict[str, Any]:
    return {k: estimate[k] for k in CONTENT_KEYS}


def test_a_precomputed_estimate_equals_the_one_computed_at_the_close(
        backend: CountingBackend) -> None:
    ahead, plain = make_core(backend), make_core(backend, precompute_after_ms=100)  # off
    for core in (ahead, plain):
        feed = Feed(core)
        feed.until(AHEAD)
        assert [e["t_end_ns"] for e in core.step(AHEAD)] == [500 * MS, 1000 * MS]
    backend.runs = 0
    assert ahead.next_precompute_ns() == AHEAD and plain.next_precompute_ns() is None
    ahead.precompute(AHEAD - 1)
    assert backend.runs == 0, "ran before its precompute point"
    ahead.precompute(AHEAD)
    ahead.precompute(AHEAD + 5 * MS)  # once per window
    assert backend.runs == 1
    # done for this window: the daemon's loop must not wake up for it again (a busy loop)
    assert ahead.next_precompute_ns() is None
    (got,) = ahead.step(CLOSE)
    assert backend.runs == 1, "the close ran the model again although nothing changed"
    assert got["precomputed"] is True
    # the model's time is reported where it was spent: ahead of the close, none after it
    assert got["ahead_ms"] > 0 and got["infer_ms"] == 0
    assert ahead.next_precompute_ns() == END + 500 * MS + 60 * MS  # the next window's
    (want,) = plain.step(CLOSE)
    assert want["precomputed"] is False
    assert want["ahead_ms"] == 0 and want["infer_ms"] > 0
    assert got["used"] == ["audio", "video", "text"]
    assert content(got) == content(want)
    assert ahead.health()["precompute"] == {"hits": 1, "misses": 0}


def test_a_frame_arriving_after_the_precompute_makes_the_close_run_the_model_again(
        backend: CountingBackend) -> None:
    core = make_core(backend)
    feed = Feed(core)
    feed.until(AHEAD)
    core.step(AHEAD)
    core.precompute(AHEAD)
    # a video frame stamped inside the window, arriving late but within the lag budget
    feed.send("video", END - 10 * MS, AHEAD + 10 * MS)
    backend.runs = 0
    (estimate,) = core.step(CLOSE)
    assert backend.runs == 1
    assert estimate["precomputed"] is False
    assert estimate["frames"]["video"] == 11
    assert core.health()["precompute"] == {"hits": 0, "misses": 1}


def test_a_link_that_dies_after_the_precompute_is_left_out_at_the_close(
        backend: CountingBackend) -> None:
    core = make_core(backend, settle_ms=0)  # link states judged at the close itself
    feed = Feed(core)
    feed.until(1300 * MS)
    feed.send("text", 1380 * MS, 1380 * MS, kind="heartbeat")  # text's last sign of life
    feed.until(AHEAD, modalities=("audio", "video"))
    core.step(AHEAD)
    backend.runs = 0
    core.precompute(AHEAD)  # 180 ms after text's last heartbeat: alive, used
    assert backend.runs == 1
    (estimate,) = core.step(CLOSE)  # 220 ms > 2 x 100 ms: dead
    assert estimate["availability"]["text"] == "dead"
    assert estimate["used"] == ["audio", "video"]
    assert estimate["precomputed"] is False and backend.runs == 2
