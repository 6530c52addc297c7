"""`edge-score`: compare a run's estimates with a scripted drive's ground truth.

    edge-score --drive runs/commute --estimates runs/commute-live/estimates.jsonl --json OUT

Inputs: the drive's `timeline.json` (edge-make-drive) and the estimate JSON lines of a run
(`edge-demo --media ... --json`): `t_start_ns`, `t_end_ns` (CLOCK_MONOTONIC), `probs`, `label`,
`availability`, `used`, `latency_ms`. Drive time 0 is `media_t0_ns`: the CLOCK_MONOTONIC stamp
the demo played the media from, given by `--t0-ns` or by a `{"media_t0_ns": N}` line in the
estimates file (the demo writes one first).

What it reports (JSON keys):
- `accuracy`, `ua`: over windows that lie wholly inside one segment (a window straddling a
  segment change has no single true label; those are counted in `n_straddling`). UA is the
  mean recall over the classes the drive contains.
- `segments`: the same per segment, by the mean of its windows' probabilities.
- `per_pattern`: accuracy, UA and count per availability pattern (the modalities `used`,
  joined by `+` in audio, video, text order; `none` when nothing was used).
- `latency_ms_p50`, `latency_ms_p99`: the estimates' own `latency_ms`.
- `fault_detect_ms`: per scripted fault, from the fault's start to the close (`t_close_ns`,
  else the end) of the first window whose availability for that modality shows the expected
  reason (`dead` for unplugged or
  stalled, `disabled` for privacy); null when it never did. `faults` has the detail, with the
  time to recover after the fault ended.
- `max_gap_ms`: the longest pause between consecutive estimates (the stream must not pause).
Malformed lines are counted (`bad_lines`), never fatal.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

MODALITIES = ("audio", "video", "text")  # engines.backend order (edge/ may import it; kept
# local so this tool runs on a bare checkout of the results)


def load_estimates(path: Path) -> tuple[list[dict[str, Any]], int | None, int]:
    """Estimate dicts in file order, the media t0 line if present, and the bad-line count."""
    estimates: list[dict[str, Any]] = []
    t0: int | None = None
    bad = 0
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if not isinstance(obj, dict):
                bad += 1
            elif "media_t0_ns" in obj:
                t0 = int(obj["media_t0_ns"])
            elif all(k in obj for k in ("t_start_ns", "t_end_ns", "label", "availability")):
                estimates.append(obj)
            else:
                bad += 1
    return estimates, t0, bad


def _acc_ua(truth: list[str], pred: list[str]) -> dict[str, Any]:
    if not truth:
        return {"n": 0, "accuracy": None, "ua": None}
    t, p = np.array(truth), np.array(pred)
    recalls = [float(np.mean(p[t == c] == c)) for c in sorted(set(truth))]
    return {
        "n": len(truth),
        "accuracy": round(float(np.mean(t == p)), 4),
        "ua": round(float(np.mean(recalls)), 4),
    }


def pattern_of(est: dict[str, Any]) -> str:
    used = est.get("used") or []
    return "+".join(m for m in MODALITIES if m in used) or "none"


def _decided_ns(est: dict[str, Any]) -> int:
    """When the availability in an estimate was decided: the window's close (its end plus the
    lag budget) when the daemon reports it, else the window's end."""
    return int(est.get("t_close_ns", est["t_end_ns"]))


