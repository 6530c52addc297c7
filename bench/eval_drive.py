"""Fusion vs each single modality on the same recorded drive, through the real daemon.

    .venv/bin/edge-demo --media runs/commute --record runs/commute-live/drive.mcap --record-video \\
        --out runs/commute-live --json > /dev/null                  # live, real time
    .venv/bin/python bench/eval_drive.py --drive runs/commute \\
        --recording runs/commute-live/drive.mcap --out runs/commute-eval

The live run's recording holds every envelope the real capture processes sent. Here it is
replayed (`edge-replay --fast`) into a fresh `edge-daemon --clock event` four times: with all
modalities, and with only audio, only video, only text (the others `--disable`d in the
daemon). The event clock makes each replay give exactly the windows of the live run, so the
four runs differ only in what the model may use. Each is scored with edge-score against the
drive's timeline. Writes `<out>/eval.json` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"fusion": (), "audio only": ("video", "text"), "video only": ("audio", "text"),
            "text only": ("audio", "video")}


def _entry(name: str) -> list[str]:
    exe = Path(sys.executable).parent / name
    return [str(exe)] if exe.exists() else [shutil.which(name) or name]


def _wait_lines(path: Path, settle_s: float = 1.5, timeout_s: float = 120.0) -> None:
    """Until the daemon's estimates file stops growing (the replay's last window is out)."""
    last, since, deadline = -1, time.monotonic(), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        size = path.stat().st_size if path.exists() else 0
        if size != last:
            last, since = size, time.monotonic()
        elif time.monotonic() - since > settle_s and size > 0:
            return
        time.sleep(0.2)


def replay_variant(recording: Path, disable: tuple[str, ...], out: Path,
                   model_dir: str | None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    estimates = out / "estimates.jsonl"
    estimates.unlink(missing_ok=True)
    run = Path(tempfile.mkdtemp(prefix="edge-eval-", dir="/tmp"))
    argv = _entry("edge-daemon") + ["--run-dir", str(run), "--clock", "event",
                                    "--estimates-jsonl", str(estimates), "--out-dir", str(out)]
    argv += [a for m in disable for a in ("--disable", m)]
    if model_dir:
        argv += ["--model-dir", model_dir]
    with (out / "daemon.log").open("ab") as log:
        daemon = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        while not (run / "ingress.ipc").exists():  # bound once the model is loaded
            if daemon.poll() is not None:
                raise SystemExit(f"edge-daemon exited; see {out / 'daemon.log'}")
            time.sleep(0.2)
        time.sleep(1.0)  # let its SUB socket settle before the replay's first envelope
        subprocess.run(_entry("edge-replay") + [str(recording), "--fast", "--run-dir", str(run)],
                       check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        _wait_lines(estimates)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
        shutil.rmtree(run, ignore_errors=True)
    return estimates


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--drive", type=Path, required=True)
    ap.add_argument("--recording", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model-dir", default=None)
    args = ap.parse_args()
    media = json.loads((args.recording.parent / "media.json").read_text())
    t0 = str(media["media_t0_ns"])
    results = {}
    for name, disable in VARIANTS.items():
        out = args.out / name.replace(" ", "_")
        est = replay_variant(args.recording, disable, out, args.model_dir)
        subprocess.run(_entry("edge-score") + ["--drive", str(args.drive), "--estimates",
                                               str(est), "--json", str(out / "score.json"),
                                               "--t0-ns", t0],
                       check=True, stdout=subprocess.DEVNULL, env=os.environ)
        results[name] = json.loads((out / "score.json").read_text())
    summary = {k: {"accuracy": r["accuracy"], "ua": r["ua"], "segments": r["segments"],
                   "n_scored": r["n_scored"]} for k, r in results.items()}
    (args.out / "eval.json").write_text(json.dumps({"summary": summary, "runs": results},
                                                   indent=1))
    print(f"{'run':<12} {'windows':>8} {'acc':>7} {'UA':>7} {'seg acc':>8} {'seg UA':>7}")
    for k, r in summary.items():
        print(f"{k:<12} {r['n_scored']:>8} {r['accuracy']:>7} {r['ua']:>7} "
              f"{r['segments']['accuracy']:>8} {r['segments']['ua']:>7}")
    print(f"-> {args.out / 'eval.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
