"""`edge-parity --model DIR [--data-dir D] [--write]`: numeric parity gates between backends.

Every backend must compute what the reference computes, per availability pattern (the empty
pattern included), at batch 1 (the daemon's path; one CUDA graph per pattern) and batched:

  backend            reference          gate (per pattern, on the same featurised windows)
  onnxruntime        torch (eager CPU)  max |logits|, |router| diff <= 1e-4 (export's gate)
  onnxruntime-int8   onnxruntime        max |calibrated probs| diff <= 0.10, top-1 agree >= 0.9
  cuda               torch (eager CPU)  max |logits|, |router| diff <= 1e-3, top-1 agree = 1
  tensorrt (FP16)    onnxruntime        max |calibrated probs| diff <= 0.02, top-1 agree >= 0.98
  tensorrt-int8      onnxruntime-int8   max |calibrated probs| diff <= 0.10, top-1 agree >= 0.9

A backend is checked where it can run: torch needs the checkpoint beside the model, the INT8
rows need model.int8.onnx (calibration/quantize.py), cuda needs a CUDA device, tensorrt needs
TensorRT (a TensorRT request that fell back to another backend is reported as skipped, with
why). The INT8 gates are looser by design: quantization moves probabilities; what must not move
is the decision, and accuracy per pattern is checked separately (quantization.json).

Inputs: raw windows of the model's own domain that it did not train on (calibration.heldout:
for a live model, EmoDB/CK+ validation groups and MELD dev, with --data-dir; for a model trained
on generated windows, generated validation windows), through the daemon's featurisation;
multi-modality patterns pair them by label (SYNTHETIC pairing). Not generated tones for a real
model: INT8 ranges are calibrated on real audio, and far-out-of-range inputs saturate (measured
and reported in the README), which says nothing about the deployed model. With --write, the
tolerances and the measured differences go into manifest.json under parity["backends"].
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from calibration.heldout import pattern_windows, split_windows
from engines.backend import WindowInputs, load_backend, pattern_key
from engines.export import all_patterns
from engines.manifest import Manifest
from engines.onnx_backend import INT8_MODEL_NAME, FeaturisingBackend, softmax_with_temperature
from engines.torch_backend import CHECKPOINT_NAME


@dataclass(frozen=True, kw_only=True)
class Gate:
    reference: str
    max_logits_diff: float | None = None  # raw logits and router weights
    max_probs_diff: float | None = None  # calibrated probabilities
    min_top1_agreement: float = 1.0

    def failures(self, row: dict[str, float]) -> list[str]:
        bad = []
        if self.max_logits_diff is not None:
            for k in ("logits", "router"):
                if row[k] > self.max_logits_diff:
                    bad.append(f"{k} diff {row[k]:.2e} > {self.max_logits_diff:.0e}")
        if self.max_probs_diff is not None and row["probs"] > self.max_probs_diff:
            bad.append(f"probs diff {row['probs']:.3f} > {self.max_probs_diff}")
        if row["top1_agreement"] < self.min_top1_agreement:
            bad.append(f"top-1 agreement {row['top1_agreement']:.3f} < {self.min_top1_agreement}")
        return bad


GATES: dict[str, Gate] = {
    "onnxruntime": Gate(reference="torch", max_logits_diff=1e-4),
    "onnxruntime-int8": Gate(reference="onnxruntime", max_probs_diff=0.10,
                             min_top1_agreement=0.9),
    "cuda": Gate(reference="torch", max_logits_diff=1e-3),
    "tensorrt": Gate(reference="onnxruntime", max_probs_diff=0.02, min_top1_agreement=0.98),
    "tensorrt-int8": Gate(reference="onnxruntime-int8", max_probs_diff=0.10,
                          min_top1_agreement=0.9),
}


def why_unavailable(model_dir: Path, kind: str) -> str | None:
    """None if `kind` can run here, else the reason it is skipped."""
    if kind in ("torch", "cuda") and not (model_dir / CHECKPOINT_NAME).is_file():
        return f"no {CHECKPOINT_NAME} beside the model"
    if kind.endswith("int8") and not (model_dir / INT8_MODEL_NAME).is_file():
        return f"no {INT8_MODEL_NAME} (run edge-quantize)"
    if kind == "cuda" or kind.startswith("tensorrt"):
        try:
            import torch
        except ImportError:
            return "torch is not installed"
        if not torch.cuda.is_available():
            return "no CUDA device"
    if kind.startswith("tensorrt"):
        try:
            import tensorrt  # noqa: F401
        except ImportError as exc:
            return f"TensorRT is not importable ({exc})"
    return None


def parity_windows(model_dir: Path, data_dir: Path | None, per_pattern: int = 12,
                   seed: int = 0) -> dict[tuple[str, ...], list[WindowInputs]]:
    """Held-out windows of the model's domain, `per_pattern` for each availability pattern."""
    manifest = Manifest.load(model_dir)
    split = split_windows(dict(manifest.config.get("training", {})), manifest.modalities,
                          data_dir)
    out: dict[tuple[str, ...], list[WindowInputs]] = {}
    for i, p in enumerate(all_patterns(manifest.modalities)):
        if not p:
            out[p] = [WindowInputs()] * 2
            continue
        found = pattern_windows(split.heldout, p, per_pattern, seed + i).windows
        pick = np.random.default_rng(seed + i).permutation(len(found))[:per_pattern]
        out[p] = [found[j] for j in sorted(pick)]
    return out