def score(timeline: dict[str, Any], estimates: list[dict[str, Any]], t0_ns: int) -> dict:
    segs = timeline["segments"]
    truth: list[str] = []
    pred: list[str] = []
    by_pattern: dict[str, tuple[list[str], list[str]]] = {}
    seg_probs: dict[int, list[dict[str, float]]] = {}
    straddling = outside = 0
    for e in estimates:
        a = (int(e["t_start_ns"]) - t0_ns) / 1e9
        b = (int(e["t_end_ns"]) - t0_ns) / 1e9
        if a < 0 or b > timeline["duration_s"]:
            outside += 1
            continue
        inside = [i for i, s in enumerate(segs) if s["start_s"] <= a and b <= s["end_s"]]
        if not inside:
            straddling += 1
            continue
        i = inside[0]
        emo = segs[i]["emotion"]
        truth.append(emo)
        pred.append(str(e["label"]))
        pt, pp = by_pattern.setdefault(pattern_of(e), ([], []))
        pt.append(emo)
        pp.append(str(e["label"]))
        if isinstance(e.get("probs"), dict):
            seg_probs.setdefault(i, []).append(e["probs"])

    seg_truth, seg_pred = [], []
    for i, plist in sorted(seg_probs.items()):
        labels = sorted(plist[0])
        mean = np.mean([[float(p.get(k, 0.0)) for k in labels] for p in plist], axis=0)
        seg_truth.append(segs[i]["emotion"])
        seg_pred.append(labels[int(np.argmax(mean))])

    latencies = [
        float(e["latency_ms"]) for e in estimates if isinstance(e.get("latency_ms"), int | float)
    ]
    ends = sorted(int(e["t_end_ns"]) for e in estimates)
    gaps = np.diff(ends) / 1e6 if len(ends) > 1 else np.zeros(0)

    faults = []
    for f in timeline.get("faults", []):
        start_ns = t0_ns + round(f["start_s"] * 1e9)
        end_ns = t0_ns + round(f["end_s"] * 1e9)
        detect = next(
            (
                _decided_ns(e)
                for e in estimates
                if _decided_ns(e) >= start_ns
                and e["availability"].get(f["modality"]) == f["expect"]
            ),
            None,
        )
        recover = next(
            (
                _decided_ns(e)
                for e in estimates
                if _decided_ns(e) >= end_ns
                and e["availability"].get(f["modality"]) in ("ok", "empty")
            ),
            None,
        )
        faults.append(
            {
                "name": f"{f['modality']}/{f['kind']}@{f['start_s']:g}s",
                **{k: f[k] for k in ("modality", "kind", "expect", "start_s", "end_s")},
                "detect_ms": None if detect is None else round((detect - start_ns) / 1e6, 1),
                "recover_ms": None if recover is None else round((recover - end_ns) / 1e6, 1),
            }
        )

    overall = _acc_ua(truth, pred)
    return {
        "drive": timeline.get("name"),
        "pairing": timeline.get("pairing"),
        "n_estimates": len(estimates),
        "n_scored": overall["n"],
        "n_straddling": straddling,
        "n_outside": outside,
        "accuracy": overall["accuracy"],
        "ua": overall["ua"],
        "segments": _acc_ua(seg_truth, seg_pred),
        "per_pattern": {k: _acc_ua(*v) for k, v in sorted(by_pattern.items())},
        "latency_ms_p50": round(float(np.percentile(latencies, 50)), 2) if latencies else None,
        "latency_ms_p99": round(float(np.percentile(latencies, 99)), 2) if latencies else None,
        "fault_detect_ms": {f["name"]: f["detect_ms"] for f in faults},
        "faults": faults,
        "max_gap_ms": round(float(gaps.max()), 1) if len(gaps) else None,
        "hop_ms_median": round(float(np.median(gaps)), 1) if len(gaps) else None,
    }


def _table(r: dict[str, Any]) -> str:
    rows = [
        f"drive {r['drive']}: {r['n_scored']} windows scored "
        f"({r['n_straddling']} straddle a segment change)",
        f"  all        acc {r['accuracy']}  UA {r['ua']}   segments acc "
        f"{r['segments']['accuracy']} UA {r['segments']['ua']}",
    ]
    for k, v in r["per_pattern"].items():
        rows.append(f"  {k:<16} n {v['n']:>4}  acc {v['accuracy']}  UA {v['ua']}")
    rows.append(
        f"  latency ms p50 {r['latency_ms_p50']}  p99 {r['latency_ms_p99']}  "
        f"max gap between estimates {r['max_gap_ms']} ms"
    )
    for f in r["faults"]:
        rows.append(
            f"  fault {f['name']:<24} -> {f['expect']:<8} detected in "
            f"{f['detect_ms']} ms, recovered {f['recover_ms']} ms after its end"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="edge-score", description=__doc__.split("\n")[0])
    ap.add_argument("--drive", type=Path, required=True, help="edge-make-drive output folder")
    ap.add_argument("--estimates", type=Path, required=True, help="estimate JSON lines")
    ap.add_argument("--json", type=Path, required=True, help="where to write the scores")
    ap.add_argument("--t0-ns", type=int, default=None, help="media start (CLOCK_MONOTONIC ns)")
    args = ap.parse_args(argv)
    try:
        timeline = json.loads((args.drive / "timeline.json").read_text())
        estimates, t0_line, bad = load_estimates(args.estimates)
    except (OSError, json.JSONDecodeError) as e:
        ap.error(str(e))
    t0 = args.t0_ns if args.t0_ns is not None else t0_line
    if t0 is None:
        ap.error("no media start: pass --t0-ns or put a media_t0_ns line in the estimates")
    result = {**score(timeline, estimates, t0), "bad_lines": bad, "media_t0_ns": t0}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(_table(result), file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
