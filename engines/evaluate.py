"""`edge-eval --model DIR [--ravdess NPZ] ... --json OUT`: a trained model on files in the formats
of ../shared/data, for every availability pattern it supports.

Per dataset and pattern: accuracy, ua, macro_f1, weighted_f1, ece (after the model's
per-pattern temperature) and ece_uncalibrated, n. Prints a table; saves a confusion matrix and a
reliability diagram (PNG) per dataset next to OUT.

Datasets are a registry (`EVALUATORS`): flag -> "module:function", the function being
`(model_dir: Path, data_path: Path, backend: str) -> EvalSet`. RAVDESS features are handled
here; the live model's raw-input sets (--emodb, --meld, --ckplus) are registered by
engines/datasets.py's functions. Evaluating other speakers' files in the same format is just
another path: no code change.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.backend import available_backends
from engines.metrics import (
    classification_metrics,
    confusion,
    ece_if_calibrated,
    reliability_bins,
    softmax,
)

# flag -> "module:function"; an entry whose module lacks the function reports a clear error.
EVALUATORS: dict[str, str] = {
    "ravdess": "engines.evaluate:ravdess_eval_set",
    "emodb": "engines.datasets:emodb_eval_set",
    "meld": "engines.datasets:meld_eval_set",
    "ckplus": "engines.datasets:ckplus_eval_set",
}


@dataclass(frozen=True)
class EvalSet:
    labels: tuple[str, ...]
    # pattern key -> (uncalibrated logits (n, C), true labels (n,)); absent classes at -1e4
    logits: dict[str, tuple[np.ndarray, np.ndarray]]
    temperatures: dict[str, float]


def read_temperatures(model_dir: Path) -> dict[str, float]:
    path = model_dir / "temperatures.json"
    if path.exists():
        return {k: float(v) for k, v in json.loads(path.read_text()).items()}
    manifest = model_dir / "manifest.json"
    if manifest.exists():
        return {
            k: float(v) for k, v in json.loads(manifest.read_text()).get("temperatures", {}).items()
        }
    return {}


def ravdess_eval_set(model_dir: Path, npz: Path, backend: str) -> EvalSet:
    """A bank feature model (checkpoint.pt + meta.json from edge-train) on a RAVDESS-format npz."""
    from engines.ravdess import RavdessConfig, load_arrays

    meta = json.loads((model_dir / "meta.json").read_text())
    data_cfg = {k: v for k, v in meta.get("data_config", {}).items() if k not in ("dataset", "npz")}
    arr = load_arrays(npz, RavdessConfig(**data_cfg))
    norm = meta["normalisation"]
    feats = {
        "audio": (
            (arr.audio - np.asarray(norm["audio"]["mean"])) / np.asarray(norm["audio"]["std"])
        ),
        "video": (
            (arr.video - np.asarray(norm["video"]["mean"])) / np.asarray(norm["video"]["std"])
        ),
    }
    if backend == "onnxruntime":
        from engines.feature_export import OnnxFeatureModel

        runner = OnnxFeatureModel(model_dir)
        logits = runner.pattern_logits(feats)
    elif backend == "torch":
        logits = _torch_pattern_logits(model_dir, meta, feats)
    else:
        raise ValueError(f"backend must be onnxruntime or torch, not {backend!r}")
    return EvalSet(
        labels=tuple(meta["labels"]),
        logits={p: (lg, arr.labels) for p, lg in logits.items()},
        temperatures=read_temperatures(model_dir),
    )


def _torch_pattern_logits(
    model_dir: Path, meta: dict[str, Any], feats: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    import torch

    from engines.backend import pattern_key
    from engines.baselines import load_model
    from engines.train import Batch, all_patterns

    model, _ = load_model(model_dir / "checkpoint.pt")
    mods = tuple(meta["modalities"])
    n = len(next(iter(feats.values())))
    tensors = {m: torch.tensor(v, dtype=torch.float32) for m, v in feats.items()}
    out = {}
    with torch.no_grad():
        for p in all_patterns(len(mods)):
            present = torch.zeros(n, len(mods), dtype=torch.bool)
            present[:, list(p)] = True
            batch = Batch(
                feats=tensors,
                token_mask={
                    m: torch.ones(v.shape[:2], dtype=torch.bool) for m, v in tensors.items()
                },
                present=present,
                labels=torch.zeros(n, dtype=torch.long),
                label_mask=torch.ones(n, int(meta["n_classes"]), dtype=torch.bool),
            )
            out[pattern_key([mods[i] for i in p])] = model(
                batch, int(meta["eval_stage"])
            ).logits.numpy()
    return out


def evaluate_set(es: EvalSet) -> dict[str, dict[str, float]]:
    result = {}
    for p, (logits, y) in es.logits.items():
        probs = softmax(logits, es.temperatures.get(p, 1.0))
        m = classification_metrics(probs, y)
        m["ece_uncalibrated"] = classification_metrics(softmax(logits), y)["ece"]
        # the ECE a perfectly calibrated model would show at this n: the yardstick for `ece`
        m["ece_if_calibrated_p95"] = ece_if_calibrated(probs, n_draws=200)["p95"]
        m["temperature"] = es.temperatures.get(p, 1.0)
        result[p] = m
    return result


def save_plots(es: EvalSet, stem: Path) -> list[Path]:
    """Confusion matrix (per pattern) and reliability diagram (per pattern, calibrated)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    patterns = list(es.logits)
    n_cls = len(es.labels)
    fig_c, axes_c = plt.subplots(
        1, len(patterns), figsize=(4.2 * len(patterns), 4.2), squeeze=False
    )
    fig_r, axes_r = plt.subplots(
        1, len(patterns), figsize=(3.6 * len(patterns), 3.6), squeeze=False
    )
    for j, p in enumerate(patterns):
        logits, y = es.logits[p]
        probs = softmax(logits, es.temperatures.get(p, 1.0))
        cm = confusion(y, probs.argmax(1), n_cls)
        ax = axes_c[0, j]
        ax.imshow(cm, cmap="Blues")
        ax.set_title(p or "(none)")
        ax.set_xticks(range(n_cls), es.labels, rotation=90, fontsize=7)
        ax.set_yticks(range(n_cls), es.labels, fontsize=7)
        for (r, c), v in np.ndenumerate(cm):
            ax.text(c, r, str(v), ha="center", va="center", fontsize=6)
        conf, acc, count = reliability_bins(probs, y)
        ax = axes_r[0, j]
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ok = count > 0
        ax.plot(conf[ok], acc[ok], "o-")
        ax.set_title(f"{p} ECE {classification_metrics(probs, y)['ece']:.3f}")
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
    paths = [
        stem.with_name(stem.name + "_confusion.png"),
        stem.with_name(stem.name + "_reliability.png"),
    ]
    fig_c.tight_layout()
    fig_c.savefig(paths[0], dpi=110)
    fig_r.tight_layout()
    fig_r.savefig(paths[1], dpi=110)
    plt.close(fig_c)
    plt.close(fig_r)
    return paths


