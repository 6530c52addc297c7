"""Temperature scaling per availability pattern, fitted on validation predictions only.

A lone weak modality (RAVDESS audio) and the full set are differently over-confident, so each
pattern gets its own temperature T (probs = softmax(logits / T)), chosen to minimise the
validation NLL. ECE (15 bins) is reported per pattern before and after.

`edge-calibrate RUN_DIR` works on an edge-train output: for every split it fits T per pattern on
that split's validation predictions, applies it to the split's test predictions, and writes
RUN_DIR/calibrated_metrics.json (per split and mean ± std over splits, before and after), and
RUN_DIR/temperatures.json: T per pattern fitted on all splits' validation predictions pooled,
for a model trained on everything with the same recipe (which has no validation data of its own).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from engines.metrics import classification_metrics, ece_if_calibrated, softmax

T_MIN, T_MAX = 0.05, 20.0


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    p = softmax(logits, temperature)
    return float(-np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, None)).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """argmin_T NLL(softmax(logits / T)) on a log grid, then a golden-section refinement.

    NLL in log T is unimodal for a fixed argmax, so the grid + local refinement is exact enough
    and needs no autograd.
    """
    if len(labels) == 0:
        return 1.0
    grid = np.exp(np.linspace(np.log(T_MIN), np.log(T_MAX), 121))
    losses = [nll(logits, labels, t) for t in grid]
    i = int(np.argmin(losses))
    lo, hi = np.log(grid[max(i - 1, 0)]), np.log(grid[min(i + 1, len(grid) - 1)])
    golden = (np.sqrt(5) - 1) / 2
    for _ in range(40):
        a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
        if nll(logits, labels, float(np.exp(a))) < nll(logits, labels, float(np.exp(b))):
            hi = b
        else:
            lo = a
    return float(np.exp((lo + hi) / 2))


def fit_per_pattern(preds: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """pattern -> (val logits, labels) => pattern -> T; the empty pattern (prior) keeps 1."""
    return {p: (fit_temperature(lg, y) if p else 1.0) for p, (lg, y) in preds.items()}


def load_predictions(path: Path) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """predictions.npz -> part ("val"/"test") -> pattern -> (logits, labels)."""
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    with np.load(path, allow_pickle=False) as z:
        for key in z.files:
            part, pattern, what = key.split("/")
            if what == "logits":
                out.setdefault(part, {})[pattern] = (z[key], z[f"{part}/{pattern}/labels"])
    return out


def calibrate_run(run_dir: Path) -> dict[str, object]:
    split_dirs = sorted(p.parent for p in run_dir.glob("*/predictions.npz"))
    if not split_dirs:
        raise FileNotFoundError(f"no */predictions.npz under {run_dir}")
    per_split: dict[str, object] = {}
    pooled: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    before: dict[str, list[dict[str, float]]] = {}
    after: dict[str, list[dict[str, float]]] = {}
    # Out-of-fold test probabilities of every split, concatenated: ECE over ~1000 samples has a
    # far smaller finite-sample bias than ECE over one 180-clip fold.
    oof: dict[str, dict[str, list[np.ndarray]]] = {}
    for d in split_dirs:
        preds = load_predictions(d / "predictions.npz")
        if "val" not in preds:
            continue
        temps = fit_per_pattern(preds["val"])
        for p, v in preds["val"].items():
            pooled.setdefault(p, []).append(v)
        rows: dict[str, object] = {"temperatures": temps}
        for p, (lg, y) in preds.get("test", {}).items():
            raw, calibrated = softmax(lg), softmax(lg, temps[p])
            b = classification_metrics(raw, y)
            a = classification_metrics(calibrated, y)
            # what a perfectly calibrated model would score on this fold's n (the yardstick)
            a["ece_if_calibrated_p95"] = ece_if_calibrated(calibrated, 200)["p95"]
            before.setdefault(p, []).append(b)
            after.setdefault(p, []).append(a)
            o = oof.setdefault(p, {"before": [], "after": [], "labels": []})
            o["before"].append(raw)
            o["after"].append(calibrated)
            o["labels"].append(y)
            rows[p] = {"before": b, "after": a}
        per_split[d.name] = rows
    pooled_temps = fit_per_pattern(
        {
            p: (np.concatenate([x[0] for x in v]), np.concatenate([x[1] for x in v]))
            for p, v in pooled.items()
        }
    )
    return {
        "splits": per_split,
        "test_before_mean_std": _mean_std(before),
        "test_after_mean_std": _mean_std(after),
        "pooled_val_temperatures": pooled_temps,
        "test_pooled_out_of_fold": {
            p: {
                **{
                    when: classification_metrics(
                        np.concatenate(o[when]), np.concatenate(o["labels"])
                    )
                    for when in ("before", "after")
                },
                "ece_if_calibrated_p95": ece_if_calibrated(np.concatenate(o["after"]), 200)["p95"],
            }
            for p, o in oof.items()
        },
    }


def _mean_std(rows: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, list[float]]]:
    return {
        p: {k: [float(np.mean([r[k] for r in v])), float(np.std([r[k] for r in v]))] for k in v[0]}
        for p, v in rows.items()
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="edge-calibrate", description=__doc__.split("\n")[0])
    ap.add_argument("run_dir", type=Path, help="an edge-train output directory")
    args = ap.parse_args(argv)
    try:
        result = calibrate_run(args.run_dir)
    except FileNotFoundError as exc:
        print(f"edge-calibrate: {exc}", file=sys.stderr)
        return 2
    (args.run_dir / "calibrated_metrics.json").write_text(json.dumps(result, indent=2))
    (args.run_dir / "temperatures.json").write_text(
        json.dumps(result["pooled_val_temperatures"], indent=2)
    )
    b, a = result["test_before_mean_std"], result["test_after_mean_std"]
    assert isinstance(b, dict) and isinstance(a, dict)
    pooled = result["test_pooled_out_of_fold"]
    assert isinstance(pooled, dict)
    print(
        f"{'pattern':<14}{'accuracy':>16}{'ece before':>16}{'ece after':>16}"
        f"{'calibrated p95':>16}{'pooled ece b/a':>18}"
    )
    for p in sorted(a):
        acc, eb, ea = a[p]["accuracy"], b[p]["ece"], a[p]["ece"]
        null = a[p]["ece_if_calibrated_p95"]
        pb, pa = pooled[p]["before"]["ece"], pooled[p]["after"]["ece"]
        print(
            f"{p:<14}{acc[0]:>9.3f} ± {acc[1]:.3f}{eb[0]:>9.3f} ± {eb[1]:.3f}"
            f"{ea[0]:>9.3f} ± {ea[1]:.3f}{null[0]:>16.3f}{pb:>10.3f} / {pa:.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
