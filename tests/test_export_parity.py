"""Export is a tested build step: real CLI train -> edge-export -> checker + parity."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.export import ExportError, check_parity
from engines.features import Tokenizer
from engines.live import load_live_checkpoint
from engines.manifest import Manifest

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "assets" / "tiny_model"


def _tokenizer(model_dir: Path) -> Tokenizer:
    return Tokenizer.load(model_dir / "tokenizer.json")


def test_shipped_tiny_model_passes_parity_on_every_pattern() -> None:
    model, _ = load_live_checkpoint(TINY / "live.pt")
    report = check_parity(model, TINY / "model.onnx", _tokenizer(TINY), None)
    assert report["max_abs_diff"] <= 1e-4
    patterns = {k.split("/")[0] for k in report["per_check"]}
    assert patterns == {"none", "audio", "video", "text", "audio+video", "audio+text",
                        "video+text", "audio+video+text"}
    manifest = Manifest.load(TINY)
    assert manifest.parity["max_abs_diff"] <= manifest.parity["tolerance"] == 1e-4


def test_parity_check_catches_a_graph_that_differs() -> None:
    model, _ = load_live_checkpoint(TINY / "live.pt")
    with torch.no_grad():
        model.core.prior.add_(0.01)  # the ONNX graph no longer matches these weights
        model.core.head.bias.add_(0.01)
    with pytest.raises(ExportError, match="differ"):
        check_parity(model, TINY / "model.onnx", _tokenizer(TINY), None)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_real_cli_trains_and_exports_a_tiny_model(tmp_path) -> None:
    bin_dir = Path(sys.executable).parent
    cfg = tmp_path / "tiny.toml"
    text = (REPO / "configs" / "live_tiny.toml").read_text()
    cfg.write_text(text.replace("synthetic_n = 96", "synthetic_n = 48")
                   .replace("epochs = { audio = 8, video = 8, text = 8 }",
                            "epochs = { audio = 2, video = 2, text = 2 }"))
    subprocess.run([str(bin_dir / "edge-train-live"), str(cfg), "--out", str(tmp_path / "run")],
                   check=True, cwd=REPO, timeout=300)
    run = tmp_path / "run"
    assert {"live.pt", "config.json", "metrics.json"} <= {p.name for p in run.iterdir()}
    subprocess.run([str(bin_dir / "edge-export"), "--checkpoint", str(run / "live.pt"),
                    "--out", str(tmp_path / "model")], check=True, cwd=REPO, timeout=300)
    manifest = Manifest.load(tmp_path / "model")
    assert manifest.parity["max_abs_diff"] <= 1e-4
    assert (tmp_path / "model" / "model.onnx").stat().st_size < 1_000_000
    assert set(manifest.temperatures) >= {"audio", "video", "text", "audio+video+text"}
    assert all(t > 0 for t in manifest.temperatures.values())
    assert [s.name for s in manifest.inputs][-1] == "present"
    assert json.loads((run / "config.json").read_text())["data"] == "synthetic"
    assert np.isfinite(list(manifest.temperatures.values())).all()
