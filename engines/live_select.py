"""Nested grouped-CV selection between variants of the live recipe.

With one validation speaker per fold (EmoDB: 8 public speakers), a variant's validation UA moves
more with the seed and the epoch than the variants differ, so "best mean validation UA" ranks
them no better than chance (README, "Live model"). Nested CV scores each variant by the same
statistic as the target instead: for every outer fold, the variant's grouped CV over that fold's
*training* groups only (the same grouped folds: leave one speaker out for EmoDB, 10 folds by
subject for CK+; each inner training still picks its epoch on its own held-out groups). The
variant with the best inner mean is the fold's choice, and the fold's test score is that
variant's. The mean over the outer folds estimates the whole
procedure, selection included, on groups it never saw: that is the number to claim. The variant
to ship is what the same rule picks when every group is available: the best grouped-CV UA over
all groups (the outer folds' scores). That score is optimistic for the variant it picks (it
picked it), so it is reported beside the nested estimate, never instead of it.

The shipped audio expert is an ensemble of copies of the pick, trained apart
(LiveModelConfig.frontend_members). `ensemble` estimates that procedure the same nested way:
per outer fold, the variant its training groups chose, trained as that many copies on the
fold's training side and scored on its test speaker, so the selection stays inside the estimate.

    python -m engines.live_select score configs/live.toml --set lr=1e-3 --out runs/select/lr.json
    python -m engines.live_select choose runs/select/*.json --json runs/select/choice.json
    python -m engines.live_select ensemble runs/select/base.toml runs/select/audio/*.json \
        --members 3 --modality audio --out runs/select/audio_ensemble3.json

(`ensemble` re-trains each pick from the base its variants were scored from: the pre-selection
recipe models/select_live.sh writes to runs/select/base.toml.)

`--set KEY=VALUE` overrides one LiveTrainConfig field (dotted for a nested table, VALUE in TOML:
`--set epochs.audio=60`, `--set model.frontend_dropout=0.3`), so each variant is the shipped
config plus the one line it changes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.datasets import group_kfold
from engines.live import LiveModelConfig
from engines.live_train import LiveTrainConfig, cross_validate, load_data


def with_overrides(cfg: LiveTrainConfig, overrides: list[str]) -> LiveTrainConfig:
    """`key.sub=toml_value` strings applied to a copy of the config's fields."""
    fields = dataclasses.asdict(cfg)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set wants KEY=VALUE, got {item!r}")
        *parents, leaf = key.split(".")
        node = fields
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {item!r}: {p!r} is not a table")
        node[leaf] = tomllib.loads(f"v = {value}")["v"]
    return LiveTrainConfig(**fields)


def score(cfg: LiveTrainConfig, modality: str, name: str, overrides: list[str]
          ) -> dict[str, Any]:
    """Per outer fold: the inner grouped-CV mean UA (training groups only) and the test UA."""
    torch.set_num_threads(1)
    data, tok, _ = load_data(cfg)
    d = data[modality]
    lm_cfg = LiveModelConfig(**{**cfg.model, "text_vocab": tok.n_ids})
    outer = cross_validate(modality, d, lm_cfg, cfg)  # the usual report: test UA per fold
    folds = group_kfold(d.groups, cfg.cv_folds.get(modality, 5))
    rows = []
    for k, test_idx in enumerate(folds):
        rest = np.setdiff1d(np.arange(len(d)), test_idx)
        # the outer protocol on the training groups: leave one out where there are as few
        # groups as folds (EmoDB: 7 training speakers), else the same number of folds (CK+)
        n_inner = min(cfg.cv_folds.get(modality, 5), len(np.unique(d.groups[rest])))
        inner_cfg = dataclasses.replace(cfg, cv_folds={modality: n_inner})
        inner = cross_validate(modality, d.take(rest), lm_cfg, inner_cfg)
        rows.append({"fold": k, "inner_ua": inner["summary"]["ua"]["mean"],
                     "test_ua": outer["folds"][k]["ua"], "val_ua": outer["folds"][k]["val_ua"]})
        print(f"[{name}] outer fold {k}: inner UA {rows[-1]['inner_ua']:.3f} "
              f"test UA {rows[-1]['test_ua']:.3f}", flush=True)
    return {"config": name, "modality": modality, "overrides": overrides, "folds": rows}


