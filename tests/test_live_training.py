"""Pieces of the live training recipe: label masking, trimming, SYNTHETIC triples, temperature."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.datasets import LABELS, featurise, synthetic_windows
from engines.features import Tokenizer
from engines.frontends import FrontendConfig, FrontendEnsemble, build_frontend, run_frontend
from engines.live import LiveModel, LiveModelConfig
from engines.live_fit import (
    LOGISTIC_C_GRID,
    NEG,
    TripleSampler,
    _mean_hog,
    _pattern_scores,
    _tensors,
    augment,
    encode_all,
    fit_frontend,
    fit_temperatures,
    masked_ce,
    predict_frontend,
    train_core,
    warp_mel_axis,
)
from engines.live_train import LiveTrainConfig, load_data, split_train_val


def test_a_class_the_dataset_lacks_is_not_a_negative() -> None:
    logits = torch.zeros(1, len(LABELS), requires_grad=True)
    mask = torch.ones(1, len(LABELS), dtype=torch.bool)
    mask[0, LABELS.index("neutral")] = False  # e.g. CK+ has no neutral
    masked_ce(logits, torch.tensor([LABELS.index("happy")]), mask).backward()
    assert logits.grad is not None
    assert logits.grad[0, LABELS.index("neutral")] == 0  # no push-down on the absent class
    assert logits.grad[0, LABELS.index("sad")] > 0


def test_label_smoothing_stays_inside_the_dataset_label_set() -> None:
    mask = torch.ones(4, len(LABELS), dtype=torch.bool)
    mask[:, LABELS.index("neutral")] = False
    labels = torch.tensor([LABELS.index(c) for c in ("happy", "sad", "angry", "fear")])
    weight = torch.rand(len(LABELS)) + 0.5
    logits = torch.randn(4, len(LABELS))
    # smoothing 0 is exactly the weighted cross-entropy the recipe always used
    plain = torch.nn.functional.cross_entropy(
        logits.masked_fill(~mask, -1e4), labels, weight=weight)
    assert torch.allclose(masked_ce(logits, labels, mask, weight, 0.0), plain)
    assert torch.allclose(masked_ce(logits, labels, mask, weight, 1e-9), plain, atol=1e-5)
    # with smoothing the absent class gets no gradient and the loss stays finite (the masked
    # logit is -1e4: any target mass on it would add ~1e4 / n_classes to the loss)
    x = logits.clone().requires_grad_(True)
    loss = masked_ce(x, labels, mask, weight, 0.1)
    loss.backward()
    assert loss.item() < 10 and x.grad is not None
    assert torch.all(x.grad[:, LABELS.index("neutral")] == 0)
    # a near-certain correct logit is pushed further up without smoothing, down with it
    sure = torch.zeros(4, len(LABELS))
    sure[torch.arange(4), labels] = 12.0
    for smoothing, sign in ((0.0, -1), (0.1, 1)):
        z = sure.clone().requires_grad_(True)
        masked_ce(z, labels, mask, weight, smoothing).backward()
        assert z.grad is not None and torch.all(sign * z.grad[torch.arange(4), labels] > 0)


def test_mel_warp_moves_a_formant_by_its_factor() -> None:
    mel = torch.zeros(2, 40, 5)
    mel[:, 10] = 1.0  # one energy peak at band 10
    assert torch.equal(warp_mel_axis(mel, torch.ones(2)), mel)
    warped = warp_mel_axis(mel, torch.tensor([1.2, 1 / 1.2]))
    # band i reads band i / factor: the peak moves to 12 (shorter tract) and to 8.33 (longer)
    assert int(warped[0, :, 0].argmax()) == 12
    assert int(warped[1, :, 0].argmax()) == 8 and warped[1, 9, 0] > 0


def test_flip_augmentation_only_mirrors_and_unknown_kinds_are_refused() -> None:
    frames = torch.rand(16, 20, 48, 48)
    out = augment("video", {"video_frames": frames}, torch.Generator().manual_seed(0), "flip")
    kept = [bool(torch.equal(o, f)) for o, f in zip(out["video_frames"], frames, strict=True)]
    mirrored = [bool(torch.equal(o, f.flip(-1)))
                for o, f in zip(out["video_frames"], frames, strict=True)]
    assert all(k or m for k, m in zip(kept, mirrored, strict=True)) and any(mirrored)
    assert any(kept)  # no shift, gain or offset on either
    with pytest.raises(ValueError, match="augmentation"):
        augment("video", {"video_frames": frames}, torch.Generator(), "warp")
    with pytest.raises(ValueError, match="augmentation.video"):
        LiveTrainConfig(augmentation={"video": "warp"})


def test_trimming_trailing_padding_is_exact() -> None:
    raw = synthetic_windows(6, seed=2)
    tok = Tokenizer.fit([t for w in raw.windows for t in (w.text or ())], min_count=1)
    d = featurise(raw, "text", tok)
    fe = build_frontend("text", FrontendConfig(dim=8, text_vocab=tok.n_ids, text_embed=8)).eval()
    idx = np.arange(len(d))
    trimmed, full = _tensors(d, idx), _tensors(d, idx, trim=False)
    assert trimmed["text_ids"].shape[1] < full["text_ids"].shape[1]
    with torch.no_grad():
        a = fe.forward_head(*run_frontend(fe, "text", trimmed))  # type: ignore[operator]
        b = fe.forward_head(*run_frontend(fe, "text", full))  # type: ignore[operator]
    assert torch.allclose(a, b, atol=1e-6)


def test_synthetic_triples_match_labels_and_respect_missing_classes() -> None:
    raw = synthetic_windows(60, seed=4)
    data = {m: featurise(raw, m, Tokenizer(vocab=("x",))) for m in ("audio", "video", "text")}
    surprise = LABELS.index("surprise")
    audio_mask = data["audio"].label_mask.copy()
    audio_mask[surprise] = False  # like EmoDB
    data["audio"] = type(data["audio"])(**{**data["audio"].__dict__, "label_mask": audio_mask})
    keep = {m: np.arange(60) for m in data}
    keep["audio"] = np.flatnonzero(data["audio"].labels != surprise)
    sampler = TripleSampler(data, keep, ("audio", "video", "text"))
    assert all("audio" not in p for p in sampler.patterns_for(surprise))
    rng = np.random.default_rng(0)
    for c in range(len(LABELS)):
        for pattern in sampler.patterns_for(c):
            picks, mask = sampler.draw(rng, c, pattern)
            assert set(picks) == set(pattern)
            assert all(data[m].labels[i] == c for m, i in picks.items())
            assert mask[c]


def test_temperature_fit_softens_an_overconfident_pattern() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 400)
    logits = rng.standard_normal((400, 7)) * 8.0  # confident and mostly wrong
    logits[np.arange(400)[:200], labels[:200]] += 12.0  # half right
    temps, report = fit_temperatures({"audio": (logits, labels)})
    assert temps[""] == 1.0 and temps["audio"] > 1.5
    assert report["audio"]["ece_after"] < report["audio"]["ece_before"]


def test_an_ensemble_front_end_is_its_members_trained_apart() -> None:
    raw = synthetic_windows(24, seed=5)
    d = featurise(raw, "audio", Tokenizer(vocab=("x",)))
    train, val = d.take(np.arange(16)), d.take(np.arange(16, 24))
    opts = {"epochs": 2, "lr": 1e-3, "batch_size": 8, "weight_decay": 0.0}
    cfg = FrontendConfig(width=4, dim=8)
    torch.manual_seed(3)
    single, _ = fit_frontend("audio", cfg, train, val, **opts)
    torch.manual_seed(3)
    pair, info = fit_frontend("audio", FrontendConfig(width=4, dim=8, members=2), train, val,
                              **opts)
    assert isinstance(pair, FrontendEnsemble) and len(info["best_epoch"]) == 2
    first, second = pair.members
    # member 0 is exactly the single model from the same seed; member 1 trained from another
    for a, b in zip(single.state_dict().values(), first.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first.head[1].weight, second.head[1].weight)  # type: ignore[index]
    x = _tensors(val, np.arange(len(val)))
    with torch.no_grad():
        tokens, mask = run_frontend(pair, "audio", x)
        parts = [run_frontend(fe, "audio", x) for fe in pair.members]
        assert tokens.shape[-1] == 16  # members * dim, what MoMKE's audio expert reads
        assert torch.equal(tokens, torch.cat([p[0] for p in parts], dim=-1))
        mean_head = (first.forward_head(*parts[0]) + second.forward_head(*parts[1])) / 2
        assert torch.allclose(pair.forward_head(tokens, mask), mean_head, atol=1e-6)


def _tiny_live_setup(cfg: LiveTrainConfig) -> tuple[LiveModel, dict, dict]:
    """A tiny live model on synthetic data, with its train / validation splits."""
    data, tok, _ = load_data(cfg)
    torch.manual_seed(0)
    model = LiveModel(LiveModelConfig(token_dim=8, text_vocab=tok.n_ids,
                                      frontend_width={"audio": 4, "video": 4, "text": 4},
                                      momke={"width": 8, "depth": 1, "heads": 1}))
    splits = {m: split_train_val(data[m], cfg, cfg.seed) for m in model.cfg.modalities}
    return model, data, splits


def _tiny_core_run(stage2_epochs: int) -> tuple[LiveModel, dict, dict, dict]:
    cfg = LiveTrainConfig(data="synthetic", synthetic_n=48, val_fraction=0.25, seed=1)
    model, data, splits = _tiny_live_setup(cfg)
    select_on = {"audio": "ua", "video": "ua", "text": "weighted_f1"}
    result = train_core(model, data, splits, 5, stage2_epochs, lr=1e-2, batch_size=16,
                        mixing_samples=96, val_per_pattern=16, seed=0, select_on=select_on)
    return model, data, splits, result


def test_stage1_keeps_each_modality_path_from_its_own_best_epoch() -> None:
    # No mixing epochs: what is left is exactly the stage-1 paths as assembled. Each modality's
    # path read on its own validation samples must score its best epoch's score, which holds
    # only if every path was taken from the epoch that modality chose (the epochs differ).
    model, data, splits, result = _tiny_core_run(stage2_epochs=0)
    stage1 = result["metrics"]["stage1"]
    assert set(stage1["selected_epoch"]) == {"audio", "video", "text"}
    singles = [({m: int(i)}, int(data[m].labels[i]), data[m].label_mask)
               for m in model.cfg.modalities for i in splits[m][1]]
    scores = _pattern_scores(model, encode_all(model, data), singles, 1,
                             {"audio": "ua", "video": "ua", "text": "weighted_f1"})
    for m in model.cfg.modalities:
        assert scores[m] == pytest.approx(stage1["val_score"][m], abs=1e-9)


def test_the_kept_mixing_epoch_is_the_one_its_mean_pattern_score_chose() -> None:
    model, _, _, result = _tiny_core_run(stage2_epochs=4)
    metrics = result["metrics"]
    per_pattern = metrics["val_per_pattern_SYNTHETIC"]
    assert len(per_pattern) == 7  # every availability pattern of three modalities
    recomputed = np.mean([r["weighted_f1" if key == "text" else "ua"]
                          for key, r in per_pattern.items()])
    assert 1 <= metrics["stage2"]["selected_epoch"] <= 4
    assert recomputed == pytest.approx(metrics["stage2"]["val_mean_pattern_score"], abs=1e-9)


@pytest.mark.parametrize("augmentation", ["none", "flip"])
def test_the_logistic_face_fit_is_exactly_a_logistic_regression(augmentation: str) -> None:
    from sklearn.linear_model import LogisticRegression

    raw = synthetic_windows(60, seed=6)
    d = featurise(raw, "video", Tokenizer(vocab=("x",)))
    train, val = d.take(np.arange(44)), d.take(np.arange(44, 60))
    cfg = FrontendConfig(width=4, dim=8, video_branches="hog", hog_cells=(8,))
    fe, info = fit_frontend("video", cfg, train, val, fit="logistic",
                            class_weight_power=1.0, augmentation=augmentation)
    assert info["picked_c"] in LOGISTIC_C_GRID
    # the same regression fitted outside: the front-end's class scores are its decision values
    hog = fe.hog[0]  # type: ignore[index]
    x = [_mean_hog(hog, train)] + ([_mean_hog(hog, train, mirror=True)]
                                   if augmentation == "flip" else [])
    counts = np.bincount(train.labels, minlength=len(LABELS)).astype(float)
    weights = {int(c): counts.sum() / counts[c] / len(LABELS) for c in np.unique(train.labels)}
    lr = LogisticRegression(C=info["picked_c"], class_weight=weights, max_iter=3000).fit(
        np.concatenate(x), np.concatenate([train.labels] * len(x)))
    logits = predict_frontend(fe, "video", val)
    classes = lr.classes_.astype(int)
    np.testing.assert_allclose(logits[:, classes], lr.decision_function(_mean_hog(hog, val)),
                               atol=1e-3)
    absent = np.setdiff1d(np.arange(len(LABELS)), classes)
    assert np.all(logits[:, absent] == NEG)  # a class the fit never saw gets no score


def test_the_logistic_fit_refuses_a_learned_face_encoder() -> None:
    raw = synthetic_windows(20, seed=7)
    d = featurise(raw, "video", Tokenizer(vocab=("x",)))
    with pytest.raises(ValueError, match="HOG-only"):
        fit_frontend("video", FrontendConfig(width=4, dim=8, video_branches="cnn"), d, d,
                     fit="logistic")
    with pytest.raises(ValueError, match="fit must be"):
        fit_frontend("video", FrontendConfig(width=4, dim=8), d, d, fit="newton")


def test_weight_averaging_is_a_validation_candidate_of_the_mean_of_epoch_weights(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import engines.live_fit as live_fit

    raw = synthetic_windows(40, seed=8)
    tok = Tokenizer(vocab=tuple("abcdefgh"))
    d = featurise(raw, "text", tok)
    train, val = d.take(np.arange(28)), d.take(np.arange(28, 40))
    seen: list[dict[str, torch.Tensor]] = []  # the weights each validation pass scored

    def recording_predict(fe: torch.nn.Module, m: str, data: object) -> np.ndarray:
        seen.append({k: v.clone() for k, v in fe.state_dict().items()})
        return predict_frontend(fe, m, data)  # type: ignore[arg-type]

    monkeypatch.setattr(live_fit, "predict_frontend", recording_predict)
    torch.manual_seed(4)
    cfg = FrontendConfig(width=4, dim=8, text_vocab=tok.n_ids)
    fe, info = fit_frontend("text", cfg, train, val, epochs=3,
                            lr=1e-2, batch_size=8, weight_decay=0.0, select_on="weighted_f1",
                            average_from=2)
    assert len(seen) == 4 and set(info["val_per_epoch"]) == {1, 2, 3}  # 3 epochs + the mean
    for k, v in seen[3].items():  # the candidate is the mean of epochs 2 and 3's weights
        torch.testing.assert_close(v, (seen[1][k] + seen[2][k]) / 2)
    # the kept state is the candidate validation scored highest, the mean included
    scores = {**info["val_per_epoch"], "mean": info["val_average"]}
    kept = "mean" if info["averaged_epochs"] == [2, 3] else info["best_epoch"]
    assert scores[kept] == max(scores.values())
    expected = seen[3] if kept == "mean" else seen[int(kept) - 1]
    for k, v in fe.state_dict().items():
        assert torch.equal(v, expected[k])


def test_weight_averaging_refuses_batchnorm_and_epochs_out_of_range() -> None:
    raw = synthetic_windows(20, seed=9)
    audio = featurise(raw, "audio", Tokenizer(vocab=("x",)))
    opts = {"epochs": 2, "lr": 1e-3, "batch_size": 8, "weight_decay": 0.0}
    with pytest.raises(ValueError, match="BatchNorm"):
        fit_frontend("audio", FrontendConfig(width=4, dim=8), audio, audio, average_from=1,
                     **opts)
    tok = Tokenizer(vocab=("x",))
    text = featurise(raw, "text", tok)
    with pytest.raises(ValueError, match="average_from"):
        fit_frontend("text", FrontendConfig(width=4, dim=8, text_vocab=tok.n_ids), text, text,
                     average_from=3, **opts)


def test_the_mixing_prior_chosen_has_the_fewest_miscalibrated_patterns_then_the_best_score(
) -> None:
    from engines.live_train import prior_rank, train_mixing

    # fewer miscalibrated patterns win whatever the score; equal misses, the better score
    assert prior_rank([], 0.5) > prior_rank(["audio"], 0.99)
    assert prior_rank(["audio+text"], 0.89) > prior_rank(["audio", "audio+text"], 0.90)
    assert prior_rank(["audio"], 0.90) > prior_rank(["video"], 0.89)

    cfg = LiveTrainConfig(data="synthetic", synthetic_n=48, val_fraction=0.25, seed=1,
                          core_stage1_epochs=2, core_stage2_epochs=2, mixing_samples=96,
                          mixing_val_per_pattern=16, mixing_class_prior="select")
    model, data, splits = _tiny_live_setup(cfg)
    prior = train_mixing(model, data, splits, cfg)["metrics"]["mixing_prior"]
    candidates = prior["candidates"]
    assert set(candidates) == {"uniform", "text"}
    assert prior["chosen"] == max(candidates, key=lambda name: prior_rank(
        candidates[name]["calibration_misses"], candidates[name]["selection_score"]))
