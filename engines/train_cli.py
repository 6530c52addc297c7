"""`edge-train CONFIG.toml`: data plugin -> splits -> (hyperparameter search on validation) ->
two-stage training -> checkpoint + resolved config + metrics + predictions, saved together.

Config layout (see engines/configs/*.toml):
    out_dir = "runs/ravdess_cv/momke"
    seed = 0
    [data]    dataset = "ravdess" | "synthetic" | ... plus the plugin's own keys
    [model]   kind = "momke" | "unimodal" | "early_fusion" | "late_fusion", plus model args
    [train]   TrainConfig fields
    [search]  optional: "model.width" = [32, 64], "train.lr" = [...]: every combination is
              trained on each split's training part and the best mean-over-patterns validation
              accuracy wins (never the test part).
Outputs in out_dir: config.resolved.json, metrics.json, and per split SPLIT/checkpoint.pt,
SPLIT/predictions.npz (val/test logits + labels per availability pattern), SPLIT/history.json.
A dataset plugin is `prepare(data_cfg: dict, seed: int) -> PreparedData`, registered in DATASETS.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import sys
import tomllib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from engines.backend import pattern_key
from engines.baselines import EarlyFusion, Ensemble, build_model, save_model
from engines.metrics import classification_metrics, softmax
from engines.train import Batch, TrainConfig, all_patterns, predict_patterns, train_two_stage

DATASETS: dict[str, str] = {
    "synthetic": "engines.synthetic:prepare",
    "ravdess": "engines.ravdess:prepare",
}


@dataclass(frozen=True, kw_only=True)
class Split:
    name: str
    train: Iterable[Batch]
    val: Iterable[Batch] | None
    test: Iterable[Batch] | None = None
    train_and_val: Iterable[Batch] | None = None  # for the refit after selection (see run_config)
    raw_zero: dict[str, Tensor] | None = None  # features of an all-zero raw input, per modality
    normalisation: dict[str, Any] | None = None  # what the loader applied (for export/eval)
    # Inner folds over train + val (each with its own validation groups): when given, selection
    # (candidate, epochs) is made on all of them instead of on `val` alone, and the refit is
    # mandatory (see select_on_inner_folds).
    inner: list[Split] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class PreparedData:
    modalities: tuple[str, ...]
    input_dims: dict[str, int]
    labels: tuple[str, ...]
    splits: list[Split]
    meta: dict[str, Any] = field(default_factory=dict)


def load_dataset(data_cfg: dict[str, Any], seed: int) -> PreparedData:
    name = data_cfg.get("dataset", "")
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    module, attr = DATASETS[name].split(":")
    data: PreparedData = getattr(importlib.import_module(module), attr)(data_cfg, seed)
    return data


def candidates(search: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = sorted(search)
    for k in keys:
        if k.split(".")[0] not in ("model", "train") or not isinstance(search[k], list):
            raise ValueError(f"search key {k!r} must be model.X or train.X with a list of values")
    return [
        dict(zip(keys, combo, strict=True))
        for combo in itertools.product(*(search[k] for k in keys))
    ]


def _apply(base: dict[str, Any], cand: dict[str, Any], section: str) -> dict[str, Any]:
    out = dict(base)
    out.update({k.split(".", 1)[1]: v for k, v in cand.items() if k.startswith(section + ".")})
    return out


def pattern_predictions(
    model: nn.Module, batches: Iterable[Batch], modalities: tuple[str, ...], stage: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """pattern key -> (logits, labels); absent classes' logits pushed to -1e4."""
    preds = predict_patterns(model, batches, stage, all_patterns(len(modalities)))  # type: ignore[arg-type]
    out = {}
    for p, (logits, labels, label_mask) in preds.items():
        key = pattern_key([modalities[i] for i in p])
        out[key] = (np.where(label_mask, logits, -1e4), labels)
    return out


def mean_accuracy(preds: dict[str, tuple[np.ndarray, np.ndarray]]) -> float:
    return float(np.mean([(lg.argmax(1) == y).mean() for lg, y in preds.values()]))


def train_split(
    split: Split, data: PreparedData, kind: str, model_args: dict[str, Any], tcfg: TrainConfig
) -> tuple[nn.Module, dict[str, Any]]:
    torch.manual_seed(tcfg.seed)
    model = build_model(
        kind,
        model_args,
        modalities=data.modalities,
        input_dims=data.input_dims,
        n_classes=len(data.labels),
    )
    if isinstance(model, EarlyFusion):
        model.fit_fill(split.train, split.raw_zero)
    result = train_two_stage(model, split.train, split.val, tcfg)  # type: ignore[arg-type]
    return model, {
        "best_epoch": result.best_epoch,
        "val_score": result.val_score,
        "seconds": result.seconds,
        "history": result.history,
    }


