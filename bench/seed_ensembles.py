"""One live-recipe front-end, grouped CV with several seeds: how far one training run moves with
the seed, and what the mean of independently trained copies scores on the same folds.

Why: EmoDB's leave-one-speaker-out UA of one run moves by +-0.1 per speaker with the seed alone,
which is larger than any recipe change the nested selection compared. This is the measurement
behind `frontend_members = { audio = 3 }` (README, "Live model"): per seed, the usual grouped CV
(`engines.live_train.cross_validate`, the same folds, validation split and seed as the build's
member 0); per subset of seeds, the UA of the mean softmax of those runs' test logits, which is
what a `FrontendEnsemble` of those copies predicts (mean logits = mean log-probabilities up to a
constant; softmax averaging differs only in ties). Copies here also hold out different
validation speakers (the validation split follows the seed), unlike the shipped ensemble.

    nice -n 5 .venv/bin/python bench/seed_ensembles.py configs/live.toml --modality audio \\
        --seeds 0 1 2 3  # JSON in bench/results/seed_ensembles_audio.json
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from engines.live import LiveModelConfig  # noqa: E402
from engines.live_fit import classification_metrics  # noqa: E402
from engines.live_select import with_overrides  # noqa: E402
from engines.live_train import LiveTrainConfig, cross_validate, load_data  # noqa: E402
from engines.metrics import softmax  # noqa: E402


def ensemble_ua(runs: list[dict], label_mask: np.ndarray) -> float:
    """Mean over folds of the UA of the runs' mean softmax (runs share folds and test order)."""
    per_fold = []
    for folds in zip(*(r["folds"] for r in runs), strict=True):
        probs = np.mean([softmax(np.asarray(f["logits"])) for f in folds], axis=0)
        per_fold.append(classification_metrics(np.asarray(folds[0]["labels"]), np.log(probs),
                                               label_mask)["ua"])
    return float(np.mean(per_fold))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("--modality", choices=("audio", "video"), default="audio")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override one config field (as engines.live_select)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    m = args.modality
    base = with_overrides(LiveTrainConfig.from_toml(args.config),
                          [*args.set, f"model.frontend_members.{m}=1"])  # one copy per run
    data, tok, _ = load_data(base)
    d = data[m]
    lm_cfg = LiveModelConfig(**{**base.model, "text_vocab": tok.n_ids})
    runs = []
    for seed in args.seeds:
        cv = cross_validate(m, d, lm_cfg, dataclasses.replace(base, seed=seed), keep_logits=True)
        runs.append({"seed": seed, "ua": cv["summary"]["ua"]["mean"], "folds": cv["folds"]})
    ensembles = {}
    for k in range(2, len(runs) + 1):
        uas = [ensemble_ua(list(c), d.label_mask) for c in itertools.combinations(runs, k)]
        ensembles[k] = {"mean": float(np.mean(uas)), "min": float(np.min(uas)),
                        "max": float(np.max(uas))}
    result = {"config": str(args.config), "overrides": args.set, "modality": m,
              "single": {r["seed"]: r["ua"] for r in runs},
              "single_per_fold": {r["seed"]: [f["ua"] for f in r["folds"]] for r in runs},
              "ensembles_of_k": ensembles}
    out = args.json or REPO / "bench" / "results" / f"seed_ensembles_{m}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"{'runs':<28}{'grouped-CV UA':>14}")
    for r in runs:
        print(f"{'one copy, seed ' + str(r['seed']):<28}{r['ua']:>14.3f}")
    print(f"{'one copy, mean over seeds':<28}{np.mean([r['ua'] for r in runs]):>14.3f}")
    for k, e in ensembles.items():
        print(f"{f'{k} copies (all subsets)':<28}{e['mean']:>14.3f}  "
              f"(min {e['min']:.3f}, max {e['max']:.3f})")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