def print_table(name: str, result: dict[str, dict[str, float]]) -> None:
    print(f"{name}")
    cols = (
        "accuracy",
        "ua",
        "macro_f1",
        "weighted_f1",
        "ece",
        "ece_if_calibrated_p95",
        "ece_uncalibrated",
        "n",
    )
    width = {c: max(10, len(c) + 2) for c in cols}
    print(f"  {'pattern':<18}" + "".join(f"{c:>{width[c]}}" for c in cols))
    for p, m in result.items():
        cells = "".join(
            f"{m[c]:>{width[c]}d}" if c == "n" else f"{m[c]:>{width[c]}.3f}" for c in cols
        )
        print(f"  {p or '(none)':<18}{cells}")


def run(model_dir: Path, datasets: dict[str, Path], backend: str, out: Path) -> dict[str, Any]:
    report: dict[str, Any] = {"model": str(model_dir), "backend": backend, "datasets": {}}
    out.parent.mkdir(parents=True, exist_ok=True)
    for name, path in datasets.items():
        module, attr = EVALUATORS[name].split(":")
        fn = getattr(importlib.import_module(module), attr, None)
        if fn is None:
            raise NotImplementedError(f"--{name}: {EVALUATORS[name]} is not provided by this build")
        es: EvalSet = fn(model_dir, path, backend)
        result = evaluate_set(es)
        plots = save_plots(es, out.with_suffix("").with_name(out.stem + f"_{name}"))
        report["datasets"][name] = {
            "path": str(path),
            "labels": list(es.labels),
            "patterns": result,
            "plots": [str(p) for p in plots],
        }
        print_table(f"{name} ({path})", result)
    out.write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="edge-eval", description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="model directory")
    for name in EVALUATORS:
        ap.add_argument(
            f"--{name}", type=Path, default=None, help=f"{name} data in the shared format"
        )
    ap.add_argument(
        "--backend",
        choices=available_backends(),
        default="onnxruntime",
        help="onnxruntime (default, as the daemon) or torch (the reference); GPU ones where built",
    )
    ap.add_argument("--json", type=Path, required=True, help="where to write the results")
    args = ap.parse_args(argv)
    datasets = {n: getattr(args, n) for n in EVALUATORS if getattr(args, n) is not None}
    if not datasets:
        ap.error("give at least one dataset (--ravdess NPZ, ...)")
    missing = [str(p) for p in datasets.values() if not p.exists()]
    if missing or not args.model.is_dir():
        print(f"edge-eval: not found: {', '.join(missing or [str(args.model)])}", file=sys.stderr)
        return 2
    run(args.model, datasets, args.backend, args.json)
    return 0