def train_members(
    split: Split,
    data: PreparedData,
    kind: str,
    model_args: dict[str, Any],
    tcfg: TrainConfig,
    n: int,
    member_cfgs: list[TrainConfig] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """n members with seeds seed..seed+n-1 (or the given per-member configs); n=1: one model."""
    cfgs = member_cfgs or [replace(tcfg, seed=tcfg.seed + i) for i in range(n)]
    models, infos = [], []
    for c in cfgs:
        m, info = train_split(split, data, kind, model_args, c)
        models.append(m)
        infos.append(info)
    if len(models) == 1:
        return models[0], {**infos[0], "member_best_epochs": [infos[0]["best_epoch"]]}
    return Ensemble(models), {
        "best_epoch": infos[0]["best_epoch"],
        "member_best_epochs": [i["best_epoch"] for i in infos],
        "val_score": infos[0]["val_score"],
        "seconds": sum(i["seconds"] for i in infos),
        "history": infos[0]["history"],
    }


def median_epochs(per_fold: list[dict[str, int]]) -> dict[str, int]:
    """Best epochs of one recipe on several inner folds -> the median per stage / modality."""
    return {k: int(round(float(np.median([e[k] for e in per_fold])))) for k in per_fold[0]}


def select_on_inner_folds(
    split: Split,
    data: PreparedData,
    kind: str,
    cands: list[tuple[dict[str, Any], TrainConfig, dict[str, Any]]],
    n_members: int,
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Every candidate trained on every inner fold (early stopping on that fold's validation
    groups). The best mean validation score over the inner folds wins, and its epochs are the
    median over them: with 3-actor validation sets one fold's choice is mostly noise, five
    folds' is not. Returns (tried, info of the winner, its validation predictions pooled over
    the inner folds): every training group's clips scored by a model that did not train on
    them, which is what the temperatures are then fitted on (5x the clips of one fold)."""
    tried: list[dict[str, Any]] = []
    best: tuple[float, dict[str, Any], dict[str, tuple[np.ndarray, np.ndarray]]] | None = None
    for cand, tcfg, margs in cands:
        scores: list[float] = []
        epochs: list[list[dict[str, int]]] = []
        per_fold: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        for fold in split.inner:
            assert fold.val is not None
            print(f"[{fold.name}] {kind} {cand or ''}", file=sys.stderr)
            model, info = train_members(fold, data, kind, margs, tcfg, n_members)
            preds = pattern_predictions(model, fold.val, data.modalities, tcfg.eval_stage)
            scores.append(mean_accuracy(preds))
            epochs.append(info["member_best_epochs"])
            for key, pair in preds.items():
                per_fold.setdefault(key, []).append(pair)
        pooled = {
            key: (np.concatenate([lg for lg, _ in pairs]), np.concatenate([y for _, y in pairs]))
            for key, pairs in per_fold.items()
        }
        score = float(np.mean(scores))
        tried.append({"candidate": cand, "val_mean_accuracy": score, "inner_scores": scores})
        members = [median_epochs([fold[i] for fold in epochs]) for i in range(n_members)]
        info = {
            "best_epoch": members[0],
            "member_best_epochs": members,
            "inner_best_epochs": epochs,
            "val_score": score,
            "model_args": margs,
            "train": asdict(tcfg),
            "candidate": cand,
        }
        if best is None or score > best[0]:
            best = (score, info, pooled)
    assert best is not None
    return tried, best[1], best[2]


def select_on_val(
    split: Split,
    data: PreparedData,
    kind: str,
    cands: list[tuple[dict[str, Any], TrainConfig, dict[str, Any]]],
    n_members: int,
) -> tuple[list[dict[str, Any]], nn.Module, dict[str, Any]]:
    """Every candidate trained on the split's training part; the best mean-over-patterns
    accuracy on its validation part wins (the first candidate when there is no validation)."""
    tried: list[dict[str, Any]] = []
    best: tuple[float, nn.Module, dict[str, Any]] | None = None
    for cand, tcfg, margs in cands:
        print(f"[{split.name}] {kind} {cand or ''}", file=sys.stderr)
        model, info = train_members(split, data, kind, margs, tcfg, n_members)
        score = (
            mean_accuracy(pattern_predictions(model, split.val, data.modalities, tcfg.eval_stage))
            if split.val is not None
            else float("nan")
        )
        tried.append({"candidate": cand, "val_mean_accuracy": score})
        info.update(model_args=margs, train=asdict(tcfg), candidate=cand)
        if best is None or score > best[0]:
            best = (score, model, info)
    assert best is not None
    return tried, best[1], best[2]


def fixed_epochs(best_epoch: dict[str, int], tcfg: TrainConfig) -> TrainConfig:
    """The selected epochs as a no-validation recipe: stage 1 per modality, stage 2 overall."""
    by_mod = {k.split(":", 1)[1]: e + 1 for k, e in best_epoch.items() if k.startswith("stage1:")}
    return replace(
        tcfg,
        stage1_epochs=max(by_mod.values(), default=tcfg.stage1_epochs),
        stage1_epochs_by_modality=by_mod,
        stage2_epochs=best_epoch.get("stage2", tcfg.stage2_epochs - 1) + 1,
    )


def run_config(cfg: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Everything edge-train does, as one typed function (tests call it through the CLI)."""
    seed = int(cfg.get("seed", 0))
    # One intra-op thread: these models are tiny, and on a shared 2-core box more threads
    # only contend (measured: 7x slower per epoch with 2 threads under load).
    torch.set_num_threads(int(cfg.get("threads", 1)))
    data = load_dataset(cfg["data"], seed)
    model_base = dict(cfg.get("model", {}))
    kind = model_base.pop("kind", "momke")
    train_base = dict(cfg.get("train", {}), seed=seed)
    cands = candidates(cfg.get("search", {}))
    n_members = int(cfg.get("ensemble", 1))
    out_dir.mkdir(parents=True, exist_ok=True)
    resolved = {
        **cfg,
        "out_dir": str(out_dir),
        "resolved": {
            "train": asdict(TrainConfig(**train_base)),
            "model_kind": kind,
            "modalities": list(data.modalities),
            "input_dims": data.input_dims,
            "labels": list(data.labels),
            "data_meta": data.meta,
            "candidates": cands,
        },
    }
    (out_dir / "config.resolved.json").write_text(json.dumps(resolved, indent=2, default=str))
    summary: dict[str, Any] = {"splits": {}}
    for split in data.splits:
        if len(cands) > 1 and split.val is None:
            raise ValueError("a hyperparameter search needs validation data")
        recipes = [
            (c, TrainConfig(**_apply(train_base, c, "train")), _apply(model_base, c, "model"))
            for c in cands
        ]
        val_preds: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        model: nn.Module | None
        if split.inner:
            if not cfg.get("refit", False) or split.train_and_val is None:
                raise ValueError("inner-fold selection needs refit = true (no model is kept)")
            tried, info, val_preds = select_on_inner_folds(split, data, kind, recipes, n_members)
            model = None
        else:
            tried, model, info = select_on_val(split, data, kind, recipes, n_members)
        margs = info["model_args"]
        split_metrics: dict[str, Any] = {"search": tried}
        test_model = model
        if cfg.get("refit", False) and split.train_and_val is not None:
            # Selection is done; refit the chosen recipe on train + validation with the selected
            # epochs (no early stopping), exactly how the shipped model is made from all actors.
            # Val predictions (for temperatures) stay those of the selected, non-refit model(s).
            chosen = TrainConfig(**info["train"])
            fixed = [
                replace(fixed_epochs(e, chosen), seed=chosen.seed + i)
                for i, e in enumerate(info["member_best_epochs"])
            ]
            print(f"[{split.name}] refit on train+val {info['best_epoch']}", file=sys.stderr)
            refit = Split(
                name=split.name, train=split.train_and_val, val=None, raw_zero=split.raw_zero
            )
            test_model, refit_info = train_members(
                refit, data, kind, margs, chosen, len(fixed), member_cfgs=fixed
            )
            split_metrics["refit"] = {
                "train": [asdict(f) for f in fixed],
                "seconds": refit_info["seconds"],
            }
        assert test_model is not None
        split_dir = out_dir / split.name
        split_dir.mkdir(exist_ok=True)
        meta = {
            "kind": kind,
            "model_args": margs,
            "modalities": list(data.modalities),
            "input_dims": data.input_dims,
            "n_classes": len(data.labels),
            "labels": list(data.labels),
            "normalisation": split.normalisation,
            "data_config": cfg["data"],
            "data_meta": data.meta,
            "eval_stage": TrainConfig(**info["train"]).eval_stage,
            "ensemble": n_members,
            # the recipe that trained these weights (the refit's fixed epochs when refit)
            "train_config": split_metrics.get("refit", {}).get("train", [info["train"]])[0],
        }
        save_model(split_dir / "checkpoint.pt", test_model, meta)
        (split_dir / "meta.json").write_text(json.dumps(meta, indent=2))
        (split_dir / "history.json").write_text(json.dumps(info.pop("history", []), indent=1))
        split_metrics.update(info)
        if model is not None and split.val is not None:
            val_preds = pattern_predictions(model, split.val, data.modalities, meta["eval_stage"])
        parts = {"val": val_preds}
        if split.test is not None:
            parts["test"] = pattern_predictions(
                test_model, split.test, data.modalities, meta["eval_stage"]
            )
        arrays: dict[str, np.ndarray] = {}
        for part, preds in parts.items():
            for key, (logits, labels) in preds.items():
                arrays[f"{part}/{key}/logits"] = logits
                arrays[f"{part}/{key}/labels"] = labels
                split_metrics.setdefault(part, {})[key] = classification_metrics(
                    softmax(logits), labels
                )
        if arrays:
            np.savez(split_dir / "predictions.npz", **arrays)  # type: ignore[arg-type]
        summary["splits"][split.name] = split_metrics
    summary["test_mean_std"] = aggregate([s.get("test", {}) for s in summary["splits"].values()])
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary


def aggregate(per_split: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, list[float]]]:
    """pattern -> metric -> [mean, std] over splits (population std, as sklearn reports)."""
    out: dict[str, dict[str, list[float]]] = {}
    patterns = sorted({p for s in per_split for p in s})
    for p in patterns:
        rows = [s[p] for s in per_split if p in s]
        out[p] = {
            k: [float(np.mean([r[k] for r in rows])), float(np.std([r[k] for r in rows]))]
            for k in rows[0]
        }
    return out


