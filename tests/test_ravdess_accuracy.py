"""RAVDESS accuracy on real features (skips without ../shared/data).

1. A real, short MoMKE training on one actor-grouped fold (inner-validation early stopping, the
   test actors unseen), held to floors well under the CV means reported in the README but far
   above chance (0.125) and the raw-zero early-fusion failure mode.
2. Inner-fold selection (`inner_cv`): every candidate judged on the 5 other folds, the
   median epochs refit, validation predictions pooled over the 15 training actors.
3. The shipped model through edge-eval on both backends: identical predictions, all files out.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engines.evaluate import main as edge_eval
from engines.ravdess import DEFAULT_NPZ
from engines.train_cli import merge_runs, run_config

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "ravdess"

pytestmark = pytest.mark.data


@pytest.mark.timeout(240)
def test_momke_on_one_actor_fold_beats_the_floors(shared_data: Path, tmp_path: Path) -> None:
    cfg = {
        "seed": 0,
        "data": {"dataset": "ravdess", "npz": str(shared_data / DEFAULT_NPZ), "folds": [2]},
        # the base recipe (engines/configs/ravdess_base.toml), without the refit to stay fast
        "model": {"kind": "momke", "width": 64, "depth": 1, "dropout": 0.5, "max_tokens": 8},
        "train": {"stage1_epochs": 100, "stage2_epochs": 60, "patience": 12, "progress": False},
    }
    summary = run_config(cfg, tmp_path)
    test = summary["splits"]["fold2"]["test"]
    assert test["audio+video"]["n"] == 180  # the three held-out actors, 60 clips each
    assert test["audio+video"]["accuracy"] >= 0.55
    assert test["video"]["accuracy"] >= 0.45
    assert test["audio"]["accuracy"] >= 0.25
    # fusion helps over the better single modality
    assert test["audio+video"]["accuracy"] > test["video"]["accuracy"]


def _inner_cv_config(shared_data: Path, refit: bool) -> dict:
    return {
        "seed": 0,
        "refit": refit,
        "data": {
            "dataset": "ravdess",
            "npz": str(shared_data / DEFAULT_NPZ),
            "folds": [0],
            "inner_cv": True,
        },
        "model": {"kind": "momke", "width": 32, "depth": 1, "dropout": 0.5, "max_tokens": 8},
        "train": {"stage1_epochs": 4, "stage2_epochs": 3, "patience": 2, "progress": False},
        "search": {"model.dropout": [0.3, 0.5]},
    }


@pytest.mark.timeout(300)
def test_inner_fold_selection_uses_every_training_actor(shared_data: Path, tmp_path: Path) -> None:
    summary = run_config(_inner_cv_config(shared_data, refit=True), tmp_path)
    s = summary["splits"]["fold0"]
    # each candidate judged on the 5 inner folds; the best mean wins
    assert [len(t["inner_scores"]) for t in s["search"]] == [5, 5]
    for t in s["search"]:
        assert t["val_mean_accuracy"] == pytest.approx(float(np.mean(t["inner_scores"])))
    assert s["val_score"] == max(t["val_mean_accuracy"] for t in s["search"])
    # its epochs are the median of the inner folds' best epochs, and the refit trains that long
    per_fold = [members[0] for members in s["inner_best_epochs"]]
    for key, epoch in s["best_epoch"].items():
        assert epoch == int(np.median([f[key] for f in per_fold]))
    assert s["refit"]["train"][0]["stage2_epochs"] == s["best_epoch"]["stage2"] + 1
    # validation = every training actor once, out of fold (900 clips); test = 3 unseen actors
    assert s["val"]["audio+video"]["n"] == 900
    assert s["test"]["audio+video"]["n"] == 180
    with np.load(tmp_path / "fold0" / "predictions.npz") as preds:
        assert preds["val/audio/labels"].shape == (900,)
        assert np.bincount(preds["val/video/labels"], minlength=8).min() > 0


def test_inner_fold_selection_refuses_to_run_without_the_refit(
    shared_data: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="refit"):
        run_config(_inner_cv_config(shared_data, refit=False), tmp_path)


@pytest.mark.timeout(300)
def test_runs_over_disjoint_folds_merge_into_the_run_made_in_one_go(
    shared_data: Path, tmp_path: Path
) -> None:
    def cfg(folds: list[int]) -> dict:
        return {
            "seed": 0,
            "data": {"dataset": "ravdess", "npz": str(shared_data / DEFAULT_NPZ), "folds": folds},
            "model": {"kind": "momke", "width": 32, "depth": 1, "dropout": 0.5, "max_tokens": 8},
            "train": {"stage1_epochs": 3, "stage2_epochs": 2, "patience": 2, "progress": False},
        }

    whole = run_config(cfg([0, 1]), tmp_path / "whole")
    run_config(cfg([0]), tmp_path / "a")
    run_config(cfg([1]), tmp_path / "b")
    merged = merge_runs(tmp_path / "merged", [tmp_path / "a", tmp_path / "b"])
    assert merged["test_mean_std"] == whole["test_mean_std"]
    assert sorted(merged["splits"]) == ["fold0", "fold1"]
    assert (tmp_path / "merged" / "fold1" / "predictions.npz").exists()
    assert (
        "folds"
        not in json.loads((tmp_path / "merged" / "config.resolved.json").read_text())["data"]
    )
    with pytest.raises(ValueError, match="more than one run"):
        merge_runs(tmp_path / "twice", [tmp_path / "a", tmp_path / "a"])


@pytest.mark.timeout(300)
def test_edge_export_writes_a_trained_feature_model_with_its_recipe(
    shared_data: Path, tmp_path: Path
) -> None:
    cfg = {
        "seed": 0,
        "data": {"dataset": "ravdess", "npz": str(shared_data / DEFAULT_NPZ), "folds": [0]},
        "model": {"kind": "momke", "width": 32, "depth": 1, "dropout": 0.5, "max_tokens": 8},
        "train": {"stage1_epochs": 3, "stage2_epochs": 2, "patience": 2, "progress": False},
    }
    run_config(cfg, tmp_path / "run")
    out = tmp_path / "exported"
    exe = Path(sys.executable).with_name("edge-export")
    args = ["--run", str(tmp_path / "run" / "fold0"), "--ravdess", str(shared_data / DEFAULT_NPZ)]
    done = subprocess.run(
        [str(exe), *args, "--out", str(out)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "feature_manifest.json").read_text())
    assert sorted(manifest["graphs"]) == ["audio", "audio+video", "video"]
    assert max(manifest["parity"]["max_abs_diff"].values()) <= 1e-4
    assert manifest["train_config"]["stage1_epochs"] == 3  # the recipe travels with the weights
    # --run without real inputs for the parity check is refused, not exported half-checked
    bad = subprocess.run(
        [str(exe), "--run", args[1], "--out", str(tmp_path / "bad")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "--ravdess" in bad.stderr
    assert not (tmp_path / "bad").exists()


@pytest.mark.timeout(120)
def test_shipped_model_evaluates_identically_on_both_backends(
    shared_data: Path, tmp_path: Path
) -> None:
    if not (SHIPPED / "feature_manifest.json").exists():
        pytest.fail("models/ravdess is not built: run bash models/build_ravdess.sh")
    npz = shared_data / DEFAULT_NPZ
    results = {}
    for backend in ("onnxruntime", "torch"):
        out = tmp_path / f"{backend}.json"
        code = edge_eval(
            [
                "--model",
                str(SHIPPED),
                "--ravdess",
                str(npz),
                "--backend",
                backend,
                "--json",
                str(out),
            ]
        )
        assert code == 0
        results[backend] = json.loads(out.read_text())["datasets"]["ravdess"]
        for plot in results[backend]["plots"]:
            assert Path(plot).stat().st_size > 1000
    ort_p, torch_p = results["onnxruntime"]["patterns"], results["torch"]["patterns"]
    assert set(ort_p) == {"audio", "video", "audio+video"}
    for p in ort_p:
        assert ort_p[p]["n"] == 1080
        assert ort_p[p]["accuracy"] == pytest.approx(torch_p[p]["accuracy"], abs=1 / 1080)
        for key in ("accuracy", "ua", "macro_f1", "weighted_f1", "ece"):
            assert 0.0 <= ort_p[p][key] <= 1.0
    # these are the training actors, so only a sanity floor: the model fits what it saw
    assert ort_p["audio+video"]["accuracy"] > 0.6
