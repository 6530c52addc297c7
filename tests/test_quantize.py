"""calibration/quantize.py: a TensorRT-compatible QDQ INT8 graph from training-side windows,
checked per availability pattern against the FP32 graph, and runnable as `onnxruntime-int8`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from calibration.heldout import pattern_windows, split_windows
from calibration.quantize import (
    MAX_ACCURACY_DROP,
    QUANT_REPORT_NAME,
    QuantizeConfig,
    all_patterns,
    calibration_batches,
)
from engines.backend import MODALITIES, WindowInputs, load_backend, pattern_key
from engines.manifest import Manifest, ManifestError
from engines.onnx_backend import INT8_MODEL_NAME
from tests.int8_support import TINY, quantized_tiny


@pytest.fixture(scope="module")
def int8_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quantized_tiny(tmp_path_factory)


def test_int8_graph_is_explicit_symmetric_qdq(int8_dir: Path) -> None:
    model = onnx.load(str(int8_dir / INT8_MODEL_NAME))
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
    report = json.loads((int8_dir / QUANT_REPORT_NAME).read_text())
    qdq = report["qdq"]
    # TensorRT's explicit quantization takes signed INT8 with zero point 0 only
    assert qdq["symmetric"] is True
    assert "uint8" not in qdq["zero_point_dtypes"] and "int8" in qdq["zero_point_dtypes"]
    assert {"Conv", "Gemm"} <= set(qdq["ops_with_int8_weights"])
    assert set(qdq["ops_with_int8_weights"]) <= set(QuantizeConfig().op_types)
    # same signature as the FP32 graph: the backends feed both the same way
    fp32 = onnx.load(str(int8_dir / "model.onnx"))
    assert [i.name for i in model.graph.input] == [i.name for i in fp32.graph.input]
    assert [o.name for o in model.graph.output] == [o.name for o in fp32.graph.output]
    assert report["size_bytes"]["int8"] < report["size_bytes"]["fp32"] / 2


def test_calibration_set_is_training_side_and_covers_every_modality() -> None:
    manifest = Manifest.load(TINY)
    split = split_windows(manifest.config["training"], manifest.modalities, None)
    for m in manifest.modalities:
        train_groups = set(split.train[m].groups.tolist())
        held_groups = set(split.heldout[m].groups.tolist())
        assert train_groups and held_groups and not train_groups & held_groups
    cfg = QuantizeConfig(calib_windows=21, calib_batch=8)
    batches = calibration_batches(split.train, manifest.modalities, cfg)
    train_ids = {m: {id(getattr(w, m)) for w in split.train[m].windows} for m in MODALITIES}
    seen_patterns = set()
    for batch in batches:
        # each modality has rows in every batch (a calibrator cannot range an empty tensor)
        assert all(any(getattr(w, m) is not None for w in batch) for m in MODALITIES)
        for w in batch:
            seen_patterns.add(pattern_key(w.present()))
            for m in w.present():
                assert id(getattr(w, m)) in train_ids[m], "calibration window not from training"
    assert seen_patterns == {pattern_key(p) for p in all_patterns(MODALITIES)}


def test_multimodal_eval_pairs_are_label_matched() -> None:
    manifest = Manifest.load(TINY)
    split = split_windows(manifest.config["training"], manifest.modalities, None)
    pairs = pattern_windows(split.heldout, ("audio", "text"), 40, seed=3)
    assert pairs.name.startswith("SYNTHETIC")
    held_audio = {id(w.audio): int(y) for w, y in
                  zip(split.heldout["audio"].windows, split.heldout["audio"].labels, strict=True)}
    for w, y in zip(pairs.windows, pairs.labels, strict=True):
        assert w.present() == ("audio", "text")
        assert held_audio[id(w.audio)] == int(y)


def test_report_compares_fp32_and_int8_per_pattern(int8_dir: Path) -> None:
    report = json.loads((int8_dir / QUANT_REPORT_NAME).read_text())
    assert set(report["per_pattern"]) == {pattern_key(p) for p in all_patterns(MODALITIES)}
    for p, row in report["per_pattern"].items():
        for key in ("fp32", "int8"):
            assert row[key]["n"] > 0 and 0.0 <= row[key]["accuracy"] <= 1.0
        assert row["accuracy_drop"] == pytest.approx(
            row["fp32"]["accuracy"] - row["int8"]["accuracy"])
        assert row["within_target"] == (row["accuracy_drop"] <= MAX_ACCURACY_DROP)
        # on windows like those it was calibrated for, INT8 keeps the decisions
        assert row["top1_agreement"] >= 0.9, p
    assert all(v > 0 for v in report["cpu_latency_ms_batch1_all_modalities"].values())


def test_int8_backend_predicts_every_pattern(int8_dir: Path) -> None:
    engine = load_backend(int8_dir, "onnxruntime-int8")
    assert engine.name == "onnxruntime-int8"
    rng = np.random.default_rng(5)
    full = WindowInputs(audio=(rng.standard_normal(32000) * 3000).astype(np.int16),
                        video=rng.integers(0, 255, (6, 48, 48), dtype=np.uint8),
                        text=("that is wonderful news",))
    for pattern in [(), *all_patterns(MODALITIES)]:
        pred = engine.predict(WindowInputs(**{m: getattr(full, m) for m in pattern}))
        assert pred.used == pattern
        assert np.isfinite(pred.probs).all() and pred.probs.sum() == pytest.approx(1, abs=1e-5)
        assert set(pred.router) == set(pattern)


def test_int8_backend_without_int8_graph_says_what_to_run(tmp_path: Path) -> None:
    shutil.copytree(TINY, tmp_path / "m")
    with pytest.raises(ManifestError, match=INT8_MODEL_NAME):
        load_backend(tmp_path / "m", "onnxruntime-int8")


def test_config_rejects_unknown_method() -> None:
    with pytest.raises(ValueError, match="calibrate_method"):
        QuantizeConfig(calibrate_method="Guess")
