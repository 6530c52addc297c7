"""The recording sensor plays one modality of an edge-record file back as a live source;
edge-sensor's command line builds sensors from its backend table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge import wire
from edge.record import RecordConfig, Recorder
from sensors.recording import RecordingSensor
from tests.helpers import short_tmp

MS = 1_000_000


def write_drive(path: Path, run: Path) -> None:
    recorder = Recorder(RecordConfig(out=str(path), run_dir=str(run), video_frames=True).resolved())
    for i in range(10):
        t = 5_000 * MS + i * 100 * MS
        for modality, data in (
            ("audio", np.full(1600, i, np.int16)),
            ("video", np.full((48, 48), i, np.uint8)),
        ):
            header = wire.Header(
                sensor=modality,
                modality=modality,
                kind="frame",
                seq=2 * i,
                t_mono_ns=t,
                t_wall_ns=0,
            )
            recorder.write([bytes(p) for p in wire.encode(header, data)])
            beat = wire.Header(
                sensor=modality,
                modality=modality,
                kind="heartbeat",
                seq=2 * i + 1,
                t_mono_ns=t,
                t_wall_ns=0,
            )
            recorder.write([bytes(p) for p in wire.encode(beat)])
    recorder.close()


@pytest.mark.timeout(30)
def test_recording_sensor_replays_one_modality_restamped_and_paced() -> None:
    with short_tmp() as run:
        drive = run / "drive.mcap"
        write_drive(drive, run)
        sensor = RecordingSensor(drive, modality="video", speed=10.0)
        with sensor:
            samples = []
            while len(samples) < 11:
                sample = sensor.read(0.5)
                if sample is not None:
                    samples.append(sample)
        frames = [s for s in samples if s.state == "ok"]
        assert [int(s.data[0, 0]) for s in frames] == list(range(10))
        assert all(s.data.shape == (48, 48) and s.data.dtype == np.uint8 for s in frames)
        # 100 ms recorded spacing at 10x: paced at ~10 ms, not bursted. The pacer catches up
        # after a late wake-up, so single gaps vary on a loaded machine; the span does not.
        stamps = np.array([s.t_mono_ns for s in frames])
        assert np.all(np.diff(stamps) >= 0)
        assert 60 < (stamps[-1] - stamps[0]) / MS < 400
        assert samples[-1].state == "empty"  # the drive is over: alive, nothing to send


def test_edge_sensor_lists_its_backends_and_rejects_bad_config(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sensors.cli", "list"], capture_output=True, text=True, check=True
    )
    assert "synthetic-audio" in out.stdout and "recording" in out.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[sensor]\nheartbeat_ms = 0\n")
    proc = subprocess.run(
        [sys.executable, "-m", "sensors.cli", "synthetic-audio", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and "heartbeat_ms" in proc.stderr
