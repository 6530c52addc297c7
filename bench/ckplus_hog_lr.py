"""CK+48: logistic regression on the shipped face front-end's own in-graph HOG features, nested.

Why: the shipped face front-end is HOG (fixed) -> linear map -> linear head, i.e. a linear
classifier on HOG features fitted by SGD with early stopping (10-fold-by-subject UA 0.857, the
recipe's nested estimate 0.815). The same classifier fitted as a convex problem (L2 logistic
regression, solved to convergence) is a candidate replacement; this measures it honestly:

- outer: the live recipe's CK+48 folds (`engines.datasets.group_kfold`, 10 by subject);
- inner: C chosen on each outer fold's *training* subjects only (5-fold grouped CV, UA), then
  refitted on all of them and scored once on the outer test subjects;
- class weights balanced (the video front-end's class_weight_power 1.0); training crops plus
  their mirror images (the shipped augmentation), test crops as they are.

The per-C rows (every outer fold at one fixed C) are a curve for reading, not a selection.

    nice -n 19 .venv/bin/python bench/ckplus_hog_lr.py   # ~10 min on one core
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from engines.datasets import group_kfold, load_ckplus
from engines.frontends import HOG
from engines.live_fit import _mean_hog

C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


def ua(labels: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean([np.mean(pred[labels == c] == c) for c in np.unique(labels)]))


def fit_score(x: np.ndarray, x_flip: np.ndarray, y: np.ndarray, train: np.ndarray,
              test: np.ndarray, c: float) -> float:
    lr = LogisticRegression(C=c, class_weight="balanced", max_iter=3000)
    lr.fit(np.concatenate([x[train], x_flip[train]]), np.concatenate([y[train], y[train]]))
    return ua(y[test], lr.predict(x[test]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    ap.add_argument("--cells", type=int, nargs="+", default=[8, 4])
    ap.add_argument("--inner-folds", type=int, default=5)
    ap.add_argument("--json", type=Path, default=Path("bench/results/ckplus_hog_lr.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.monotonic()
    d = load_ckplus(args.data_dir / "ckplus48")
    cells = tuple(args.cells)
    hog = HOG(cells)  # the shipped graph's features, as the live recipe's logistic fit reads them
    x, x_flip = _mean_hog(hog, d), _mean_hog(hog, d, mirror=True)
    y, groups = d.labels, d.groups
    folds = group_kfold(groups, 10)
    nested, fixed = [], {c: [] for c in C_GRID}
    for k, test in enumerate(folds):
        train = np.setdiff1d(np.arange(len(y)), test)
        inner = group_kfold(groups[train], args.inner_folds)
        inner_ua = {}
        for c in C_GRID:
            scores = [fit_score(x, x_flip, y, train[np.setdiff1d(np.arange(train.size), vi)],
                                train[vi], c) for vi in inner]
            inner_ua[c] = float(np.mean(scores))
            fixed[c].append(fit_score(x, x_flip, y, train, test, c))
        pick = max(C_GRID, key=lambda c: inner_ua[c])
        nested.append({"fold": k, "test_subjects": sorted(set(groups[test].tolist())),
                       "inner_ua": inner_ua, "picked_c": pick, "test_ua": fixed[pick][-1]})
        print(f"fold {k}: C={pick} (inner UA {inner_ua[pick]:.3f}) test UA {fixed[pick][-1]:.3f}",
              flush=True)
    test_uas = [f["test_ua"] for f in nested]
    out = {"protocol": __doc__.split("\n\n")[1], "features": f"HOG cells {list(cells)}, "
           f"{x.shape[1]} features", "n": int(len(y)), "subjects": int(np.unique(groups).size),
           "nested": {"ua_mean": float(np.mean(test_uas)), "ua_std": float(np.std(test_uas)),
                      "folds": nested},
           "fixed_c_curve_not_a_selection": {str(c): {"ua_mean": float(np.mean(v)),
                                                      "ua_std": float(np.std(v))}
                                             for c, v in fixed.items()},
           "seconds": time.monotonic() - t0}
    args.json.write_text(json.dumps(out, indent=1))
    print(f"\n{'model':<34}{'UA mean':>9}{'std':>8}")
    print(f"{'LR on HOG, nested (C inner CV)':<34}{out['nested']['ua_mean']:>9.3f}"
          f"{out['nested']['ua_std']:>8.3f}")
    for c, r in out["fixed_c_curve_not_a_selection"].items():
        print(f"{'LR on HOG, C=' + c + ' (curve)':<34}{r['ua_mean']:>9.3f}{r['ua_std']:>8.3f}")
    print(f"-> {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
