"""The transcript sensor on a real socket (unix and tcp) and on a JSONL file played in time."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from sensors.base import Sample, SensorError
from sensors.transcript import TranscriptConfig, TranscriptSensor


def _mono_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def _next_ok(sensor: TranscriptSensor, timeout_s: float = 3.0) -> Sample:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        s = sensor.read(timeout_s=0.2)
        if s is not None and s.state == "ok":
            return s
    raise AssertionError("no utterance arrived")


def _connect(address: str) -> socket.socket:
    kind, _, addr = address.partition(":")
    if kind == "unix":
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(addr)
    else:
        host, _, port = addr.rpartition(":")
        c = socket.create_connection((host, int(port)), timeout=2)
    return c


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_socket_feed_gives_stamped_utterances_and_counts_bad_lines(
    kind: str, tmp_path: Path
) -> None:
    src = f"unix:{tmp_path / 'assistant.sock'}" if kind == "unix" else "tcp:127.0.0.1:0"
    with TranscriptSensor(TranscriptConfig(source=src, idle_s=0.3)) as sensor:
        assert isinstance(sensor, TranscriptSensor)
        client = _connect(sensor.address)
        t_end = _mono_ns()
        t_start = t_end - 1_500_000_000
        line = {"text": "why is this traffic so slow", "t_start_ns": t_start, "t_end_ns": t_end}
        # A bad line, a good one split across two sends, a Unicode one without stamps.
        payload = b"{not json\n" + json.dumps(line).encode()
        client.sendall(payload[:20])
        time.sleep(0.05)
        client.sendall(payload[20:] + b"\n" + '{"text": "schön, danke"}\n'.encode())
        first = _next_ok(sensor)
        assert first.encoding == "utf-8"
        assert first.data.tobytes().decode() == "why is this traffic so slow"
        assert first.t_mono_ns == t_end  # stamped with the utterance's end
        assert sensor.last_utterance is not None
        assert sensor.last_utterance.t_start_ns == t_start
        before = _mono_ns()
        second = _next_ok(sensor)
        assert second.data.tobytes().decode() == "schön, danke"
        assert second.t_mono_ns <= _mono_ns() and second.t_mono_ns >= before - 1_000_000_000
        assert sensor.counters["bad_lines"] == 1
        # Nobody speaks: alive-but-empty samples, not silence.
        empties = [sensor.read(timeout_s=0.4) for _ in range(3)]
        assert any(s is not None and s.state == "empty" and s.data.size == 0 for s in empties)
        # The assistant restarts: a new connection is taken.
        client.close()
        client = _connect(sensor.address)
        client.sendall(b'{"text": "back again"}\n')
        assert _next_ok(sensor).data.tobytes().decode() == "back again"
        assert sensor.counters["connections"] == 2
        client.close()


@pytest.mark.timeout(20)
def test_jsonl_file_is_released_at_utterance_end_and_skips_the_past(tmp_path: Path) -> None:
    path = tmp_path / "transcript.jsonl"
    rows = [
        {"start_s": 0.0, "end_s": 0.2, "text": "already said"},
        {"start_s": 0.5, "end_s": 0.9, "text": "first"},
        {"start_s": 1.0, "end_s": 1.3, "text": "second"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    t0 = _mono_ns() - 400_000_000  # the drive began 0.4 s ago: the first line is history
    with TranscriptSensor(TranscriptConfig(source=str(path), replay_t0_ns=t0)) as sensor:
        assert sensor.counters["skipped"] == 1
        got = [_next_ok(sensor), _next_ok(sensor)]
        assert [s.data.tobytes().decode() for s in got] == ["first", "second"]
        assert [s.t_mono_ns for s in got] == [t0 + 900_000_000, t0 + 1_300_000_000]
        for s in got:  # released when spoken, not before
            assert s.t_wall_ns > 0
        assert _mono_ns() >= t0 + 1_300_000_000
        assert sensor.read(timeout_s=0.6) is not None  # then alive and empty
        assert sensor.finished


def test_missing_file_and_bad_address_are_sensor_errors(tmp_path: Path) -> None:
    with pytest.raises(SensorError):
        TranscriptSensor(TranscriptConfig(source=str(tmp_path / "none.jsonl"))).connect()
    with pytest.raises(SensorError):
        TranscriptSensor(TranscriptConfig(source="tcp:127.0.0.1:notaport")).connect()


@pytest.mark.timeout(20)
def test_privacy_flag_discards_utterances_and_reports_disabled(tmp_path: Path) -> None:
    flag = tmp_path / "privacy-text"
    cfg = TranscriptConfig(source="tcp:127.0.0.1:0", idle_s=0.2, privacy_file=str(flag))
    with TranscriptSensor(cfg) as sensor:
        client = _connect(sensor.address)
        flag.touch()
        client.sendall(b'{"text": "my pin is 1234"}\n')
        got = [sensor.read(timeout_s=0.3) for _ in range(4)]
        states = {s.state for s in got if s is not None}
        assert states == {"disabled"}
        assert all(s.data.size == 0 for s in got if s is not None)
        assert sensor.counters["discarded_private"] == 1
        flag.unlink()
        client.sendall(b'{"text": "hello again"}\n')
        assert _next_ok(sensor).data.tobytes().decode() == "hello again"
        client.close()