def nested_ensemble(base: LiveTrainConfig, scores: list[dict[str, Any]], modality: str,
                    members: int) -> dict[str, Any]:
    """Per outer fold: the variant `choose` picks there, trained as `members` copies on the
    fold's training groups (engines.live_fit.fit_frontend), scored on its test groups."""
    torch.set_num_threads(1)
    by_name = {s["config"]: s for s in scores}
    picks = choose(scores)["per_fold"]
    loaded: dict[str, tuple[LiveTrainConfig, dict[str, Any], LiveModelConfig]] = {}
    rows = []
    for pick in picks:
        k, name = pick["fold"], pick["chosen"]
        if name not in loaded:  # folds often share a pick: featurise its data once
            cfg = with_overrides(base, [*by_name[name].get("overrides", []),
                                        f"model.frontend_members.{modality}={members}"])
            data, tok, _ = load_data(cfg)
            loaded[name] = cfg, data, LiveModelConfig(**{**cfg.model, "text_vocab": tok.n_ids})
        cfg, data, lm_cfg = loaded[name]
        fold = cross_validate(modality, data[modality], lm_cfg, cfg, only_folds=[k])["folds"][0]
        rows.append({"fold": k, "chosen": name, "test_ua": fold["ua"],
                     "single_copy_test_ua": pick["test_ua"]})
        print(f"[ensemble of {members}] outer fold {k} ({name}): test UA {fold['ua']:.3f} "
              f"(one copy {pick['test_ua']:.3f})", flush=True)
    tests = [r["test_ua"] for r in rows]
    return {"members": members, "modality": modality, "per_fold": rows,
            "nested_test_ua": {"mean": float(np.mean(tests)), "std": float(np.std(tests))}}


def choose(scores: list[dict[str, Any]]) -> dict[str, Any]:
    """Per outer fold, the variant with the best inner UA; the nested estimate; the pick."""
    n_folds = len(scores[0]["folds"])
    if any(len(s["folds"]) != n_folds for s in scores):
        raise ValueError("every variant must be scored on the same outer folds")
    per_fold = []
    for k in range(n_folds):
        best = max(scores, key=lambda s: s["folds"][k]["inner_ua"])
        per_fold.append({"fold": k, "chosen": best["config"],
                         "test_ua": best["folds"][k]["test_ua"]})
    mean_inner = {s["config"]: float(np.mean([f["inner_ua"] for f in s["folds"]]))
                  for s in scores}
    all_groups = {s["config"]: float(np.mean([f["test_ua"] for f in s["folds"]])) for s in scores}
    tests = [f["test_ua"] for f in per_fold]
    return {"nested_test_ua": {"mean": float(np.mean(tests)), "std": float(np.std(tests))},
            "per_fold": per_fold, "mean_inner_ua": mean_inner,
            "ship": max(all_groups, key=lambda c: all_groups[c]),
            "test_ua_per_variant": all_groups}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engines.live_select",
                                 description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("score", help="nested CV of one variant (an edge-train-live TOML)")
    s.add_argument("config", type=Path)
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config field (TOML value); repeatable")
    s.add_argument("--modality", choices=("audio", "video"), default="audio")
    s.add_argument("--out", type=Path, required=True, help="JSON; its stem names the variant")
    c = sub.add_parser("choose", help="pick between scored variants")
    c.add_argument("scores", type=Path, nargs="+")
    c.add_argument("--json", type=Path)
    e = sub.add_parser("ensemble", help="nested estimate of shipping copies of the pick")
    e.add_argument("config", type=Path, help="the base TOML the variants were scored from")
    e.add_argument("scores", type=Path, nargs="+")
    e.add_argument("--members", type=int, default=3)
    e.add_argument("--modality", choices=("audio", "video"), default="audio")
    e.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.cmd in ("score", "ensemble"):
        base = LiveTrainConfig.from_toml(args.config)
        if args.cmd == "score":
            result = score(with_overrides(base, args.set), args.modality, args.out.stem, args.set)
        else:
            result = nested_ensemble(base, [json.loads(p.read_text()) for p in args.scores],
                                     args.modality, args.members)
            est = result["nested_test_ua"]
            print(f"nested estimate, {args.members} copies of each fold's pick: "
                  f"UA {est['mean']:.3f} ± {est['std']:.3f}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        return 0
    result = choose([json.loads(p.read_text()) for p in args.scores])
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(f"{'variant':<24}{'mean inner UA':>16}{'UA over all groups':>20}  outer folds won")
    for name, inner in sorted(result["mean_inner_ua"].items(), key=lambda kv: -kv[1]):
        won = [f["fold"] for f in result["per_fold"] if f["chosen"] == name]
        print(f"{name:<24}{inner:>16.3f}{result['test_ua_per_variant'][name]:>20.3f}  {won}")
    est = result["nested_test_ua"]
    print(f"nested estimate (selection included): UA {est['mean']:.3f} ± {est['std']:.3f}; "
          f"ship {result['ship']} (its {result['test_ua_per_variant'][result['ship']]:.3f} over "
          "all groups is optimistic: it is the maximum)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
