"""calibration/parity.py: backends agree with their reference per availability pattern, the
gates can fail, and the tolerances land in the manifest."""

from __future__ import annotations

from pathlib import Path

import pytest

from calibration.parity import GATES, Gate, check_parity, main, why_unavailable
from engines.backend import MODALITIES, pattern_key
from engines.export import all_patterns
from engines.manifest import Manifest
from tests.int8_support import copy_of, quantized_tiny

PATTERN_KEYS = {pattern_key(p) or "none" for p in all_patterns(MODALITIES)}


@pytest.fixture(scope="module")
def int8_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quantized_tiny(tmp_path_factory)


@pytest.fixture(scope="module")
def report(int8_dir: Path) -> dict:
    return check_parity(int8_dir)


def test_cpu_backends_pass_their_gates_on_every_pattern(report: dict) -> None:
    for kind in ("onnxruntime", "onnxruntime-int8"):
        entry = report[kind]
        assert entry["status"] == "passed", entry.get("failures")
        assert set(entry["per_pattern"]) == PATTERN_KEYS  # the empty pattern included
    fp32 = report["onnxruntime"]["per_pattern"]
    assert max(r["logits"] for r in fp32.values()) <= 1e-4
    assert all(r["top1_agreement"] == 1.0 for r in fp32.values())


def test_gpu_backends_run_where_they_can_and_say_why_not(int8_dir: Path, report: dict) -> None:
    for kind in ("cuda", "tensorrt", "tensorrt-int8"):
        reason = why_unavailable(int8_dir, kind)
        if reason is None:
            assert report[kind]["status"] in ("passed", "skipped"), report[kind]
            if report[kind]["status"] == "skipped":  # only a TensorRT fallback may skip here
                assert report[kind]["reason"].startswith("fallback")
        else:
            assert report[kind] == {**report[kind], "status": "skipped", "reason": reason}


def test_a_tight_gate_fails_and_names_the_pattern(int8_dir: Path) -> None:
    strict = Gate(reference="onnxruntime", max_probs_diff=1e-7, min_top1_agreement=1.0)
    result = check_parity(int8_dir, backends=("onnxruntime-int8",),
                          gates={"onnxruntime-int8": strict})
    entry = result["onnxruntime-int8"]
    assert entry["status"] == "failed"
    assert entry["failures"] and set(entry["failures"]) <= PATTERN_KEYS
    assert all("probs diff" in " ".join(f) for f in entry["failures"].values())


def test_cli_writes_tolerances_into_the_manifest(int8_dir: Path, tmp_path: Path) -> None:
    model = copy_of(int8_dir, tmp_path / "m")
    before = Manifest.load(model)
    assert main(["--model", str(model), "--backend", "onnxruntime",
                 "--backend", "onnxruntime-int8", "--write"]) == 0
    after = Manifest.load(model)
    backends = after.parity["backends"]
    assert backends["onnxruntime-int8"]["tolerance"]["max_probs_diff"] == \
        GATES["onnxruntime-int8"].max_probs_diff
    assert backends["onnxruntime"]["reference"] == "torch"
    # the export's own parity record and the graph hash are kept
    assert after.parity["max_abs_diff"] == before.parity["max_abs_diff"]
    assert after.onnx_sha256 == before.onnx_sha256
