"""The daemon loop in-process: real ZeroMQ sockets and a real NOTIFY_SOCKET, an in-test backend.

(The same daemon as real processes with the real onnxruntime model: test_daemon_processes.py.)
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from edge import wire
from edge.clock import monotonic_ns
from edge.config import DaemonConfig, WatchdogConfig, WindowConfig
from edge.daemon import Daemon
from edge.fusion import CONTENT_KEYS
from edge.notify import Notifier
from engines.backend import load_backend
from tests.helpers import MODEL_DIR, Subscriber, ToyBackend, short_tmp

FAST_WINDOWS = WindowConfig(window_ms=400, hop_ms=200, max_lag_ms=50)
FAST_WATCHDOG = WatchdogConfig(heartbeat_ms=50, miss_limit=2, stale_ms=400)


class Harness:
    def __init__(
        self, tmp: Path, backend: Any = None, notifier: Notifier | None = None, **cfg: Any
    ) -> None:
        self.ctx = zmq.Context()
        self.config = DaemonConfig(
            run_dir=str(tmp), window=FAST_WINDOWS, watchdog=FAST_WATCHDOG, model_dir=str(tmp), **cfg
        ).resolved()
        self.backend = backend or ToyBackend()
        self.daemon = Daemon(self.config, self.backend, ctx=self.ctx, notifier=notifier)
        self.daemon.bind()
        self.thread = threading.Thread(target=self.daemon.run, daemon=True)
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.connect(self.config.ingress)
        self.sub = Subscriber(self.ctx, self.config.telemetry)
        self.seq: dict[str, int] = {}
        time.sleep(0.1)  # let PUB->SUB and SUB<-PUB connections settle before the test starts
        self.thread.start()

    def send(
        self,
        modality: str,
        kind: str = "heartbeat",
        data: Any = None,
        state: str = "ok",
        t: int | None = None,
    ) -> None:
        seq = self.seq.get(modality, 0)
        self.seq[modality] = seq + 1
        header = wire.Header(
            sensor=modality,
            modality=modality,
            kind=kind,
            seq=seq,
            t_mono_ns=monotonic_ns() if t is None else t,
            t_wall_ns=0,
            encoding="utf-8" if modality == "text" and kind == "frame" else "raw",
            state=state,
        )
        self.pub.send_multipart(wire.encode(header, data), copy=False)

    def tick(self, *, audio: bool = True, video: bool = True, text: bool = False) -> None:
        if audio:
            self.send("audio", "frame", np.full(800, 1000, np.int16))
            self.send("audio")
        if video:
            self.send("video", "frame", np.full((48, 48), 100, np.uint8))
            self.send("video")
        if text:
            self.send("text", "frame", b"hello there")
            self.send("text")

    def estimates(self, envelopes: list[wire.Envelope]) -> list[dict[str, Any]]:
        return [e.json() for e in envelopes if e.topic == "estimate"]

    def close(self) -> None:
        self.daemon.request_stop()
        self.thread.join(5)
        assert not self.thread.is_alive()
        self.pub.close(linger=0)
        self.sub.close()
        self.ctx.term()


@pytest.fixture
def harness() -> Iterator[Any]:
    made: list[Harness] = []

    def make(**kwargs: Any) -> Harness:
        made.append(Harness(tmp, **kwargs))
        return made[-1]

    with short_tmp() as tmp:
        yield make
        for h in made:
            h.close()


def run_for(h: Harness, seconds: float, **tick: bool) -> list[wire.Envelope]:
    got = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        h.tick(**tick)
        got += h.sub.collect(0.05)
    return got


@pytest.mark.timeout(20)
def test_publishes_one_estimate_per_hop_with_availability(harness: Any) -> None:
    h = harness()
    est = h.estimates(run_for(h, 1.5))
    assert len(est) >= 5
    last = est[-1]
    assert last["availability"] == {"audio": "ok", "video": "ok", "text": "dead"}
    assert last["used"] == ["audio", "video"] and last["pattern"] == "audio+video"
    assert last["t_end_ns"] - last["t_start_ns"] == 400_000_000
    assert [b["t_end_ns"] - a["t_end_ns"] for a, b in zip(est, est[1:], strict=False)] == [
        200_000_000
    ] * (len(est) - 1)
    assert abs(sum(last["probs"].values()) - 1) < 1e-9 and last["label"] in last["probs"]
    assert 0 <= last["beyond_close_ms"] < 100 and last["latency_ms"] > 0
    assert set(last["router"]) == {"audio", "video"}
    links = last["links"]
    assert links["audio"]["state"] == "ok" and 0 <= links["audio"]["heartbeat_age_ms"] < 100
    assert links["text"]["state"] == "dead" and links["text"]["heartbeat_age_ms"] is None


@pytest.mark.timeout(20)
def test_a_silent_link_turns_dead_and_the_others_are_still_used(harness: Any) -> None:
    h = harness()
    run_for(h, 0.8)
    est = h.estimates(run_for(h, 1.0, video=False))
    assert est[-1]["availability"]["video"] == "dead" and est[-1]["used"] == ["audio"]


@pytest.mark.timeout(20)
def test_heartbeats_without_frames_are_stale_and_empty_is_reported(harness: Any) -> None:
    h = harness()
    got = []
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        h.tick(video=False)
        h.send("video")  # heartbeat only
        h.send("text", state="empty")
        got += h.sub.collect(0.05)
    last = h.estimates(got)[-1]
    assert last["availability"] == {"audio": "ok", "video": "stale", "text": "empty"}


@pytest.mark.timeout(20)
def test_malformed_messages_are_counted_per_link_and_dropped(harness: Any) -> None:
    h = harness(max_payload_bytes=10_000)
    run_for(h, 0.3)  # a fresh PUB drops what it sends before it has seen the subscription
    good = wire.encode(
        wire.Header(
            sensor="audio",
            modality="audio",
            kind="frame",
            seq=0,
            t_mono_ns=monotonic_ns(),
            t_wall_ns=0,
        ),
        np.zeros(10, np.int16),
    )
    topic, header, payload = (bytes(p) for p in good)
    bad_messages = [
        [topic, header],  # part count
        [topic, header, payload, b"extra"],
        [topic, b"\x00garbage", payload],  # header json
        [topic, header.replace(b'"v":1', b'"v":9'), payload],  # version
        [topic, header.replace(b'"int16"', b'"object"'), payload],  # dtype
        [topic, header, payload[:-2]],  # shape vs size
        [topic, header.replace(b"[10]", b"[6000]"), bytes(12_000)],  # oversized
        [b"video/x", header, payload],  # topic mismatch
        [
            topic,
            header.replace(b'"int16"', b'"uint8"').replace(b"[10]", b"[20]"),
            payload,
        ],  # audio not int16
    ]
    for parts in bad_messages:
        h.pub.send_multipart(parts)
    est = h.estimates(run_for(h, 1.0))
    malformed = est[-1]["health"]["malformed"]
    assert malformed["audio/audio"] == {
        "part_count": 2,
        "bad_header_json": 1,
        "bad_version": 1,
        "bad_dtype": 1,
        "size_mismatch": 1,
        "payload_too_large": 1,
        "bad_payload": 1,
    }
    assert malformed["video/x"] == {"topic_mismatch": 1}
    assert est[-1]["availability"]["audio"] == "ok"  # still serving


@pytest.mark.timeout(20)
def test_disabled_modality_is_never_used(harness: Any) -> None:
    h = harness(disabled=("video",))
    est = h.estimates(run_for(h, 1.0))
    assert est[-1]["availability"]["video"] == "disabled" and est[-1]["used"] == ["audio"]
    assert all("video" not in call for call in h.backend.calls)


def notify_socket(tmp: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp / "notify.sock"))
    sock.settimeout(0.05)
    return sock


def datagrams(sock: socket.socket, seconds: float) -> list[str]:
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            out.append(sock.recv(4096).decode())
        except TimeoutError:
            pass
    return out


@pytest.mark.timeout(20)
def test_sd_notify_ready_status_and_watchdog_only_while_progressing(harness: Any) -> None:
    with short_tmp() as tmp:
        sock = notify_socket(tmp)
        env = {"NOTIFY_SOCKET": str(tmp / "notify.sock"), "WATCHDOG_USEC": "100000"}
        backend = ToyBackend()
        h = harness(backend=backend, notifier=Notifier(env))
        first = datagrams(sock, 1.0)
        assert first[0].startswith("READY=1")
        assert sum(m == "WATCHDOG=1" for m in first) >= 10  # every 50 ms
        assert any(m.startswith("STATUS=audio=") for m in first)
        backend.delay_s = 1.5  # the loop is stuck in the model: no more pings
        datagrams(sock, 0.3)  # the model is next called within one hop (200 ms)
        assert "WATCHDOG=1" not in datagrams(sock, 1.0)  # ... and blocks for 1.5 s
        backend.delay_s = 0.0
        assert "WATCHDOG=1" in datagrams(sock, 2.0)
        h.close()
        assert "STOPPING=1" in datagrams(sock, 0.3)
        sock.close()


class ExplodingBackend(ToyBackend):
    def predict(self, inputs: Any) -> Any:
        if inputs.present():
            raise ValueError("cannot featurise this window")
        return super().predict(inputs)


@pytest.mark.timeout(20)
def test_a_backend_error_is_counted_and_the_prior_published(harness: Any) -> None:
    h = harness(backend=ExplodingBackend())
    est = h.estimates(run_for(h, 1.0))
    assert est and est[-1]["used"] == [] and "cannot featurise" in est[-1]["error"]
    assert est[-1]["health"]["rejected"]["backend:ValueError"] >= 1


class SlowThreadSafeModel:
    """The real onnxruntime model behind random delays (so later windows often finish first),
    recording how many windows it ran at once."""

    thread_safe = True

    def __init__(self) -> None:
        self.inner = load_backend(MODEL_DIR)
        self.name, self.labels = self.inner.name, self.inner.labels
        self.lock = threading.Lock()
        self.running = self.max_running = 0

    def warmup(self) -> None:
        pass

    def predict(self, inputs: Any) -> Any:
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            time.sleep(random.uniform(0, 0.03))
            return self.inner.predict(inputs)
        finally:
            with self.lock:
                self.running -= 1


def replay_estimates(workers: int) -> tuple[list[dict[str, Any]], int]:
    """6 s of stamped frames sent as fast as possible into an event-clock daemon."""
    model = SlowThreadSafeModel()
    with short_tmp() as tmp:
        h = Harness(tmp, clock="event", replay_workers=workers, backend=model)
        try:
            # Until the daemon hears us (PUB drops what it sends before the subscription is
            # through): a document the daemon counts but ignores, so event time does not start.
            deadline = time.monotonic() + 10
            while h.daemon.received == 0:
                assert time.monotonic() < deadline, "the daemon never received anything"
                h.pub.send_multipart(wire.json_message(
                    kind="status", seq=0, t_mono_ns=0, t_wall_ns=0, doc={}), copy=False)
                time.sleep(0.02)
            t0 = 1_000_000 * 1_000_000_000
            for k in range(60):
                t = t0 + k * 100_000_000
                h.send("audio", "frame", np.full(1600, 500 + 40 * k, np.int16), t=t - 1)
                h.send("audio", t=t)
                h.send("video", "frame", np.full((48, 48), 3 * k, np.uint8), t=t - 2)
                h.send("video", t=t)
            estimates = h.estimates(h.sub.collect(3.0))
        finally:
            h.close()
    return estimates, model.max_running


@pytest.mark.timeout(30)
def test_replay_runs_windows_in_parallel_and_publishes_them_in_order_unchanged() -> None:
    parallel, max_running = replay_estimates(workers=3)
    serial, serial_running = replay_estimates(workers=1)
    assert max_running >= 2 and serial_running == 1
    assert len(parallel) == len(serial) >= 25
    ends = [e["t_end_ns"] for e in parallel]
    assert all(b - a == 200_000_000 for a, b in zip(ends, ends[1:], strict=False))
    assert [e["seq"] for e in parallel] == list(range(1, len(parallel) + 1))
    content = [{k: e[k] for k in CONTENT_KEYS} for e in parallel]
    assert content == [{k: e[k] for k in CONTENT_KEYS} for e in serial]
    assert {e["pattern"] for e in parallel} == {"audio+video"}
