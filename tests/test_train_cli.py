"""A tiny training run through the real `edge-train` CLI (generated data, seconds), then
edge-calibrate and the trainer's contracts (pattern sampling, masked loss, frozen groups)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.baselines import load_model
from engines.train import (
    MoMKETrainable,
    TrainConfig,
    masked_cross_entropy,
    sample_patterns,
    train_two_stage,
)

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "engines" / "configs" / "tiny_synthetic.toml"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("edge-train")
    cmd = (
        [str(exe)]
        if exe.exists()
        else [sys.executable, "-c", "from engines.train import main; raise SystemExit(main())"]
    )
    env = dict(os.environ, PYTHONWARNINGS="error")
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, timeout=120, env=env, cwd=REPO
    )


@pytest.mark.timeout(150)
def test_tiny_training_run_through_the_cli(tmp_path) -> None:
    out = tmp_path / "run"
    proc = _cli(
        str(TINY),
        "--out",
        str(out),
        "--set",
        "train.stage1_epochs=3",
        "--set",
        "train.stage2_epochs=3",
    )
    assert proc.returncode == 0, proc.stderr
    assert "stage 1 [" in proc.stderr and "stage 2 [" in proc.stderr  # progress bar
    resolved = json.loads((out / "config.resolved.json").read_text())
    assert resolved["resolved"]["train"]["stage1_epochs"] == 3
    metrics = json.loads((out / "metrics.json").read_text())
    test = metrics["splits"]["synthetic"]["test"]
    assert set(test) == {"audio", "video", "audio+video"}
    # the generated classes are separable: a trained model is far above chance (1/3)
    assert test["audio+video"]["accuracy"] > 0.7
    split = out / "synthetic"
    model, meta = load_model(split / "checkpoint.pt")  # weights_only loading
    assert meta["kind"] == "momke" and meta["eval_stage"] == 2
    with np.load(split / "predictions.npz") as z:
        assert z["test/audio+video/logits"].shape == (test["audio+video"]["n"], 3)
    from calibration.temperature import main as calibrate

    assert calibrate([str(out)]) == 0
    temps = json.loads((out / "temperatures.json").read_text())
    assert set(temps) == {"audio", "video", "audio+video"} and all(t > 0 for t in temps.values())


@pytest.mark.timeout(150)
def test_search_axes_from_the_command_line_are_chosen_per_split(tmp_path) -> None:
    out = tmp_path / "run"
    proc = _cli(str(TINY), "--out", str(out), "--set", "train.stage1_epochs=1",
                "--set", "train.stage2_epochs=1", "--search", "model.width=[8,16]")
    assert proc.returncode == 0, proc.stderr
    resolved = json.loads((out / "config.resolved.json").read_text())
    assert resolved["resolved"]["candidates"] == [{"model.width": 8}, {"model.width": 16}]
    split = json.loads((out / "metrics.json").read_text())["splits"]["synthetic"]
    assert split["candidate"]["model.width"] in (8, 16)
    _, meta = load_model(out / "synthetic" / "checkpoint.pt")
    assert meta["model_args"]["width"] == split["candidate"]["model.width"]


def test_cli_rejects_a_bad_config(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("this is = = not toml")
    proc = _cli(str(bad))
    assert proc.returncode == 2 and "cannot read" in proc.stderr


def test_sampled_patterns_are_subsets_of_what_samples_have() -> None:
    gen = torch.Generator().manual_seed(0)
    present = torch.tensor([[True, True, True], [True, False, True], [False, True, False]] * 200)
    sampled = sample_patterns(present, p_empty=0.1, gen=gen)
    assert not (sampled & ~present).any()
    empty = ~sampled.any(1)
    assert 0.05 < empty.float().mean() < 0.15
    full_rows = sampled[0::3]
    assert len({tuple(r.tolist()) for r in full_rows}) == 8  # all 7 non-empty + empty drawn


def test_masked_loss_ignores_classes_a_dataset_lacks() -> None:
    logits = torch.tensor([[2.0, 0.0, 9.0]])
    labels = torch.tensor([0])
    only_two = torch.tensor([[True, True, False]])
    loss = masked_cross_entropy(logits, labels, only_two)
    expected = -torch.log_softmax(torch.tensor([2.0, 0.0]), 0)[0]
    assert torch.isclose(loss, expected)


def test_stage2_freezes_the_named_groups_and_stage1_selects_per_modality() -> None:
    from engines.synthetic import prepare

    data = prepare({"n_train": 64, "n_val": 32}, seed=0)
    split = data.splits[0]
    from engines.momke import MoMKE, MoMKEConfig

    torch.manual_seed(0)
    model = MoMKETrainable(
        MoMKE(
            MoMKEConfig(
                modalities=data.modalities,
                input_dims=data.input_dims,
                n_classes=3,
                width=8,
                depth=1,
            )
        )
    )
    cfg = TrainConfig(stage1_epochs=3, stage2_epochs=2, progress=False, lr=0.01)
    # run stage 1 alone, snapshot, then stage 2 and check frozen groups did not move
    train_two_stage(
        model, split.train, split.val, TrainConfig(**{**cfg.__dict__, "skip_stage2": True})
    )
    frozen = {
        k: v.clone()
        for k, v in model.state_dict().items()
        if k.startswith(("model.experts", "model.input_proj", "model.unimodal_heads"))
    }
    fusion_before = model.model.head.weight.clone()
    result = train_two_stage(
        model, split.train, split.val, TrainConfig(**{**cfg.__dict__, "skip_stage1": True})
    )
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())
    assert not torch.equal(model.model.head.weight, fusion_before)
    assert "stage2" in result.best_epoch
    assert all(p.requires_grad for p in model.parameters())  # nothing left frozen afterwards
