"""ONNX export of a fixed-feature MoMKE (e.g. models/ravdess), one graph per availability pattern.

The live product's export (raw audio/video/text front-ends, the daemon's manifest) is
engines/export.py. Models over pre-extracted features (RAVDESS) have no front-end, so they get
this small exporter: for each non-empty pattern, a graph whose inputs are only that pattern's
modalities (`{m}_tokens` (B, T, d) float32, `{m}_mask` (B, T) bool), so absent modalities cost
nothing; outputs `logits` (B, C) and `router` (B, M, M). The empty pattern needs no graph: its
logits are the prior, stored in the manifest.

Build steps: export, `onnx.checker`, torch vs onnxruntime parity on the given real features and
on random ones for every pattern (max abs diff <= 1e-4, else ExportError and nothing is kept),
then `feature_manifest.json` (opset, inputs/outputs, labels, temperatures, checkpoint sha256,
config, training data and licence, parity).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from engines.backend import pattern_key
from engines.momke import MoMKE

if TYPE_CHECKING:
    from engines.baselines import MoMKEEnsemble

OPSET = 17
PARITY_TOLERANCE = 1e-4
MANIFEST = "feature_manifest.json"


def as_feature_model(model: nn.Module) -> MoMKE | MoMKEEnsemble:
    """The exportable core of a trained MoMKE (or an ensemble of them), else TypeError."""
    from engines.baselines import Ensemble, MoMKEEnsemble
    from engines.train import MoMKETrainable

    if isinstance(model, MoMKETrainable) and type(model) is MoMKETrainable:
        return model.model
    if isinstance(model, Ensemble) and all(type(m) is MoMKETrainable for m in model.members):
        cores = [m.model for m in model.members if isinstance(m, MoMKETrainable)]
        return MoMKEEnsemble(cores)
    raise TypeError(f"{type(model).__name__} is not a MoMKE feature model")


class ExportError(RuntimeError):
    """The exported graph failed a check."""


class PatternGraph(nn.Module):
    """MoMKE restricted to one pattern: positional (tokens, mask) pairs in modality order."""

    present_row: Tensor  # (1, M) bool buffer

    def __init__(self, model: MoMKE | MoMKEEnsemble, pattern: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.pattern = model, pattern
        mods = model.cfg.modalities
        self.register_buffer("present_row", torch.tensor([[m in pattern for m in mods]]))

    def forward(self, *tensors: Tensor) -> tuple[Tensor, Tensor]:
        feats = {m: tensors[2 * i] for i, m in enumerate(self.pattern)}
        masks = {m: tensors[2 * i + 1] for i, m in enumerate(self.pattern)}
        b = tensors[0].shape[0]
        present: Tensor = self.present_row.expand(b, -1)  # (B, M)
        out = self.model(feats, masks, present, stage=2)
        assert out.router is not None
        return out.logits, out.router


def patterns_of(model: MoMKE | MoMKEEnsemble) -> list[tuple[str, ...]]:
    mods = model.cfg.modalities
    return [
        tuple(m for j, m in enumerate(mods) if bits >> j & 1) for bits in range(1, 2 ** len(mods))
    ]


def input_names(pattern: tuple[str, ...]) -> list[str]:
    return [n for m in pattern for n in (f"{m}_tokens", f"{m}_mask")]


def export_pattern(
    model: MoMKE | MoMKEEnsemble, pattern: tuple[str, ...], tokens: dict[str, int], path: Path
) -> None:
    graph = PatternGraph(model, pattern).eval()
    args = []
    for m in pattern:
        args += [
            torch.zeros(1, tokens[m], model.cfg.input_dims[m]),
            torch.ones(1, tokens[m], dtype=torch.bool),
        ]
    names = input_names(pattern)
    dynamic = {n: {0: "batch"} for n in names} | {"logits": {0: "batch"}, "router": {0: "batch"}}
    with warnings.catch_warnings():
        # torch's notice that this tracer-based exporter is the legacy one: the torch.export-based
        # exporter needs onnxscript, which the default install does not carry.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            tuple(args),
            str(path),
            input_names=names,
            output_names=["logits", "router"],
            dynamic_axes=dynamic,
            opset_version=OPSET,
            dynamo=False,
        )
    model.eval()  # the exporter restores the wrapper's (training) mode on every submodule


def _feeds(pattern: tuple[str, ...], feats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for m in pattern:
        x = np.asarray(feats[m], np.float32)
        out[f"{m}_tokens"] = x
        out[f"{m}_mask"] = np.ones(x.shape[:2], bool)
    return out


def _torch_run(
    model: MoMKE | MoMKEEnsemble, pattern: tuple[str, ...], feeds: dict[str, np.ndarray]
) -> list[np.ndarray]:
    graph = PatternGraph(model, pattern).eval()
    with torch.no_grad():
        logits, router = graph(*(torch.from_numpy(feeds[n]) for n in input_names(pattern)))
    return [logits.numpy(), router.numpy()]


def export_feature_model(
    model: MoMKE | MoMKEEnsemble,
    out_dir: Path,
    *,
    real_feats: dict[str, np.ndarray],
    labels: tuple[str, ...],
    temperatures: dict[str, float],
    checkpoint: Path | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export every pattern to out_dir/onnx/PATTERN.onnx, check, and write the manifest."""
    import onnx
    import onnxruntime as ort

    model.eval()
    tokens = {m: int(v.shape[1]) for m, v in real_feats.items()}
    onnx_dir = out_dir / "onnx"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    graphs, parity = {}, {}
    for pattern in patterns_of(model):
        key = pattern_key(pattern)
        path = onnx_dir / f"{key}.onnx"
        export_pattern(model, pattern, tokens, path)
        onnx.checker.check_model(str(path), full_check=True)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        random = {m: rng.standard_normal((5, tokens[m], model.cfg.input_dims[m])) for m in pattern}
        worst = 0.0
        for feats in (real_feats, random):
            feeds = _feeds(pattern, feats)
            got = sess.run(None, feeds)
            want = _torch_run(model, pattern, feeds)
            worst = max(
                worst, *(float(np.abs(g - w).max()) for g, w in zip(got, want, strict=True))
            )
        if worst > PARITY_TOLERANCE:
            path.unlink()
            raise ExportError(
                f"{key}: torch vs onnxruntime max abs diff {worst:.2e} > {PARITY_TOLERANCE}"
            )
        parity[key] = worst
        graphs[key] = {
            "file": f"onnx/{key}.onnx",
            "inputs": [
                {
                    "name": f"{m}_{k}",
                    "shape": ["batch", tokens[m]]
                    + ([model.cfg.input_dims[m]] if k == "tokens" else []),
                    "dtype": "float32" if k == "tokens" else "bool",
                }
                for m in pattern
                for k in ("tokens", "mask")
            ],
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        }
    manifest = {
        "opset": OPSET,
        "labels": list(labels),
        "modalities": list(model.cfg.modalities),
        "experts": list(model.cfg.modalities),
        "graphs": graphs,
        "outputs": [
            {"name": "logits", "shape": ["batch", model.cfg.n_classes], "dtype": "float32"},
            {
                "name": "router",
                "shape": ["batch", len(model.cfg.modalities), len(model.cfg.modalities)],
                "dtype": "float32",
            },
        ],
        "prior_logits": model.prior.detach().tolist(),
        "temperatures": temperatures,
        "parity": {
            "max_abs_diff": parity,
            "tolerance": PARITY_TOLERANCE,
            "inputs": "real + random",
        },
        "checkpoint_sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest()
        if checkpoint
        else "",
        "model_args": {**model.cfg.__dict__, "modalities": list(model.cfg.modalities)},
        **(extra or {}),
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


class OnnxFeatureModel:
    """Runs an exported feature model on onnxruntime (CPU): pattern -> logits."""

    def __init__(self, model_dir: Path) -> None:
        import onnxruntime as ort

        self.manifest = json.loads((model_dir / MANIFEST).read_text())
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.sessions = {
            key: ort.InferenceSession(
                str(model_dir / g["file"]), opts, providers=["CPUExecutionProvider"]
            )
            for key, g in self.manifest["graphs"].items()
        }

    def run(self, pattern: str, feats: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        mods = tuple(pattern.split("+")) if pattern else ()
        if not mods:
            n = len(next(iter(feats.values()))) if feats else 1
            prior = np.asarray(self.manifest["prior_logits"], np.float32)
            m = len(self.manifest["modalities"])
            return np.tile(prior, (n, 1)), np.zeros((n, m, m), np.float32)
        logits, router = self.sessions[pattern].run(None, _feeds(mods, feats))
        return logits, router

    def pattern_logits(self, feats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {key: self.run(key, feats)[0] for key in self.sessions}


def main(argv: list[str] | None = None) -> int:
    """python -m engines.feature_export --run SPLIT_DIR --ravdess NPZ --out DIR [--temperatures]"""
    import argparse
    import shutil

    from engines.baselines import load_model
    from engines.ravdess import RavdessConfig, load_arrays

    ap = argparse.ArgumentParser(prog="python -m engines.feature_export")
    ap.add_argument("--run", type=Path, required=True, help="edge-train split dir (checkpoint.pt)")
    ap.add_argument("--ravdess", type=Path, required=True, help="real features for parity")
    ap.add_argument("--temperatures", type=Path, default=None, help="edge-calibrate output")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    wrapped, meta = load_model(args.run / "checkpoint.pt")
    core = as_feature_model(wrapped)
    data_cfg = {k: v for k, v in meta["data_config"].items() if k not in ("dataset", "npz")}
    arr = load_arrays(args.ravdess, RavdessConfig(**data_cfg))
    norm = meta["normalisation"]
    real = {
        m: ((getattr(arr, m)[:64] - np.asarray(norm[m]["mean"])) / np.asarray(norm[m]["std"]))
        for m in ("audio", "video")
    }
    temps = json.loads(args.temperatures.read_text()) if args.temperatures else {}
    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("checkpoint.pt", "meta.json"):
        shutil.copy(args.run / name, args.out / name)
    if temps:
        (args.out / "temperatures.json").write_text(json.dumps(temps, indent=2))
    manifest = export_feature_model(
        core,
        args.out,
        real_feats=real,
        labels=tuple(meta["labels"]),
        temperatures=temps,
        checkpoint=args.out / "checkpoint.pt",
        extra={
            "normalisation": norm,
            "data_config": meta["data_config"],
            "train_config": meta.get("train_config"),  # absent in checkpoints from before it
            "training_data": meta.get("data_meta", {}),
        },
    )
    worst = max(manifest["parity"]["max_abs_diff"].values())
    print(f"exported {len(manifest['graphs'])} pattern graphs to {args.out}; parity {worst:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
