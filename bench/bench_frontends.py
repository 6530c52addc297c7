"""Front-end cost per modality of an exported live model (ms per window, batch 1, CPU).

For each modality alone: numpy featurisation (log-mel / face normalisation / tokenisation) and
the onnxruntime graph with only that modality present (its front-end + MoMKE core), next to the
graph with nothing present (the core's fixed cost), so front-end cost = pattern - none.
Writes JSON and prints a table.

  .venv/bin/python bench/bench_frontends.py --model models/live --json runs/bench_frontends.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from engines.backend import WindowInputs
from engines.datasets import synthetic_windows
from engines.onnx_backend import OnnxBackend


def _time_ms(fn: Any, repeats: int) -> dict[str, float]:
    for _ in range(5):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    samples.sort()
    return {"median_ms": statistics.median(samples), "p90_ms": samples[int(0.9 * len(samples))]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("models/live"))
    ap.add_argument("--json", type=Path, default=Path("runs/bench_frontends.json"))
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--faces", type=int, default=20, help="face crops per window")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    # The table is the cost of a whole window's front-ends: no token caches (they would serve
    # the repeated crops and text of these windows from memory). Their steady state is below.
    backend = OnnxBackend(args.model, threads=args.threads, token_cache=False)
    raw = synthetic_windows(1, seed=0).windows[0]
    assert raw.video is not None
    full = WindowInputs(audio=raw.audio, video=np.repeat(raw.video[:1], args.faces, 0),
                        text=("I can't believe you did that again, seriously",))
    results: dict[str, Any] = {"model": str(args.model), "threads": args.threads,
                               "faces_per_window": args.faces, "machine": platform.processor()
                               or platform.machine(), "cpu_count": os.cpu_count(),
                               "load_avg_1min_before": os.getloadavg()[0], "patterns": {}}
    none_feeds = backend.featurise([WindowInputs()])
    core = _time_ms(lambda: backend.run_graph(none_feeds), args.repeats)
    results["patterns"]["none"] = {"graph": core}
    for m in backend.modalities:
        window = full.only((m,))
        feat = _time_ms(lambda w=window: backend.featurise([w]), args.repeats)
        feeds = backend.featurise([window])
        graph = _time_ms(lambda f=feeds: backend.run_graph(f), args.repeats)
        results["patterns"][m] = {
            "featurise": feat, "graph": graph,
            "frontend_ms": feat["median_ms"] + graph["median_ms"] - core["median_ms"]}
    all_feeds = backend.featurise([full])
    results["patterns"]["+".join(backend.modalities)] = {
        "graph": _time_ms(lambda: backend.run_graph(all_feeds), args.repeats),
        "predict": _time_ms(lambda: backend.predict(full), args.repeats)}
    results["video_crop_cache"] = _crop_cache_steady_state(args, backend)
    results["text_token_cache"] = _text_cache_steady_state(args, backend)
    results["load_avg_1min_after"] = os.getloadavg()[0]  # shared machine: context for the ms
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"{'pattern':<18}{'featurise ms':>14}{'graph ms':>10}{'front-end ms':>14}")
    for key, r in results["patterns"].items():
        feat_ms = r.get("featurise", {}).get("median_ms", float("nan"))
        fe_ms = r.get("frontend_ms", float("nan"))
        print(f"{key:<18}{feat_ms:>14.2f}{r['graph']['median_ms']:>10.2f}{fe_ms:>14.2f}")
    cache = results["video_crop_cache"]
    if cache:
        print(f"video alone, sliding windows ({cache['new_crops_per_window']} new crops each): "
              f"graph {cache['cached_graph_ms']:.2f} ms with the crop cache vs "
              f"{cache['whole_graph_ms']:.2f} ms without")
    cache = results["text_token_cache"]
    if cache:
        print(f"text alone, sliding windows (each line in {cache['windows_per_line']}): graph "
              f"{cache['cached_graph_ms']:.2f} ms with the text cache vs "
              f"{cache['whole_graph_ms']:.2f} ms without")
    print(f"wrote {args.json}")
    return 0


def _crop_cache_steady_state(args: argparse.Namespace, whole: OnnxBackend) -> dict[str, Any]:
    """Video-only windows sliding over distinct crops as the daemon cuts them (2 s windows,
    0.5 s hop: a quarter of each window's crops is new): graph ms per window with the crop
    cache (unseen crops encoded, the rest reused) and without."""
    cached = OnnxBackend(args.model, threads=args.threads)
    if cached.crops is None:
        return {}
    new_per_window = args.faces // 4
    n_windows = 60
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 255, (args.faces + new_per_window * n_windows, 48, 48), np.uint8)
    feeds = [cached.featurise([WindowInputs(video=crops[k * new_per_window:][:args.faces])])
             for k in range(n_windows)]
    cached.run_graph(feeds[0])  # fills the cache with the first window's crops

    def per_window_ms(backend: OnnxBackend) -> float:
        t0 = time.perf_counter()
        for f in feeds[1:]:
            backend.run_graph(f)
        return (time.perf_counter() - t0) * 1e3 / (n_windows - 1)

    return {"new_crops_per_window": new_per_window, "windows": n_windows - 1,
            "cached_graph_ms": per_window_ms(cached), "whole_graph_ms": per_window_ms(whole)}


def _text_cache_steady_state(args: argparse.Namespace, whole: OnnxBackend) -> dict[str, Any]:
    """Text-only windows as the daemon cuts them (2 s windows, 0.5 s hop): each transcript line
    is in four consecutive windows. Graph ms per window with the text token cache (a model
    whose text front-end is cut out: MiniLM) and without."""
    cached = OnnxBackend(args.model, threads=args.threads)
    if cached.split is None or "text" not in cached.split.caches:
        return {}
    per_line, n_lines = 4, 30
    lines = [f"line {k}: I can't believe you did that again, seriously" for k in range(n_lines)]
    feeds = [cached.featurise([WindowInputs(text=(lines[k // per_line],))])
             for k in range(n_lines * per_line)]

    def per_window_ms(backend: OnnxBackend) -> float:
        t0 = time.perf_counter()
        for f in feeds:
            backend.run_graph(f)
        return (time.perf_counter() - t0) * 1e3 / len(feeds)

    return {"windows_per_line": per_line, "windows": len(feeds),
            "cached_graph_ms": per_window_ms(cached), "whole_graph_ms": per_window_ms(whole)}


if __name__ == "__main__":
    raise SystemExit(main())
