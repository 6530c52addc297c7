"""EmoDB audio, leave-one-speaker-out: what normalising by the speaker's own *past* buys.

Issue 4 allows normalisation from a speaker's own unlabelled audio "only from the past of the
stream, reported separately". In a car that is the driver's earlier speech. This measures it
on the simplest honest model, so the next rebuild of the audio expert knows what it is worth:

- features: functionals of the 2 s log-mel window the live expert sees (`engines.features`):
  per band mean, std, voiced-frame mean, delta std, 10/50/90th percentiles; frame energy stats;
- model: logistic regression (balanced classes); C chosen by an inner leave-one-speaker-out
  over the *training* speakers only; the test speaker is scored once per fold;
- "causal speaker norm": each clip's features minus the mean (and, from the 6th clip on,
  divided by the std) of the same speaker's *earlier* clips in arrival order
  (`engines.features.arrival_order`, a checksum order: EmoDB's file order sorts each speaker's
  clips by emotion code); no labels, no later clips. Applied to every speaker alike.

    nice -n 19 .venv/bin/python bench/emodb_speaker_norm.py  # JSON in bench/results/
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from engines.datasets import emodb_windows  # noqa: E402
from engines.features import arrival_order, log_mel  # noqa: E402
from engines.metrics import classification_metrics  # noqa: E402

C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)
MIN_PAST_FOR_SCALE = 5  # earlier clips needed before dividing by their std


def functionals(logmel: np.ndarray) -> np.ndarray:
    """(n_mels, n_frames) log-mel -> a fixed-length vector of per-band and energy statistics."""
    energy = logmel.mean(0)
    voiced = energy > np.percentile(energy, 30)
    loud = logmel[:, voiced] if voiced.sum() > 5 else logmel
    return np.concatenate([
        logmel.mean(1), logmel.std(1), loud.mean(1), np.diff(logmel, axis=1).std(1),
        np.percentile(logmel, [10, 50, 90], axis=1).ravel(),
        [energy.mean(), energy.std(), voiced.mean()],
    ])


def causal_speaker_norm(x: np.ndarray, groups: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Each row normalised by the statistics of its speaker's rows earlier in `order`."""
    out = np.empty_like(x)
    for speaker in np.unique(groups):
        rows = order[groups[order] == speaker]  # this speaker's rows, in arrival order
        for k, i in enumerate(rows):
            past = x[rows[:k]]
            centre = past.mean(0) if k else np.zeros(x.shape[1])
            scale = past.std(0) + 1e-3 if k >= MIN_PAST_FOR_SCALE else 1.0
            out[i] = (x[i] - centre) / scale
    return out


def loso_ua(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> dict[str, object]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    n_classes = int(y.max()) + 1

    def fit_score(train: np.ndarray, test: np.ndarray, c: float) -> float:
        scaler = StandardScaler().fit(x[train])
        model = LogisticRegression(C=c, max_iter=2000, class_weight="balanced")
        model.fit(scaler.transform(x[train]), y[train])
        probs = np.zeros((int(test.sum()), n_classes))
        probs[:, model.classes_] = model.predict_proba(scaler.transform(x[test]))
        return classification_metrics(probs, y[test])["ua"]  # the repo's UA, as edge-eval's

    per_speaker, chosen = {}, {}
    for speaker in np.unique(groups):
        test, train = groups == speaker, groups != speaker
        inner = {c: np.mean([fit_score(train & (groups != v), train & (groups == v), c)
                             for v in np.unique(groups[train])]) for c in C_GRID}
        chosen[str(speaker)] = best = max(inner, key=lambda c: inner[c])
        per_speaker[str(speaker)] = round(fit_score(train, test, best), 4)
    uas = list(per_speaker.values())
    return {"ua_mean": round(float(np.mean(uas)), 4), "ua_std": round(float(np.std(uas)), 4),
            "per_speaker": per_speaker, "chosen_C": chosen}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path,
                    default=Path(os.environ.get("EDGE_DATA_DIR", REPO.parent / "shared" / "data")))
    ap.add_argument("--json", type=Path, default=REPO / "bench" / "results" /
                    "emodb_speaker_norm.json")
    args = ap.parse_args(argv)

    raw = emodb_windows(args.data_dir / "emodb" / "wav")
    x = np.stack([functionals(log_mel(w.audio)) for w in raw.windows if w.audio is not None])
    y, groups = raw.labels, raw.groups
    results = {
        "clips": int(y.size), "speakers": [str(s) for s in np.unique(groups)],
        "features": int(x.shape[1]),
        "functionals + LR": loso_ua(x, y, groups),
        "functionals + causal speaker norm + LR (reported separately)":
            loso_ua(causal_speaker_norm(x, groups, arrival_order(
                [w.audio for w in raw.windows])), y, groups),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"EmoDB leave-one-speaker-out, {y.size} clips, {len(results['speakers'])} speakers")
    for name, r in results.items():
        if isinstance(r, dict):
            print(f"{name:<62} UA {r['ua_mean']:.3f} ± {r['ua_std']:.3f}")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
