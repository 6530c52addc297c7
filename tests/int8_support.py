"""One INT8 copy of the tiny model per test session, made by the real `edge-quantize` CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from calibration.quantize import main as quantize_main

TINY = Path(__file__).parent / "assets" / "tiny_model"
_made: dict[str, Path] = {}


def quantized_tiny(factory: pytest.TempPathFactory) -> Path:
    """A copy of tests/assets/tiny_model with model.int8.onnx + quantization.json beside it.

    The tiny model trained on generated windows, so its calibration set is the training side of
    those (calibration/heldout.py); no shared data is needed.
    """
    if "dir" not in _made:
        model_dir = factory.mktemp("tiny_int8") / "model"
        shutil.copytree(TINY, model_dir)
        assert quantize_main(["--model", str(model_dir), "--calib-windows", "32",
                             "--eval-pairs", "48", "--latency-repeats", "5"]) == 0
        _made["dir"] = model_dir
    return _made["dir"]


def copy_of(model_dir: Path, dest: Path) -> Path:
    shutil.copytree(model_dir, dest)
    return dest
