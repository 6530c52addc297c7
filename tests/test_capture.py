"""Capture machinery and synthetic sensors: real threads, real XPUB/SUB sockets."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
import zmq

from sensors.base import Sample, Sensor, SensorError
from sensors.capture import CaptureConfig, SampleBuffer, run_capture
from sensors.synthetic import SyntheticAudio, SyntheticText, SyntheticVideo
from tests.helpers import Subscriber, short_tmp


class FakeTime:
    """Clock + sleep for the synthetic sensors: sleeping advances the clock, nothing waits."""

    def __init__(self) -> None:
        self.t = 0

    def clock(self) -> int:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += int(seconds * 1e9)


def fake() -> dict[str, Any]:
    t = FakeTime()
    return {"clock": t.clock, "sleep": t.sleep}


def take(sensor: Sensor, n: int) -> list[Sample]:
    sensor.connect()
    out = []
    while len(out) < n:
        sample = sensor.read(1.0)
        if sample is not None:
            out.append(sample)
    sensor.close()
    return out


@pytest.mark.parametrize("cls", [SyntheticAudio, SyntheticVideo, SyntheticText])
def test_synthetic_content_is_a_function_of_the_seed(cls: Any) -> None:
    a = take(cls(seed=3, **fake()), 12)
    b = take(cls(seed=3, **fake()), 12)
    c = take(cls(seed=4, **fake()), 12)
    assert all(np.array_equal(x.data, y.data) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x.data, y.data) for x, y in zip(a, c, strict=True))


def test_synthetic_formats() -> None:
    audio = take(SyntheticAudio(**fake()), 1)[0]
    assert audio.data.dtype == np.int16 and audio.data.shape == (1600,)
    video = take(SyntheticVideo(**fake()), 1)[0]
    assert video.data.dtype == np.uint8 and video.data.shape == (48, 48)
    text = take(SyntheticText(**fake()), 12)
    spoken = [s for s in text if s.state == "ok"]
    assert len(spoken) == 2 and all(s.encoding == "utf-8" for s in spoken)
    assert {s.state for s in text} == {"ok", "empty"}
    assert bytes(spoken[0].data).decode().endswith((".", "!", "?"))


def test_sample_buffer_is_bounded_and_answers_latest_by_age() -> None:
    buf = SampleBuffer(3)
    for t in range(5):
        buf.put(Sample(data=np.zeros(1), t_mono_ns=t * 100, t_wall_ns=0))
    assert buf.dropped == 2
    assert buf.latest(max_age_ns=50, now_ns=450) is not None
    assert buf.latest(max_age_ns=49, now_ns=450) is None
    assert [s.t_mono_ns for s in buf.drain()] == [200, 300, 400]
    assert buf.drain(timeout_s=0.01) == []


class FlakySensor(Sensor):
    """Fails its first read, then delivers; counts connects."""

    modality = "audio"

    def __init__(self) -> None:
        self.connects = 0
        self.reads = 0

    def connect(self) -> None:
        self.connects += 1

    def close(self) -> None:
        pass

    def read(self, timeout_s: float) -> Sample | None:
        self.reads += 1
        if self.reads == 1:
            raise SensorError("unplugged")
        threading.Event().wait(0.02)
        return Sample(data=np.zeros(160, np.int16), t_mono_ns=self.reads, t_wall_ns=0)


def capture_for(sensor: Sensor, seconds: float, **cfg: Any) -> tuple[list[Any], dict[str, Any]]:
    with short_tmp() as tmp:
        endpoint = f"ipc://{tmp}/ingress.ipc"
        ctx = zmq.Context()
        sub = Subscriber(ctx, endpoint, bind=True)
        config = CaptureConfig(
            connect=(endpoint,), reconnect_min_ms=10, await_subscribers=1, **cfg
        ).resolved(sensor.modality)
        stop = threading.Event()
        result: dict[str, Any] = {}
        thread = threading.Thread(
            target=lambda: result.update(run_capture(sensor, config, stop, ctx))
        )
        thread.start()
        got = sub.collect(seconds)
        stop.set()
        thread.join(5)
        sub.close()
        ctx.term()
        assert not thread.is_alive()
    return got, result


@pytest.mark.timeout(20)
def test_capture_publishes_frames_and_heartbeats_and_reconnects() -> None:
    sensor = FlakySensor()
    got, result = capture_for(sensor, 0.6, heartbeat_ms=50)
    kinds = [e.header.kind for e in got]
    assert sensor.connects == 2 and result["read_errors"] == 1
    assert kinds.count("heartbeat") >= 8 and kinds.count("frame") >= 10
    seqs = [e.header.seq for e in got]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # one sequence, no gaps
    assert all(e.topic == "audio/audio" for e in got)


@pytest.mark.timeout(20)
def test_disabled_sensor_never_opens_the_device_and_heartbeats_disabled() -> None:
    sensor = FlakySensor()
    got, _ = capture_for(sensor, 0.4, heartbeat_ms=50, disabled=True)
    assert sensor.connects == 0
    assert got and {(e.header.kind, e.header.state) for e in got} == {("heartbeat", "disabled")}


@pytest.mark.timeout(20)
def test_heartbeat_only_sends_no_frames_but_claims_ok() -> None:
    got, _ = capture_for(FlakySensor(), 0.4, heartbeat_ms=50, heartbeat_only=True)
    assert got and {(e.header.kind, e.header.state) for e in got} == {("heartbeat", "ok")}


@pytest.mark.timeout(20)
def test_empty_text_sensor_heartbeats_empty_between_utterances() -> None:
    got, _ = capture_for(SyntheticText(utterance_every_s=100.0), 1.2, heartbeat_ms=50)
    states = {e.header.state for e in got if e.header.kind == "heartbeat"}
    assert "empty" in states and not [e for e in got if e.header.kind == "frame"]