def outputs(engine: FeaturisingBackend, windows: list[WindowInputs], pattern: tuple[str, ...]
            ) -> dict[str, np.ndarray]:
    """Logits, router, calibrated probs for the windows masked to `pattern`: batched and one by
    one (batch 1 is what the daemon runs, and what the CUDA backend captures per pattern)."""
    masked = [w.only(pattern) for w in windows]
    batched = engine.run_graph(engine.featurise(masked))
    singles = [engine.run_graph(engine.featurise([w]))
               for w in masked]
    logits = np.concatenate([batched[0]] + [s[0] for s in singles])
    router = np.concatenate([batched[1]] + [s[1] for s in singles])
    temperature = engine.manifest.temperature(pattern_key(pattern))
    return {"logits": logits, "router": router,
            "probs": softmax_with_temperature(logits, temperature)}


def compare(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> dict[str, float]:
    row = {k: float(np.max(np.abs(got[k] - want[k]))) if got[k].size else 0.0
           for k in ("logits", "router", "probs")}
    row["top1_agreement"] = float((got["probs"].argmax(1) == want["probs"].argmax(1)).mean())
    return row


def check_parity(model_dir: Path, data_dir: Path | None = None,
                 backends: tuple[str, ...] = tuple(GATES),
                 gates: dict[str, Gate] | None = None) -> dict[str, Any]:
    gates = {**GATES, **(gates or {})}
    windows = parity_windows(model_dir, data_dir)
    cache: dict[str, dict[str, dict[str, np.ndarray]] | str] = {}

    def run(kind: str) -> dict[str, dict[str, np.ndarray]] | str:
        if kind not in cache:
            reason = why_unavailable(model_dir, kind)
            if reason is None:
                engine = load_backend(model_dir, kind)
                status = str(getattr(engine, "status", ""))
                if status.startswith("fallback"):
                    reason = status
                else:
                    assert isinstance(engine, FeaturisingBackend)
                    cache[kind] = {pattern_key(p) or "none": outputs(engine, ws, p)
                                   for p, ws in windows.items()}
            if reason is not None:
                cache[kind] = reason
        return cache[kind]

    report: dict[str, Any] = {}
    for kind in backends:
        gate = gates[kind]
        entry: dict[str, Any] = {"reference": gate.reference,
                                 "tolerance": {k: v for k, v in dataclasses.asdict(gate).items()
                                               if k != "reference"},
                                 "inputs": f"{max(len(w) for w in windows.values())} "
                                           "held-out windows per pattern, batched and at "
                                           "batch 1"}
        got, want = run(kind), run(gate.reference)
        if isinstance(got, str) or isinstance(want, str):
            entry.update(status="skipped", reason=got if isinstance(got, str) else
                         f"reference {gate.reference}: {want}")
            report[kind] = entry
            continue
        per_pattern = {p: compare(got[p], want[p]) for p in got}
        failures = {p: f for p, row in per_pattern.items() if (f := gate.failures(row))}
        entry.update(status="passed" if not failures else "failed", per_pattern=per_pattern,
                     failures=failures)
        report[kind] = entry
    return report


def write_to_manifest(model_dir: Path, report: dict[str, Any]) -> None:
    manifest = Manifest.load(model_dir)
    parity = {**manifest.parity, "backends": report}
    dataclasses.replace(manifest, parity=parity).save(model_dir)


def print_report(report: dict[str, Any]) -> None:
    print(f"{'backend':<18}{'reference':<18}{'status':<9}{'logits':>10}{'router':>10}"
          f"{'probs':>9}{'agree':>8}")
    for kind, e in report.items():
        if e["status"] == "skipped":
            print(f"{kind:<18}{e['reference']:<18}skipped  ({e['reason']})")
            continue
        rows = e["per_pattern"].values()
        worst = {k: max(r[k] for r in rows) for k in ("logits", "router", "probs")}
        agree = min(r["top1_agreement"] for r in rows)
        print(f"{kind:<18}{e['reference']:<18}{e['status']:<9}{worst['logits']:>10.2e}"
              f"{worst['router']:>10.2e}{worst['probs']:>9.4f}{agree:>8.3f}")
        for p, f in e["failures"].items():
            print(f"    {p}: {'; '.join(f)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="edge-parity", description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="../shared/data (default: the training config's data_dir)")
    ap.add_argument("--backend", action="append", choices=tuple(GATES),
                    help="check only these (default: all)")
    ap.add_argument("--write", action="store_true", help="record results in manifest.json")
    args = ap.parse_args(argv)
    report = check_parity(args.model, args.data_dir, tuple(args.backend or GATES))
    print_report(report)
    if args.write:
        write_to_manifest(args.model, report)
    return 1 if any(e["status"] == "failed" for e in report.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
