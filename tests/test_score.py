"""edge-score against a hand-made timeline and estimate stream with known answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.score import main, score

T0 = 5_000_000_000  # media start on CLOCK_MONOTONIC
S = 1_000_000_000

TIMELINE = {
    "name": "t",
    "duration_s": 8.0,
    "pairing": "synthetic",
    "segments": [
        {"emotion": "happy", "start_s": 0.0, "end_s": 4.0},
        {"emotion": "sad", "start_s": 4.0, "end_s": 8.0},
    ],
    "faults": [
        {"modality": "audio", "kind": "unplugged", "expect": "dead", "start_s": 1.0,
         "end_s": 2.5},
        {"modality": "video", "kind": "privacy", "expect": "disabled", "start_s": 5.0,
         "end_s": 7.0},
    ],
}


def _est(start_s: float, label: str, used: list[str], avail: dict[str, str],
         latency: float = 10.0) -> dict:
    return {"t_start_ns": T0 + round(start_s * S), "t_end_ns": T0 + round((start_s + 2) * S),
            "label": label, "probs": {"happy": 0.9 if label == "happy" else 0.1,
                                      "sad": 0.9 if label == "sad" else 0.1},
            "confidence": 0.9, "availability": avail, "used": used, "latency_ms": latency,
            "router": {}}


OK3 = {"audio": "ok", "video": "ok", "text": "ok"}


def _stream() -> list[dict]:
    # 2 s windows, 0.5 s hop, starting at drive time 0 -> window starts 0.0 .. 6.0
    out = []
    for i in range(13):
        a = i * 0.5
        avail = dict(OK3)
        end = a + 2
        if 2.0 <= end <= 3.0:
            avail["audio"] = "dead"
        if 6.5 <= end <= 7.5:
            avail["video"] = "disabled"
        used = [m for m in ("audio", "video", "text") if avail[m] == "ok"]
        truth = "happy" if a + 2 <= 4.0 else ("sad" if a >= 4.0 else None)
        label = truth or "happy"
        if a == 4.5:
            label = "happy"  # one wrong answer, in the audio+text pattern
        out.append(_est(a, label, used, avail, latency=10.0 + i))
    return out


def test_scores_by_hand() -> None:
    est = _stream()
    r = score(TIMELINE, est, T0)
    # inside happy: starts 0.0..2.0 (5 windows); inside sad: 4.0..6.0 (5); straddling: 3
    assert (r["n_scored"], r["n_straddling"], r["n_outside"]) == (10, 3, 0)
    assert r["accuracy"] == 0.9
    assert r["ua"] == round((1.0 + 0.8) / 2, 4)
    assert r["segments"] == {"n": 2, "accuracy": 1.0, "ua": 1.0}
    pp = r["per_pattern"]
    assert {k: (v["n"], v["accuracy"]) for k, v in pp.items()} == {
        "video+text": (3, 1.0), "audio+video+text": (4, 1.0), "audio+text": (3, 0.6667)}
    assert r["latency_ms_p50"] == 16.0 and r["latency_ms_p99"] == pytest.approx(21.88)
    # audio dead first reported by the window ending at 2.0 s: 1000 ms after 1.0 s
    assert r["fault_detect_ms"]["audio/unplugged@1s"] == 1000.0
    # video disabled from the window ending at 6.5: 1500 ms after 5.0 s
    assert r["fault_detect_ms"]["video/privacy@5s"] == 1500.0
    audio = next(f for f in r["faults"] if f["modality"] == "audio")
    assert audio["recover_ms"] == 1000.0  # ok again from the window ending at 3.5 (fault end 2.5)
    video = next(f for f in r["faults"] if f["modality"] == "video")
    assert video["recover_ms"] == 1000.0  # window ending at 8.0 (fault end 7.0)
    assert r["max_gap_ms"] == 500.0 and r["hop_ms_median"] == 500.0


def test_fault_times_use_the_window_close_when_the_daemon_reports_it() -> None:
    est = _stream()
    for e in est:
        e["t_close_ns"] = e["t_end_ns"] + 100_000_000  # a 100 ms lag budget
    r = score(TIMELINE, est, T0)
    assert r["fault_detect_ms"]["audio/unplugged@1s"] == 1100.0
    assert r["fault_detect_ms"]["video/privacy@5s"] == 1600.0


def test_missed_fault_and_paused_stream_show_up() -> None:
    est = [e for e in _stream() if not 3.0 <= (e["t_end_ns"] - T0) / S <= 4.5]
    for e in est:
        e["availability"]["video"] = "ok"
    r = score(TIMELINE, est, T0)
    assert r["fault_detect_ms"]["video/privacy@5s"] is None
    assert r["max_gap_ms"] == 2500.0  # from the window ending at 2.5 to the one at 5.0


def test_cli_reads_media_t0_line_and_counts_bad_lines(tmp_path: Path, capsys) -> None:
    drive = tmp_path / "drive"
    drive.mkdir()
    (drive / "timeline.json").write_text(json.dumps(TIMELINE))
    lines = [json.dumps({"media_t0_ns": T0}), "{broken", json.dumps({"x": 1})]
    lines += [json.dumps(e) for e in _stream()]
    (tmp_path / "est.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "score.json"
    assert main(["--drive", str(drive), "--estimates", str(tmp_path / "est.jsonl"),
                 "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    for key in ("accuracy", "ua", "per_pattern", "latency_ms_p50", "latency_ms_p99",
                "fault_detect_ms"):
        assert key in r
    assert r["bad_lines"] == 2 and r["accuracy"] == 0.9 and r["media_t0_ns"] == T0
    assert "audio/unplugged@1s" in capsys.readouterr().out
    (tmp_path / "no_t0.jsonl").write_text(json.dumps(_stream()[0]) + "\n")
    with pytest.raises(SystemExit):
        main(["--drive", str(drive), "--estimates", str(tmp_path / "no_t0.jsonl"),
              "--json", str(out)])
