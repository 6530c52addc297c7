"""`edge-export --checkpoint live.pt --out DIR`: ONNX + manifest, checked before it is written.

Build steps (a failed check leaves no model behind):
1. torch.export-based ONNX export with dynamic batch axes (one per modality, see engines.live);
   large weights whose values are exactly FP16 are then stored as FP16 + Cast (lossless; the
   fine-tuned MiniLM text encoder's are, see `engines.onnx_graph.store_weights_as_fp16`);
2. `onnx.checker.check_model`;
3. parity: torch eager vs onnxruntime on generated-but-realistic raw windows (through the real
   numpy featurisation; plus real files when --data-dir is given) and on random tensors, for
   every availability pattern; the max abs difference of logits and router weights must be
   <= tolerance (1e-4);
4. manifest.json (+ tokenizer.json for text models) beside model.onnx.
`edge-export --run SPLIT_DIR --ravdess NPZ --out DIR [--temperatures T]` exports an edge-train
fixed-feature model instead (engines.feature_export: one graph per availability pattern).
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.backend import WindowInputs, pattern_key
from engines.features import (
    AUDIO_WINDOW_SAMPLES,
    HOP_LENGTH,
    MAX_FACES,
    N_AUDIO_FRAMES,
    N_FFT,
    N_MELS,
    WIN_LENGTH,
    TextTokenizer,
    featurise_windows,
    tokenizer_from_state,
)
from engines.frontends import INPUT_SHAPES
from engines.live import LiveModel, load_live_checkpoint
from engines.manifest import MODEL_NAME, Manifest, TensorSpec, sha256_file
from engines.onnx_graph import store_weights_as_fp16

OPSET = 18
PARITY_TOLERANCE = 1e-4
TOKENIZER_NAME = "tokenizer.json"
_DTYPES = {"text_ids": "int64", "video_mask": "bool", "text_mask": "bool", "present": "bool"}


class ExportError(RuntimeError):
    """The exported graph failed a check (checker, parity)."""


def all_patterns(modalities: tuple[str, ...]) -> list[tuple[str, ...]]:
    return [p for r in range(0, len(modalities) + 1)
            for p in itertools.combinations(modalities, r)]


def export_onnx(model: LiveModel, path: Path) -> None:
    from torch.export import Dim

    example = random_feeds(model, [model.cfg.modalities] * 2, np.random.default_rng(0))
    batch = Dim("batch", min=1, max=4096)
    row_dims = {m: Dim(f"rows_{m}", min=0, max=4096) for m in model.cfg.modalities}
    dynamic = []
    for name in model.input_names:
        modality = next((m for m in model.cfg.modalities if name in INPUT_SHAPES[m]), None)
        dynamic.append({0: row_dims[modality] if modality else batch})
    args = tuple(torch.from_numpy(example[n]) for n in model.input_names)
    with warnings.catch_warnings():
        # The exporter's own deprecation chatter (pytree, axis-name merging) is not ours to fix.
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, str(path), input_names=model.input_names,
                          output_names=["logits", "router"], dynamic_shapes=(tuple(dynamic),),
                          opset_version=OPSET, dynamo=True, external_data=False,
                          verbose=False)


def random_feeds(model: LiveModel, patterns: list[tuple[str, ...]], rng: np.random.Generator
                 ) -> dict[str, np.ndarray]:
    """Random graph inputs for a batch with the given per-sample availability patterns."""
    mods = model.cfg.modalities
    present = np.array([[m in p for m in mods] for p in patterns], bool).reshape(-1, len(mods))
    feeds: dict[str, np.ndarray] = {"present": present}
    for i, m in enumerate(mods):
        rows = int(present[:, i].sum())
        for name, shape in INPUT_SHAPES[m].items():
            dtype = _DTYPES.get(name, "float32")
            arr: np.ndarray
            if dtype == "bool":
                n_real = rng.integers(1, shape[0] + 1, size=rows)
                arr = np.arange(shape[0])[None, :] < n_real[:, None]
            elif dtype == "int64":
                arr = rng.integers(0, model.cfg.text_vocab, size=(rows, *shape))
            else:
                arr = rng.standard_normal((rows, *shape)).astype(np.float32)
                if name == "audio_logmel":
                    arr = arr * 2.0 - 8.0  # roughly the range of real log-mel values
            feeds[name] = arr.astype(dtype)
    return feeds


def realistic_windows(data_dir: Path | None, n: int = 6) -> list[WindowInputs]:
    """Raw windows for parity: real files when data_dir has them, else generated signals."""
    from engines.datasets import ckplus_windows, emodb_windows, meld_windows, synthetic_windows

    wins = list(synthetic_windows(n, seed=123).windows)
    if data_dir is not None and (data_dir / "emodb").is_dir():
        audio = emodb_windows(data_dir / "emodb" / "wav").windows[::60][:n]
        faces = ckplus_windows(data_dir / "ckplus48").windows[::90][:n]
        texts = meld_windows(data_dir / "meld_text" / "dev_sent_emo.csv").windows[::150][:n]
        wins += [WindowInputs(audio=a.audio, video=f.video, text=t.text)
                 for a, f, t in zip(audio, faces, texts, strict=False)]
    return wins


def _torch_outputs(model: LiveModel, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        logits, router = model(*(torch.from_numpy(feeds[n]) for n in model.input_names))
    return [logits.numpy(), router.numpy()]


def check_parity(model: LiveModel, onnx_path: Path, tokenizer: TextTokenizer | None,
                 data_dir: Path | None) -> dict[str, Any]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    mods = model.cfg.modalities
    windows = realistic_windows(data_dir)
    worst: dict[str, float] = {}
    for pattern in all_patterns(mods):
        key = pattern_key(pattern) or "none"
        masked = [w.only(pattern) for w in windows]
        batches = {"real": featurise_windows(masked, mods, tokenizer,
                                             model.cfg.audio_speaker_norm),
                   "random": random_feeds(model, [pattern] * 4, rng)}
        for kind, feeds in batches.items():
            got = sess.run(None, {n: feeds[n] for n in model.input_names})
            want = _torch_outputs(model, feeds)
            diff = max(float(np.max(np.abs(g - w))) if g.size else 0.0
                       for g, w in zip(got, want, strict=True))
            if not all(np.isfinite(g).all() for g in got):
                raise ExportError(f"non-finite onnxruntime output for pattern {key} ({kind})")
            worst[f"{key}/{kind}"] = diff
    max_diff = max(worst.values())
    if max_diff > PARITY_TOLERANCE:
        bad = {k: v for k, v in worst.items() if v > PARITY_TOLERANCE}
        raise ExportError(f"torch vs onnxruntime differ by more than {PARITY_TOLERANCE}: {bad}")
    return {"tolerance": PARITY_TOLERANCE, "max_abs_diff": max_diff, "per_check": worst,
            "compared": ["logits", "router"]}


def export_model(checkpoint: Path, out_dir: Path, data_dir: Path | None = None) -> Manifest:
    import onnx

    model, extra = load_live_checkpoint(checkpoint)
    tok_state = extra.get("tokenizer")
    tokenizer = tokenizer_from_state(tok_state) if tok_state else None
    with tempfile.TemporaryDirectory() as tmp:
        tmp_onnx = Path(tmp) / MODEL_NAME
        export_onnx(model, tmp_onnx)
        store_weights_as_fp16(tmp_onnx)
        onnx.checker.check_model(str(tmp_onnx), full_check=True)
        parity = check_parity(model, tmp_onnx, tokenizer, data_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_onnx, out_dir / MODEL_NAME)
    if tokenizer is not None:
        tokenizer.save(out_dir / TOKENIZER_NAME)
    graph = onnx.load(str(out_dir / MODEL_NAME))
    n_labels = len(model.cfg.labels)
    mods = model.cfg.modalities
    inputs = [TensorSpec(name=n, dtype=_DTYPES.get(n, "float32"), shape=(f"rows_{m}", *shape))
              for m in mods for n, shape in INPUT_SHAPES[m].items()]
    inputs.append(TensorSpec(name="present", dtype="bool", shape=("batch", len(mods))))
    metrics = json.loads(extra.get("metrics_json", "{}"))
    manifest = Manifest(
        labels=model.cfg.labels, modalities=mods, experts=mods,
        inputs=tuple(inputs),
        outputs=(TensorSpec(name="logits", dtype="float32", shape=("batch", n_labels)),
                 TensorSpec(name="router", dtype="float32",
                            shape=("batch", len(mods), len(mods)))),
        input_groups={m: tuple(INPUT_SHAPES[m]) for m in mods},
        opset=int(graph.opset_import[0].version),
        temperatures={str(k): float(v) for k, v in extra.get("temperatures", {}).items()},
        features={"audio_rate_hz": 16000, "audio_window_samples": AUDIO_WINDOW_SAMPLES,
                  "n_fft": N_FFT, "win_length": WIN_LENGTH, "hop_length": HOP_LENGTH,
                  "n_mels": N_MELS, "n_audio_frames": N_AUDIO_FRAMES, "max_faces": MAX_FACES,
                  "face_size": 48, "max_tokens": tokenizer.max_tokens if tokenizer else 0,
                  "audio_speaker_norm": model.cfg.audio_speaker_norm},
        tokenizer_file=TOKENIZER_NAME if tokenizer else None,
        checkpoint_sha256=sha256_file(checkpoint),
        onnx_sha256=sha256_file(out_dir / MODEL_NAME),
        config={"model": _plain(model.cfg), "training": extra.get("config", {})},
        training_data=tuple(extra.get("training_data", ())),
        parity=parity, metrics=metrics)
    manifest.save(out_dir)
    return manifest


def _plain(cfg: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return json.loads(json.dumps(asdict(cfg)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge-export", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="live model checkpoint (live.pt)")
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="../shared/data: add real files to the parity check")
    parser.add_argument("--run", type=Path,
                        help="or: an edge-train split dir of a fixed-feature model (RAVDESS): "
                        "one graph per availability pattern + feature_manifest.json")
    parser.add_argument("--ravdess", type=Path, help="with --run: real features for parity")
    parser.add_argument("--temperatures", type=Path, help="with --run: edge-calibrate output")
    args = parser.parse_args(argv)
    if (args.checkpoint is None) == (args.run is None):
        parser.error("give --checkpoint (live model) or --run (edge-train feature model)")
    if args.run is not None:
        if args.ravdess is None:
            parser.error("--run needs --ravdess NPZ (real inputs for the parity check)")
        from engines.feature_export import main as export_feature_run

        extra = ["--temperatures", str(args.temperatures)] if args.temperatures else []
        return export_feature_run(
            ["--run", str(args.run), "--ravdess", str(args.ravdess), "--out", str(args.out),
             *extra]
        )
    try:
        manifest = export_model(args.checkpoint, args.out, args.data_dir)
    except ExportError as exc:
        print(f"edge-export: {exc}", file=sys.stderr)
        return 1
    size_kb = (args.out / MODEL_NAME).stat().st_size / 1024
    print(f"wrote {args.out / MODEL_NAME} ({size_kb:.0f} KiB), parity max abs diff "
          f"{manifest.parity['max_abs_diff']:.2e} over {len(manifest.parity['per_check'])} checks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
