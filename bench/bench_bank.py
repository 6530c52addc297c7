"""Bench: our exported bank on onnxruntime CPU vs the reference MoMKE in eager PyTorch.

Side by side in one run, batch 1, one token per modality (an utterance / a window), one
intra-op thread for both, per availability pattern:
- reference: the released architecture re-implemented from shared/MOMKE.md section 2 (dims
  512/1024/1024, width 256, depth 4, 2 heads, 9 expert passes whatever is missing, absent
  inputs zeroed); its parameter count is checked against the 5,400,089 the spec reports;
- ours: engines.momke.MoMKE at the same input dims and our bench width/depth, exported per
  pattern (engines.feature_export), so absent modalities are not computed;
- shipped: models/ravdess graphs when present (real dims 7x8 tokens audio, 35 video).

    .venv/bin/python bench/bench_bank.py --json bench/results/bench_bank.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engines.backend import pattern_key  # noqa: E402
from engines.feature_export import OnnxFeatureModel, export_pattern, patterns_of  # noqa: E402
from engines.momke import MoMKE, MoMKEConfig  # noqa: E402

REF_DIMS = {"audio": 512, "video": 1024, "text": 1024}
REF_PARAMS_C4 = 5_400_089  # shared/MOMKE.md section 6


class _RefAttention(nn.Module):
    """Reference unit: q/k/v (no out proj, no norm), key-padding mask, residual MLP."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.mlp = nn.Sequential(
            nn.Linear(d, d), nn.GELU(), nn.Dropout(0.5), nn.Linear(d, d), nn.Dropout(0.5)
        )

    def forward(self, x: Tensor, key_mask: Tensor) -> Tensor:
        b, t, d = x.shape
        h = self.heads

        def split(z: Tensor) -> Tensor:
            return z.reshape(b, t, h, d // h).transpose(1, 2)  # (B, H, T, Dh)

        scores = split(self.q(x)) @ split(self.k(x)).transpose(-2, -1) / (d // h) ** 0.5
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        attn = torch.nan_to_num(scores.softmax(-1))  # fully masked rows -> 0, as released
        a = (attn @ split(self.v(x))).transpose(1, 2).reshape(b, t, d)  # (B, T, D)
        return a + self.mlp(a)


class ReferenceMoMKE(nn.Module):
    def __init__(
        self, dims: dict[str, int], n_classes: int = 4, d: int = 256, depth: int = 4
    ) -> None:
        super().__init__()
        self.mods = tuple(dims)
        self.proj = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(dims[m], d), nn.Dropout(0.5)) for m in self.mods}
        )
        self.experts = nn.ModuleDict(
            {m: nn.ModuleList(_RefAttention(d, 2) for _ in range(depth)) for m in self.mods}
        )
        self.routers = nn.ModuleDict(
            {
                m: nn.Sequential(
                    nn.Linear(d, d),
                    nn.GELU(),
                    nn.Dropout(0.5),
                    nn.Linear(d, len(self.mods)),
                    nn.Dropout(0.5),
                )
                for m in self.mods
            }
        )
        self.uni_heads = nn.ModuleDict({m: nn.Linear(d, n_classes) for m in self.mods})
        k = len(self.mods) * d
        self.fuse = nn.Linear(k, k)
        self.head = nn.Linear(k, n_classes)

    def _expert(self, name: str, x: Tensor, key_mask: Tensor) -> Tensor:
        layers = self.experts[name]
        assert isinstance(layers, nn.ModuleList)
        for layer in layers:
            x = x + layer(x, key_mask)
        return x

    def forward(self, feats: dict[str, Tensor], mask: Tensor) -> Tensor:
        # feats: m -> (B, T, d_m), zeroed where missing; mask: (B, M) presence (one token each)
        slots = []
        for i, m in enumerate(self.mods):
            h = self.proj[m](feats[m] * mask[:, i, None, None])  # (B, T, D)
            key_mask = mask[:, i : i + 1].expand(-1, h.shape[1])
            outs = torch.stack([self._expert(e, h, key_mask) for e in self.mods], -1)  # (B,T,D,E)
            w = self.routers[m](h).softmax(-1)  # (B, T, E)
            slots.append((outs * w[:, :, None, :]).sum(-1) * mask[:, i, None, None])
        concat = torch.cat(slots, -1)  # (B, T, M*D)
        hidden = concat + F.dropout(F.relu(self.fuse(concat)), 0.5, self.training)
        return self.head(hidden)


