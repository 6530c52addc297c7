"""Bench: every backend that can run here, per availability pattern, side by side in one run.

Per backend and pattern: latency of one window (batch 1, the daemon's path: median / p90 ms,
synchronize / device-to-host copy included) and throughput at batch 64 (windows/s). Graph only:
the featurisation (log-mel, face normalisation, tokenisation) is the same numpy code for every
backend and is reported once, per modality, separately.

On a CPU host: torch, onnxruntime, onnxruntime-int8. With a CUDA GPU: + cuda (CUDA graphs).
With TensorRT: + tensorrt, tensorrt-int8. A backend that cannot run, or a TensorRT request that
fell back to another backend, is listed with the reason and not timed.

    .venv/bin/python bench/bench_backends.py --model tests/assets/tiny_model \
        --json bench/results/bench_backends.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from calibration.parity import why_unavailable  # noqa: E402
from engines.backend import WindowInputs, load_backend, pattern_key  # noqa: E402
from engines.onnx_backend import FeaturisingBackend  # noqa: E402

BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8", "cuda", "tensorrt", "tensorrt-int8")


def windows(n: int, seed: int = 0) -> list[WindowInputs]:
    """Realistic-looking raw windows: 2 s of audio, 10 face crops, one utterance."""
    rng = np.random.default_rng(seed)
    return [WindowInputs(audio=(rng.standard_normal(32000) * 2500).astype(np.int16),
                         video=rng.integers(0, 255, (10, 48, 48), dtype=np.uint8),
                         text=("i told you this would happen and you did not listen",))
            for _ in range(n)]


def patterns(modalities: tuple[str, ...]) -> list[tuple[str, ...]]:
    return [p for r in range(1, len(modalities) + 1)
            for p in itertools.combinations(modalities, r)]


def masked(ws: list[WindowInputs], pattern: tuple[str, ...]) -> list[WindowInputs]:
    return [w.only(pattern) for w in ws]


def time_calls(fn: Any, reps: int, warm: int = 5) -> list[float]:
    for _ in range(warm):
        fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def featurisation_ms(engine: FeaturisingBackend, reps: int) -> dict[str, float]:
    w = windows(1)
    return {m: float(np.median(time_calls(
        lambda m=m: engine.featurise(masked(w, (m,))),
        reps))) for m in engine.modalities}


def bench_backend(engine: FeaturisingBackend, reps: int, batch: int, batch_reps: int
                  ) -> dict[str, Any]:
    out: dict[str, Any] = {}
    one, many = windows(1, seed=1), windows(batch, seed=2)
    for p in patterns(engine.modalities):
        f1 = engine.featurise(masked(one, p))
        fb = engine.featurise(masked(many, p))
        lat = time_calls(lambda f1=f1: engine.run_graph(f1), reps)
        thr = time_calls(lambda fb=fb: engine.run_graph(fb), batch_reps, warm=2)
        out[pattern_key(p)] = {
            "batch1_ms_median": float(np.median(lat)),
            "batch1_ms_p90": float(np.percentile(lat, 90)),
            f"batch{batch}_windows_per_s": float(batch / (np.median(thr) / 1e3)),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=REPO / "tests" / "assets" / "tiny_model")
    ap.add_argument("--backend", action="append", choices=BACKENDS, help="default: all")
    ap.add_argument("--reps", type=int, default=200, help="batch-1 calls per pattern")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batch-reps", type=int, default=20)
    ap.add_argument("--json", type=Path, default=REPO / "bench" / "results" /
                    "bench_backends.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("EDGE_ORT_THREADS", "1")
    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    status: dict[str, str] = {}
    feat: dict[str, float] = {}
    for kind in args.backend or BACKENDS:
        reason = why_unavailable(args.model, kind)
        if reason is None:
            engine = load_backend(args.model, kind)
            status[kind] = str(getattr(engine, "status", ""))
            if status[kind].startswith("fallback"):
                reason = status[kind]
        if reason is not None:
            skipped[kind] = reason
            continue
        assert isinstance(engine, FeaturisingBackend)
        print(f"{kind} ...", flush=True)
        engine.warmup()
        feat = feat or featurisation_ms(engine, 20)
        results[kind] = bench_backend(engine, args.reps, args.batch, args.batch_reps)
    report = {
        "model": str(args.model), "batch": args.batch, "reps": args.reps,
        "threads": {"EDGE_ORT_THREADS": os.environ["EDGE_ORT_THREADS"], "torch": 1},
        "host": {"machine": platform.machine(), "processor": platform.processor(),
                 "cpus": os.cpu_count(), "python": platform.python_version()},
        "gpu": _gpu_name(), "featurisation_ms_per_window": feat, "status": status,
        "skipped": skipped, "results": results,
        "command": "python bench/bench_backends.py " + " ".join(argv or sys.argv[1:]),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report, args.batch)
    print(f"wrote {args.json}")
    return 0


def _gpu_name() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def print_table(report: dict[str, Any], batch: int) -> None:
    kinds = list(report["results"])
    print(f"\nbatch 1: median ms per window (graph only); batch {batch}: windows/s")
    print(f"{'pattern':<18}" + "".join(f"{k:>18}" for k in kinds))
    for p in next(iter(report["results"].values()), {}):
        cells = "".join(f"{report['results'][k][p]['batch1_ms_median']:>8.3f} ms"
                        f"{report['results'][k][p][f'batch{batch}_windows_per_s']:>7.0f}/s"
                        for k in kinds)
        print(f"{p:<18}{cells}")
    feats = report["featurisation_ms_per_window"]
    print("featurisation (numpy, every backend): " +
          ", ".join(f"{m} {v:.2f} ms" for m, v in feats.items()))
    for kind, why in report["skipped"].items():
        print(f"not run: {kind}: {why}")


if __name__ == "__main__":
    sys.exit(main())
