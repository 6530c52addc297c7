"""Temperature scaling and the metrics it is judged by."""

from __future__ import annotations

import json

import numpy as np
import pytest

from calibration.temperature import calibrate_run, fit_per_pattern, fit_temperature, main, nll
from engines.metrics import (
    classification_metrics,
    ece_if_calibrated,
    expected_calibration_error,
    softmax,
)


def _calibrated_logits(n: int, true_t: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z); the model reports z * true_t (over-confident when > 1)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 5)) * 2.0
    p = softmax(z)
    y = np.array([rng.choice(5, p=row) for row in p])
    return z * true_t, y


def test_fit_recovers_the_temperature_of_an_overconfident_model() -> None:
    logits, y = _calibrated_logits(4000, 3.0, seed=0)
    t = fit_temperature(logits, y)
    assert 2.6 < t < 3.4
    assert nll(logits, y, t) < nll(logits, y, 1.0)
    before = expected_calibration_error(softmax(logits), y)
    after = expected_calibration_error(softmax(logits, t), y)
    assert before > 0.1 and after < 0.03


def test_calibrated_model_keeps_temperature_near_one() -> None:
    logits, y = _calibrated_logits(4000, 1.0, seed=1)
    assert 0.9 < fit_temperature(logits, y) < 1.1


def test_per_pattern_fit_and_prior_pattern_untouched() -> None:
    a, ya = _calibrated_logits(2000, 2.0, seed=2)
    b, yb = _calibrated_logits(2000, 0.5, seed=3)
    temps = fit_per_pattern({"audio": (a, ya), "video": (b, yb), "": (a, ya)})
    assert temps["audio"] > 1.5 and temps["video"] < 0.7 and temps[""] == 1.0


def test_ece_of_a_perfect_and_a_wrong_confident_model() -> None:
    y = np.array([0, 1, 2, 0])
    perfect = np.eye(3)[y]
    assert expected_calibration_error(perfect, y) == pytest.approx(0.0)
    wrong = np.eye(3)[(y + 1) % 3]
    assert expected_calibration_error(wrong, y) == pytest.approx(1.0)


def test_the_calibrated_yardstick_separates_noise_from_a_real_miss() -> None:
    # 60 items, like the audio validation speaker: a calibrated model's ECE is large by chance,
    # and the yardstick must say so; an over-confident one (T = 3) must exceed it.
    passes = 0
    for seed in range(20):
        logits, y = _calibrated_logits(60, 1.0, seed=100 + seed)
        probs = softmax(logits)
        null = ece_if_calibrated(probs, n_draws=200, seed=seed)
        assert 0.05 < null["mean"] < null["p95"] < 0.4  # 15 bins, 60 items: noisy by nature
        passes += expected_calibration_error(probs, y) <= null["p95"]
    assert passes >= 16  # ~95% of calibrated draws fall under the 95% point
    logits, y = _calibrated_logits(1500, 3.0, seed=7)
    probs = softmax(logits)
    assert expected_calibration_error(probs, y) > ece_if_calibrated(probs, n_draws=200)["p95"]


def test_metrics_on_a_known_confusion() -> None:
    y = np.array([0, 0, 0, 0, 1, 1])
    pred = np.array([0, 0, 0, 1, 1, 0])
    m = classification_metrics(np.eye(2)[pred] * 0.8 + 0.1, y)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["ua"] == pytest.approx((3 / 4 + 1 / 2) / 2)
    f1_0, f1_1 = 2 * 0.75 * 0.75 / 1.5, 0.5
    assert m["macro_f1"] == pytest.approx((f1_0 + f1_1) / 2)
    assert m["weighted_f1"] == pytest.approx((4 * f1_0 + 2 * f1_1) / 6)
    assert m["n"] == 6


def test_calibrate_run_on_an_edge_train_layout(tmp_path) -> None:
    for k in range(2):
        val, yv = _calibrated_logits(600, 2.5, seed=10 + k)
        test, yt = _calibrated_logits(600, 2.5, seed=20 + k)
        d = tmp_path / f"fold{k}"
        d.mkdir()
        np.savez(
            d / "predictions.npz",
            **{
                "val/audio/logits": val,
                "val/audio/labels": yv,
                "test/audio/logits": test,
                "test/audio/labels": yt,
            },
        )
    result = calibrate_run(tmp_path)
    after = result["test_after_mean_std"]["audio"]  # type: ignore[index]
    before = result["test_before_mean_std"]["audio"]  # type: ignore[index]
    assert after["ece"][0] < before["ece"][0] / 2
    assert 2.0 < result["pooled_val_temperatures"]["audio"] < 3.0  # type: ignore[index]
    assert main([str(tmp_path)]) == 0
    assert json.loads((tmp_path / "temperatures.json").read_text())["audio"] > 2.0


def test_calibrate_cli_reports_missing_run(tmp_path, capsys) -> None:
    assert main([str(tmp_path)]) == 2
    assert "predictions.npz" in capsys.readouterr().err
