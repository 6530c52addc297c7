"""Real `edge-sensor audio|camera|transcript` processes on a real drive, over real ZeroMQ.

edge/media.py starts the three capture processes (PyAudio through the ALSA file plugin,
OpenCV decoding the mp4, the transcript JSONL) from one replay start; a SUB socket bound here
receives what they publish. The frames that come out of the wire must be the drive's own
samples at the right stamps, and a scripted privacy fault must turn into `disabled`
heartbeats and back.
"""

from __future__ import annotations

import ctypes.util
import json
import time
import wave
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
pytest.importorskip("pyaudio")
zmq = pytest.importorskip("zmq")
if ctypes.util.find_library("asound") is None:
    pytest.skip("ALSA missing (.ci/setup installs it)", allow_module_level=True)

from edge import wire  # noqa: E402
from edge.media import MediaRunner  # noqa: E402
from sensors.drive import DriveScript, make_drive  # noqa: E402

SCRIPT = """
[drive]
name = "wire"
seed = 5
fps = 10
[[segment]]
emotion = "angry"
seconds = 4
[[segment]]
emotion = "sad"
seconds = 3
face = false
[[fault]]
modality = "video"
kind = "stalled"
start_s = 1.0
seconds = 1.5
[[fault]]
modality = "audio"
kind = "privacy"
start_s = 4.5
seconds = 1.5
"""


@pytest.mark.data
@pytest.mark.hardware
@pytest.mark.timeout(90)
def test_capture_processes_publish_the_drive_samples(shared_data: Path, tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(SCRIPT)
    drive = tmp_path / "drive"
    tl = make_drive(DriveScript.load(tmp_path / "s.toml"), emodb=shared_data / "emodb" / "wav",
                    ckplus=shared_data / "ckplus48",
                    meld=shared_data / "meld_text" / "dev_sent_emo.csv", out=drive)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    endpoint = f"ipc://{tmp_path}/ingress.ipc"
    sub.bind(endpoint)
    runner = MediaRunner(drive, tmp_path / "run", [endpoint], start_delay_s=2.5)
    got: list[tuple[int, wire.Envelope]] = []
    try:
        runner.start()
        while runner.drive_time_s() < tl["duration_s"] + 0.3:
            runner.tick()
            if sub.poll(50):
                got.append((time.clock_gettime_ns(time.CLOCK_MONOTONIC),
                            wire.decode(sub.recv_multipart())))
    finally:
        runner.stop()
        sub.close()
        ctx.term()
    t0 = runner.t0_ns
    frames = {m: [e for _, e in got if e.header.kind == "frame" and e.header.modality == m]
              for m in ("audio", "video", "text")}
    beats = {m: [e for _, e in got if e.header.kind == "heartbeat" and e.header.modality == m]
             for m in ("audio", "video", "text")}
    assert all(beats[m] for m in beats), "every process heartbeats"

    # audio: 100 ms blocks that are exactly the WAV's samples at their stamps
    with wave.open(str(drive / "audio.wav")) as w:
        wav = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    assert len(frames["audio"]) >= 10
    for e in frames["audio"]:
        assert e.header.dtype == "int16" and tuple(e.header.shape) == (1600,)
        end = (e.header.t_mono_ns - t0) * 16_000 // 1_000_000_000 - 22  # WAV header shift
        if 1600 <= end <= len(wav):
            assert np.array_equal(e.payload, wav[end - 1600:end])
    in_privacy = [e for e in frames["audio"] if 4.6e9 < e.header.t_mono_ns - t0 < 6.0e9]
    assert not in_privacy  # nothing captured while private
    states = {e.header.state for e in beats["audio"]
              if 4.8e9 < e.header.t_mono_ns - t0 < 5.9e9}
    assert states == {"disabled"}
    assert any(e.header.state in ("ok", "empty") for e in beats["audio"]
               if e.header.t_mono_ns - t0 > 6.5e9)  # and back after the fault

    # video: face crops during the angry segment, none (heartbeat "empty") without a face
    faces = [cv2.imread(str(shared_data / "ckplus48" / "anger" / f), cv2.IMREAD_GRAYSCALE)
             for f in tl["segments"][0]["faces"]]
    assert len(frames["video"]) >= 15  # ~10 fps for 4 s, minus start-up and the stall
    stamps_s = [(e.header.t_mono_ns - t0) / 1e9 for e in frames["video"]]
    assert not [t for t in stamps_s if 1.15 < t < 2.45]  # SIGSTOPped: nothing, not even late
    after = [(rx - e.header.t_mono_ns) / 1e6 for rx, e in got
             if e.header.kind == "frame" and e.header.modality == "video"
             and e.header.t_mono_ns - t0 > 2.5e9]
    assert after and max(after) < 300  # resumed at "now" instead of replaying the stall
    for e in frames["video"]:
        assert e.header.dtype == "uint8" and tuple(e.header.shape) == (1, 48, 48)
        assert e.header.t_mono_ns - t0 <= 4.05e9
        crop = e.payload[0].astype(float).ravel()
        assert max(np.corrcoef(crop, f.astype(float).ravel())[0, 1] for f in faces) > 0.6
    assert {e.header.state for e in beats["video"] if e.header.t_mono_ns - t0 > 4.5e9} == {"empty"}

    # text: the transcript's lines, stamped at their end in drive time
    lines = [json.loads(x) for x in (drive / "transcript.jsonl").read_text().splitlines()]
    expect = [(t0 + round(x["end_s"] * 1e9), x["text"]) for x in lines]
    assert [(e.header.t_mono_ns, e.text()) for e in frames["text"]] == expect
