"""edge-record / edge-replay on real processes: crash-safe MCAP, bit-identical replay."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from edge import wire
from edge.clock import monotonic_ns
from edge.fusion import CONTENT_KEYS
from tests.helpers import MODEL_DIR, read_jsonl, short_tmp, spawn, stop


def recorded_estimates(path: Path) -> list[dict[str, Any]]:
    return [
        wire.decode(parts).json()
        for _, _, parts in wire.iter_recording(str(path), topics=("estimate",))
    ]


def wait_ready(proc: subprocess.Popen[bytes], notify: Any, timeout_s: float = 30) -> None:
    notify.settimeout(timeout_s)
    assert b"READY=1" in notify.recv(4096)
    assert proc.poll() is None


def send_frames(endpoint: str, n: int) -> None:
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.connect(endpoint)
    time.sleep(0.3)  # a fresh PUB drops what it sends before the subscription arrives
    for seq in range(n):
        header = wire.Header(
            sensor="mic",
            modality="audio",
            kind="frame",
            seq=seq,
            t_mono_ns=monotonic_ns(),
            t_wall_ns=0,
        )
        pub.send_multipart(wire.encode(header, np.full(1600, seq, np.int16)), copy=False)
        time.sleep(0.002)
    pub.close()
    ctx.term()


@pytest.mark.timeout(60)
def test_recording_survives_a_killed_recorder_up_to_its_last_flushed_chunk() -> None:
    import socket

    from mcap.exceptions import McapError
    from mcap.reader import make_reader

    with short_tmp() as run:
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(run / "notify"))
        env = {"NOTIFY_SOCKET": str(run / "notify")}
        out = run / "crash.mcap"
        rec = spawn(
            "edge-record", "--out", str(out), "--run-dir", str(run), "--flush-ms", "200", env=env
        )
        wait_ready(rec, notify)
        send_frames(f"ipc://{run}/record.ipc", 300)
        time.sleep(0.8)  # > flush_ms: the chunk holding the last frame is on disk
        rec.send_signal(signal.SIGKILL)
        rec.wait(5)
        got = [wire.decode(p) for _, _, p in wire.iter_recording(str(out))]
        assert [e.header.seq for e in got] == list(range(300))
        assert all(int(e.payload[0]) == e.header.seq for e in got)
        with open(out, "rb") as f, pytest.raises(McapError):  # no footer: a real crash
            make_reader(f).get_summary()

        clean = run / "clean.mcap"
        rec = spawn("edge-record", "--out", str(clean), "--run-dir", str(run), env=env)
        wait_ready(rec, notify)
        send_frames(f"ipc://{run}/record.ipc", 50)
        time.sleep(0.3)
        assert stop(rec) == 0
        with open(clean, "rb") as f:
            reader = make_reader(f)
            summary = reader.get_summary()
            assert summary is not None and summary.statistics is not None
            assert summary.statistics.message_count == 2 * 50  # envelope + JSON view per message
            channels = {c.topic: c.message_encoding for c in summary.channels.values()}
            assert channels == {"audio/mic": wire.RECORD_ENCODING, "/links/audio/mic": "json"}
        assert (run / "clean.record.resolved.json").exists()
        notify.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_replaying_a_recorded_drive_fast_gives_the_live_estimates_bit_for_bit(
    tmp_path: Path,
) -> None:
    drive = tmp_path / "drive.mcap"
    demo = [sys.executable, "-m", "edge.demo", "--seconds", "8", "--out", str(tmp_path / "live")]
    demo += ["--model-dir", str(MODEL_DIR), "--record", str(drive), "--kill", "audio@2+2"]
    demo += ["--record-video"]  # replay must see the camera's frames to give its estimates
    subprocess.run(demo, check=True, capture_output=True, timeout=60)
    live = recorded_estimates(drive)
    assert any(e["availability"]["audio"] == "dead" for e in live)
    sensor_stamps = [
        t for t, _, _ in wire.iter_recording(str(drive), topics=("audio/", "video/", "text/"))
    ]
    first_stamp, last_stamp = min(sensor_stamps), max(sensor_stamps)
    # every live window that the recorded sensor traffic spans (the live daemon also cut
    # windows before the sensors had started) must come out of the replay, unchanged
    expected = [e for e in live if e["t_end_ns"] > first_stamp and e["t_close_ns"] < last_stamp]
    assert len(expected) >= 6

    with short_tmp() as run:
        jsonl = tmp_path / "replay.jsonl"
        daemon = spawn(
            "edge-daemon",
            *("--run-dir", str(run), "--model-dir", str(MODEL_DIR), "--clock", "event"),
            *("--estimates-jsonl", str(jsonl)),
            log=tmp_path / "replay-daemon.log",
        )
        try:
            replay = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "edge.replay",
                    str(drive),
                    "--fast",
                    "--run-dir",
                    str(run),
                    "--json",
                ],
                capture_output=True,
                timeout=60,
                check=True,
            )
            summary = json.loads(replay.stdout)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:  # the daemon drains what the replay queued
                done = read_jsonl(jsonl)
                if done and done[-1]["t_end_ns"] >= expected[-1]["t_end_ns"]:
                    break
                time.sleep(0.1)
        finally:
            assert stop(daemon) == 0
    replayed = read_jsonl(jsonl)
    by_end = {e["t_end_ns"]: e for e in replayed}
    missing = [e["t_end_ns"] for e in expected if e["t_end_ns"] not in by_end]
    assert not missing, missing
    for e in expected:
        r = by_end[e["t_end_ns"]]
        assert {k: r[k] for k in CONTENT_KEYS} == {k: e[k] for k in CONTENT_KEYS}
    assert all(r["clock"] == "event" for r in replayed)
    assert replayed[0]["t_end_ns"] > first_stamp  # no windows before the first event
    assert replayed[-1]["health"]["skipped_windows"] == 0 and replayed[-1]["health"]["late"] == 0
    assert summary["messages"] > 100 and summary["x_real_time"] > 5