def merge_runs(out_dir: Path, runs: list[Path]) -> dict[str, Any]:
    """Runs of one config over disjoint splits (`--set data.folds=[k]`, one per core) -> one run
    directory, as if trained in one go: split dirs copied, metrics merged and re-aggregated."""
    import shutil

    summary: dict[str, Any] = {"splits": {}}
    for run in runs:
        for name, split_metrics in json.loads((run / "metrics.json").read_text())["splits"].items():
            if name in summary["splits"]:
                raise ValueError(f"split {name} is in more than one run")
            summary["splits"][name] = split_metrics
            shutil.copytree(run / name, out_dir / name, dirs_exist_ok=True)
    summary["splits"] = dict(sorted(summary["splits"].items()))
    summary["test_mean_std"] = aggregate([s.get("test", {}) for s in summary["splits"].values()])
    resolved = json.loads((runs[0] / "config.resolved.json").read_text())
    resolved["data"] = {k: v for k, v in resolved["data"].items() if k != "folds"}
    resolved.update(out_dir=str(out_dir), merged_from=[str(r) for r in runs])
    (out_dir / "config.resolved.json").write_text(json.dumps(resolved, indent=2, default=str))
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary


def print_table(summary: dict[str, Any]) -> None:
    agg = summary.get("test_mean_std", {})
    if not agg:
        return
    print(f"{'pattern':<14}{'accuracy':>16}{'ua':>16}{'macro_f1':>16}{'ece':>16}")
    for p, m in agg.items():
        cells = "".join(
            f"{m[k][0]:>9.3f} ± {m[k][1]:.3f}" for k in ("accuracy", "ua", "macro_f1", "ece")
        )
        print(f"{p:<14}{cells}")


