"""Classification metrics on numpy arrays (no sklearn): accuracy, UA, F1, ECE, confusion.

UA (unweighted accuracy) = mean per-class recall over the classes that occur in `y_true`;
macro-F1 averages over the same classes. ECE uses 15 equal-width confidence bins.
"""

from __future__ import annotations

import numpy as np

ECE_BINS = 15


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts, rows = true class, columns = predicted class."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return cm


def _f1_per_class(cm: np.ndarray) -> np.ndarray:
    tp = np.diag(cm).astype(float)
    precision = np.divide(tp, cm.sum(0), out=np.zeros_like(tp), where=cm.sum(0) > 0)
    recall = np.divide(tp, cm.sum(1), out=np.zeros_like(tp), where=cm.sum(1) > 0)
    denom = precision + recall
    return np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)


def _confidence_bins(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index per confidence: n_bins equal-width bins on [0, 1], right edges inclusive."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)


def expected_calibration_error(
    probs: np.ndarray, y_true: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """Top-label ECE: sum over confidence bins of |accuracy - confidence| weighted by bin size."""
    probs = np.asarray(probs, float)
    if len(probs) == 0:
        return float("nan")
    conf = probs.max(1)
    correct = (probs.argmax(1) == np.asarray(y_true)).astype(float)
    bins = _confidence_bins(conf, n_bins)
    ece = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def ece_if_calibrated(probs: np.ndarray, n_draws: int = 500, seed: int = 0
                      ) -> dict[str, float]:
    """The ECE a *perfectly calibrated* model with these probabilities would score, by simulation.

    Labels are drawn from each row's own distribution, so every confidence is exactly right in
    expectation, and the ECE of `probs` against them is pure sampling noise of the 15-bin
    estimator at this n and these confidences. A measured ECE below the 95th percentile is
    indistinguishable from calibrated at this sample size; one above it is a real miss.
    """
    probs = np.asarray(probs, float)
    if len(probs) == 0:
        return {"mean": float("nan"), "p95": float("nan")}
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(probs / probs.sum(1, keepdims=True), axis=1)  # (n, C)
    conf, pred = probs.max(1), probs.argmax(1)
    # the confidences and their bins are the same in every draw; only the labels change
    bins = _confidence_bins(conf, ECE_BINS)
    conf_sum = np.bincount(bins, weights=conf, minlength=ECE_BINS)
    draws = []
    for _ in range(n_draws):
        u = rng.random((len(probs), 1))
        labels = np.minimum((u > cdf).sum(1), probs.shape[1] - 1)  # inverse-CDF sample per row
        correct = np.bincount(bins, weights=(labels == pred), minlength=ECE_BINS)
        draws.append(float(np.abs(correct - conf_sum).sum() / len(probs)))
    return {"mean": float(np.mean(draws)), "p95": float(np.percentile(draws, 95))}


def reliability_bins(
    probs: np.ndarray, y_true: np.ndarray, n_bins: int = ECE_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per bin: mean confidence, accuracy, count (NaN where a bin is empty) for diagrams."""
    conf = probs.max(1)
    correct = (probs.argmax(1) == y_true).astype(float)
    bins = _confidence_bins(conf, n_bins)
    mean_conf = np.full(n_bins, np.nan)
    acc = np.full(n_bins, np.nan)
    count = np.zeros(n_bins, dtype=np.int64)
    for b in range(n_bins):
        sel = bins == b
        count[b] = sel.sum()
        if count[b]:
            mean_conf[b], acc[b] = conf[sel].mean(), correct[sel].mean()
    return mean_conf, acc, count


def classification_metrics(probs: np.ndarray, y_true: np.ndarray) -> dict[str, float]:
    """accuracy, ua, macro_f1, weighted_f1, ece, n for (n, C) probabilities and (n,) labels."""
    probs = np.asarray(probs, float)
    y_true = np.asarray(y_true, int)
    n_classes = probs.shape[1]
    y_pred = probs.argmax(1)
    cm = confusion(y_true, y_pred, n_classes)
    support = cm.sum(1)
    seen = support > 0
    recall = np.divide(np.diag(cm), support, out=np.zeros(n_classes), where=seen)
    f1 = _f1_per_class(cm)
    return {
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else float("nan"),
        "ua": float(recall[seen].mean()) if seen.any() else float("nan"),
        "macro_f1": float(f1[seen].mean()) if seen.any() else float("nan"),
        "weighted_f1": float((f1 * support).sum() / support.sum())
        if support.sum()
        else float("nan"),
        "ece": expected_calibration_error(probs, y_true),
        "n": int(len(y_true)),
    }


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, float) / temperature
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)
