"""Nested selection between live-recipe variants: the choice and the config overrides."""

from __future__ import annotations

import json

import pytest

from engines.live_select import choose, with_overrides
from engines.live_train import LiveTrainConfig


def _scores(name: str, inner: list[float], test: list[float]) -> dict:
    return {"config": name, "modality": "audio",
            "folds": [{"fold": k, "inner_ua": i, "test_ua": t, "val_ua": 0.0}
                      for k, (i, t) in enumerate(zip(inner, test, strict=True))]}


def test_each_fold_takes_the_variant_its_own_training_speakers_prefer() -> None:
    a = _scores("a", inner=[0.70, 0.60, 0.65], test=[0.9, 0.1, 0.5])
    b = _scores("b", inner=[0.60, 0.70, 0.64], test=[0.2, 0.8, 0.4])
    result = choose([a, b])
    assert [f["chosen"] for f in result["per_fold"]] == ["a", "b", "a"]
    # the estimate is the chosen variant's test score per fold, never the best test score
    assert result["nested_test_ua"]["mean"] == pytest.approx((0.9 + 0.8 + 0.5) / 3)
    # with every group available, the rule picks the best grouped-CV UA over all groups
    assert result["test_ua_per_variant"] == pytest.approx({"a": 0.5, "b": 1.4 / 3})
    assert result["ship"] == "a"
    assert result["mean_inner_ua"]["b"] == pytest.approx(1.94 / 3)


def test_variants_must_share_the_outer_folds() -> None:
    with pytest.raises(ValueError, match="same outer folds"):
        choose([_scores("a", [0.5, 0.5], [0.5, 0.5]), _scores("b", [0.5], [0.5])])


def test_overrides_change_one_field_and_keep_the_rest() -> None:
    base = LiveTrainConfig(epochs={"audio": 40, "video": 30, "text": 12},
                           model={"frontend_dropout": 0.2, "token_dim": 64})
    cfg = with_overrides(base, ["epochs.audio=60", "model.frontend_dropout=0.3", "lr=1e-3",
                                "label_smoothing.audio=0.1"])
    assert cfg.epochs == {"audio": 60, "video": 30, "text": 12}
    assert cfg.model == {"frontend_dropout": 0.3, "token_dim": 64}
    assert cfg.lr == 1e-3 and cfg.label_smoothing == {"audio": 0.1}
    assert base.epochs["audio"] == 40  # the original is untouched
    with pytest.raises(ValueError, match="KEY=VALUE"):
        with_overrides(base, ["lr"])


def test_score_and_choose_run_end_to_end_on_generated_data(tmp_path, capsys) -> None:
    from engines.live_select import main

    cfg = tmp_path / "tiny.toml"
    cfg.write_text('data = "synthetic"\nsynthetic_n = 48\nbatch_size = 16\nlr = 1e-2\n'
                   "val_fraction = 0.25\nepochs = { audio = 1, video = 1, text = 1 }\n"
                   "cv_folds = { audio = 3, video = 3 }\n[model]\ntoken_dim = 8\n"
                   "frontend_width = { audio = 4, video = 4, text = 4 }\ntext_embed = 8\n"
                   "momke = { width = 8, depth = 1, heads = 2, max_tokens = 64 }\n")
    for name, extra in (("base", []), ("smooth", ["--set", "label_smoothing.audio=0.1"])):
        assert main(["score", str(cfg), *extra, "--out", str(tmp_path / f"{name}.json")]) == 0
    assert main(["choose", str(tmp_path / "base.json"), str(tmp_path / "smooth.json"),
                 "--json", str(tmp_path / "choice.json")]) == 0
    out = capsys.readouterr().out
    assert "nested estimate (selection included)" in out

    choice = json.loads((tmp_path / "choice.json").read_text())
    assert choice["ship"] in ("base", "smooth") and len(choice["per_fold"]) == 3
    assert all(0.0 <= f["test_ua"] <= 1.0 for f in choice["per_fold"])
    smooth = json.loads((tmp_path / "smooth.json").read_text())
    assert smooth["overrides"] == ["label_smoothing.audio=0.1"]  # what `ensemble` re-trains

    # the nested estimate of shipping copies: each fold's pick retrained on that fold alone;
    # one copy must reproduce the pick's own test score exactly (member 0 = the single model)
    scores = [str(tmp_path / "base.json"), str(tmp_path / "smooth.json")]
    for members in (1, 2):
        out_path = tmp_path / f"ensemble{members}.json"
        assert main(["ensemble", str(cfg), *scores, "--members", str(members),
                     "--out", str(out_path)]) == 0
        ens = json.loads(out_path.read_text())
        assert [f["chosen"] for f in ens["per_fold"]] == [
            f["chosen"] for f in choice["per_fold"]]
        if members == 1:
            assert [f["test_ua"] for f in ens["per_fold"]] == pytest.approx(
                [f["test_ua"] for f in choice["per_fold"]])
    assert "copies of each fold's pick" in capsys.readouterr().out


def test_front_end_dropout_can_differ_per_modality() -> None:
    from engines.live import LiveModelConfig

    per = LiveModelConfig(frontend_dropout={"audio": 0.3}, text_vocab=8)
    assert per.frontend_config("audio").dropout == 0.3
    assert per.frontend_config("video").dropout == 0.2  # unnamed: the recipe's default
    assert LiveModelConfig(frontend_dropout=0.1).frontend_config("text").dropout == 0.1