def read_config(path: Path) -> dict[str, Any]:
    """TOML with an optional `base = "other.toml"` (relative to this file) merged underneath."""
    cfg = tomllib.loads(path.read_text())
    base_name = cfg.pop("base", None)
    if base_name is None:
        return cfg
    merged = read_config(path.parent / base_name)
    for key, value in cfg.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def run_cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="edge-train", description=__doc__.split("\n")[0])
    ap.add_argument("config", type=Path, help="TOML config (see engines/configs/)")
    ap.add_argument("--out", type=Path, default=None, help="override out_dir")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=JSON",
        help="override one config value, e.g. --set train.stage1_epochs=3",
    )
    ap.add_argument(
        "--search",
        action="append",
        default=[],
        metavar="SECTION.KEY=JSON_LIST",
        help="add a [search] axis chosen per split on validation, e.g. "
        "--search model.width=[32,64]",
    )
    args = ap.parse_args(argv)
    try:
        cfg = read_config(args.config)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        print(f"edge-train: cannot read {args.config}: {exc}", file=sys.stderr)
        return 2
    for item in args.set:
        key, _, value = item.partition("=")
        section, _, name = key.rpartition(".")
        (cfg.setdefault(section, {}) if section else cfg)[name] = json.loads(value)
    for item in args.search:  # [search] keys are dotted themselves, so --set cannot add them
        key, _, value = item.partition("=")
        cfg.setdefault("search", {})[key] = json.loads(value)
    out_dir = args.out or Path(cfg.get("out_dir", "runs/" + args.config.stem))
    summary = run_config(cfg, out_dir)
    print_table(summary)
    print(f"wrote {out_dir}", file=sys.stderr)
    return 0