def _time(fn: Callable[[], object], reps: int) -> dict[str, float]:
    for _ in range(max(10, reps // 10)):
        fn()
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    samples.sort()
    return {"median_ms": statistics.median(samples), "p90_ms": samples[int(0.9 * len(samples))]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "bench_bank.json")
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--width", type=int, default=64)  # the shipped RAVDESS recipe
    ap.add_argument("--depth", type=int, default=1)
    ap.add_argument("--shipped", type=Path, default=REPO / "models" / "ravdess")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    import onnxruntime as ort

    ref = ReferenceMoMKE(REF_DIMS).eval()
    n_ref = sum(p.numel() for p in ref.parameters())
    mods = tuple(REF_DIMS)
    ours = MoMKE(
        MoMKEConfig(
            modalities=mods, input_dims=REF_DIMS, n_classes=7, width=args.width, depth=args.depth
        )
    ).eval()
    n_ours = sum(p.numel() for p in ours.parameters())
    rng = np.random.default_rng(0)
    x = {m: rng.standard_normal((1, 1, REF_DIMS[m])).astype(np.float32) for m in mods}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for pattern in patterns_of(ours):
            key = pattern_key(pattern)
            path = Path(tmp) / f"{key}.onnx"
            export_pattern(ours, pattern, {m: 1 for m in mods}, path)
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            feeds = {}
            for m in pattern:
                feeds[f"{m}_tokens"] = x[m]
                feeds[f"{m}_mask"] = np.ones((1, 1), bool)
            t_ours = _time(lambda s=sess, f=feeds: s.run(None, f), args.reps)
            mask = torch.tensor([[m in pattern for m in mods]])
            tx = {m: torch.from_numpy(x[m]) for m in mods}

            def ref_call(tx: dict[str, Tensor] = tx, mask: Tensor = mask) -> None:
                with torch.no_grad():
                    ref(tx, mask)

            t_ref = _time(ref_call, args.reps)
            rows.append(
                {
                    "pattern": key,
                    "ours_onnxruntime": t_ours,
                    "reference_torch_eager": t_ref,
                    "speedup_median": t_ref["median_ms"] / t_ours["median_ms"],
                }
            )
    shipped = []
    if (args.shipped / "feature_manifest.json").exists():
        model = OnnxFeatureModel(args.shipped)
        man = model.manifest
        for key, g in man["graphs"].items():
            feats = {
                inp["name"][: -len("_tokens")]: rng.standard_normal([1, *inp["shape"][1:]]).astype(
                    np.float32
                )
                for inp in g["inputs"]
                if inp["name"].endswith("_tokens")
            }
            shipped.append(
                {"pattern": key, **_time(lambda k=key, f=feats: model.run(k, f), args.reps)}
            )
    result = {
        "host": {
            "machine": platform.machine(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": ort.__version__,
            "threads": 1,
        },
        "batch": 1,
        "tokens_per_modality": 1,
        "reference": {
            "dims": REF_DIMS,
            "width": 256,
            "depth": 4,
            "params": n_ref,
            "params_expected_c4": REF_PARAMS_C4,
        },
        "ours": {"dims": REF_DIMS, "width": args.width, "depth": args.depth, "params": n_ours},
        "patterns": rows,
        "shipped_ravdess_onnxruntime": shipped,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(
        f"reference params {n_ref:,} (spec: {REF_PARAMS_C4:,}); ours {n_ours:,} "
        f"(width {args.width}, depth {args.depth})"
    )
    print(f"{'pattern':<18}{'ours ORT ms':>12}{'ref eager ms':>14}{'speedup':>9}")
    for r in rows:
        print(
            f"{r['pattern']:<18}{r['ours_onnxruntime']['median_ms']:>12.3f}"
            f"{r['reference_torch_eager']['median_ms']:>14.3f}{r['speedup_median']:>8.1f}x"
        )
    for r in shipped:
        print(f"shipped ravdess {r['pattern']:<12}{r['median_ms']:>8.3f} ms")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
