"""edge-demo --media end to end: real capture processes on a drive -> daemon -> edge-score.

Every scripted fault must be reported with the right reason within the watchdog's budget
(miss_limit x heartbeat_ms + one hop, plus the 50 ms the demo's fault clock may lag), and the
estimate stream must never pause. Uses whatever model the daemon finds (models/live, else the
tiny test model), so accuracy is not asserted here: the README reports it for models/live.
"""

from __future__ import annotations

import ctypes.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("cv2")
pytest.importorskip("pyaudio")
if ctypes.util.find_library("asound") is None:
    pytest.skip("ALSA missing (.ci/setup installs it)", allow_module_level=True)

from edge.score import main as score_main  # noqa: E402
from sensors.drive import DriveScript, make_drive  # noqa: E402

SCRIPT = """
[drive]
name = "faults"
seed = 11
fps = 10
[[segment]]
emotion = "angry"
seconds = 5
[[segment]]
emotion = "happy"
seconds = 5
[[fault]]
modality = "audio"
kind = "unplugged"
start_s = 1.5
seconds = 2.5
[[fault]]
modality = "video"
kind = "stalled"
start_s = 4.5
seconds = 2
[[fault]]
modality = "text"
kind = "privacy"
start_s = 7
seconds = 2
"""
BUDGET_MS = 2 * 100 + 500 + 50


@pytest.mark.data
@pytest.mark.hardware
@pytest.mark.timeout(150)
def test_demo_on_media_reports_every_fault_in_budget(shared_data: Path, tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(SCRIPT)
    drive = tmp_path / "drive"
    make_drive(DriveScript.load(tmp_path / "s.toml"), emodb=shared_data / "emodb" / "wav",
               ckplus=shared_data / "ckplus48",
               meld=shared_data / "meld_text" / "dev_sent_emo.csv", out=drive)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "edge.demo", "--media", str(drive), "--json",
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert score_main(["--drive", str(drive), "--estimates", str(out / "estimates.jsonl"),
                       "--json", str(out / "score.json")]) == 0
    r = json.loads((out / "score.json").read_text())
    assert r["n_scored"] >= 10 and r["bad_lines"] == 0
    for name, ms in r["fault_detect_ms"].items():
        assert ms is not None and 0 <= ms <= BUDGET_MS, (name, ms)
    assert r["max_gap_ms"] <= 550  # one estimate per 500 ms hop, never a pause
    assert all(f["recover_ms"] is not None for f in r["faults"])  # every sensor came back
    used = set(r["per_pattern"])
    assert "audio+video+text" in used or "audio+video" in used  # real frames were fused
