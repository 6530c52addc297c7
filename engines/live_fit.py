"""Training loops and metrics behind `edge-train-live` (engines.live_train holds the recipe)."""

from __future__ import annotations

import copy
import dataclasses
import itertools
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engines.backend import pattern_key
from engines.datasets import LABELS, ModalityData, group_kfold
from engines.frontends import (
    FrontendConfig,
    FrontendEnsemble,
    MiniLMTextFrontend,
    VideoFrontend,
    build_frontend,
    run_frontend,
)
from engines.live import LiveModel, round_large_weights_to_fp16
from engines.metrics import ece_if_calibrated, expected_calibration_error
from engines.train import MoMKETrainable

NEG = -1e4  # logit for a class the sample's dataset does not have


# ----------------------------------------------------------------------------------- metrics
def classification_metrics(labels: np.ndarray, logits: np.ndarray, label_mask: np.ndarray
                           ) -> dict[str, float]:
    """Accuracy, UA (mean recall), macro/weighted F1 over the classes the labels contain.

    Predictions are restricted to the dataset's own label space (`label_mask`).
    """
    pred = np.where(label_mask[None, :], logits, -np.inf).argmax(1)
    classes = np.unique(labels)
    recall, f1, support = [], [], []
    for c in classes:
        tp = np.sum((pred == c) & (labels == c))
        r = tp / max(np.sum(labels == c), 1)
        p = tp / max(np.sum(pred == c), 1)
        recall.append(r)
        f1.append(0.0 if p + r == 0 else 2 * p * r / (p + r))
        support.append(np.sum(labels == c))
    w = np.array(support, float) / max(len(labels), 1)
    return {"accuracy": float(np.mean(pred == labels)), "ua": float(np.mean(recall)),
            "macro_f1": float(np.mean(f1)), "weighted_f1": float(np.dot(w, f1)),
            "n": int(len(labels))}


def masked_ce(logits: Tensor, labels: Tensor, label_mask: Tensor,
              weight: Tensor | None = None, smoothing: float = 0.0) -> Tensor:
    """Cross-entropy over the classes the sample's dataset has; others cannot be negatives.

    `smoothing` spreads that share of the target over the sample's *own* label set only
    (F.cross_entropy's label_smoothing would also target the masked-out classes).
    """
    logits = logits.masked_fill(~label_mask, NEG)
    if smoothing == 0.0:
        return F.cross_entropy(logits, labels, weight=weight)
    logp = F.log_softmax(logits, dim=-1)  # (B, C)
    allowed = label_mask.to(logp.dtype)
    target = (1 - smoothing) * F.one_hot(labels, logp.shape[-1]).to(logp.dtype) \
        + smoothing * allowed / allowed.sum(-1, keepdim=True)
    per_sample = -(target * logp * allowed).sum(-1)  # masked classes carry no target mass
    w = weight[labels] if weight is not None else torch.ones_like(per_sample)
    return (w * per_sample).sum() / w.sum()  # the weighted mean F.cross_entropy takes


def _tensors(d: ModalityData, idx: np.ndarray, trim: bool = True) -> dict[str, Tensor]:
    """A batch of one dataset, trimmed to its longest real sequence.

    Trailing padding never changes a causal, masked model's output, so dropping it is exact and
    saves most of the work on short utterances.
    """
    out = {k: torch.from_numpy(v[idx]) for k, v in d.inputs.items()}
    pairs = (("text_ids", "text_mask"), ("video_frames", "video_mask")) if trim else ()
    for ids, mask in pairs:
        if mask in out:
            keep = max(1, int(out[mask].sum(1).max())) if len(idx) else 1
            out[ids], out[mask] = out[ids][:, :keep], out[mask][:, :keep]
    return out


# ------------------------------------------------------------------------------ augmentation
AUGMENTATIONS = {"audio": ("standard", "warp"), "video": ("standard", "flip"),
                 "text": ("standard",)}


def augment(m: str, x: dict[str, Tensor], gen: torch.Generator, kind: str = "standard"
            ) -> dict[str, Tensor]:
    """Label-preserving noise; mild, because the sets are small and the signal is subtle.

    `kind` (AUGMENTATIONS): audio "warp" = "standard" plus a random stretch of the mel axis
    (vocal-tract-length perturbation: EmoDB has 7 training speakers, and a longer or shorter
    vocal tract moves every formant by one factor); video "flip" = mirror only, which maps a
    HOG cell onto a cell, where shifts would blur them.
    """
    if kind not in AUGMENTATIONS[m]:
        raise ValueError(f"{m} augmentation must be one of {AUGMENTATIONS[m]}, got {kind!r}")
    x = dict(x)
    if m == "audio":
        mel = x["audio_logmel"].clone()  # (B, 40, 198)
        b, n_mel, t = mel.shape
        if kind == "warp":
            mel = warp_mel_axis(mel, torch.empty(b).uniform_(0.9, 1.1, generator=gen))
        for i in range(b):
            shift = int(torch.randint(-30, 31, (1,), generator=gen))
            mel[i] = torch.roll(mel[i], shift, dims=1)
            t0 = int(torch.randint(0, t - 20, (1,), generator=gen))
            mel[i, :, t0:t0 + int(torch.randint(0, 20, (1,), generator=gen))] = mel[i].mean()
            f0 = int(torch.randint(0, n_mel - 5, (1,), generator=gen))
            mel[i, f0:f0 + int(torch.randint(0, 5, (1,), generator=gen))] = mel[i].mean()
        mel += torch.empty(b, 1, 1).uniform_(-1.0, 1.0, generator=gen)  # gain in log domain
        x["audio_logmel"] = mel
    elif m == "video":
        frames = x["video_frames"].clone()  # (B, T, 48, 48)
        flip = torch.rand(frames.shape[0], generator=gen) < 0.5
        frames[flip] = frames[flip].flip(-1)
        if kind == "flip":
            x["video_frames"] = frames
            return x
        dy, dx = (int(v) for v in torch.randint(-3, 4, (2,), generator=gen))
        frames = torch.roll(frames, (dy, dx), dims=(2, 3))
        scale = torch.empty(frames.shape[0], 1, 1, 1).uniform_(0.8, 1.2, generator=gen)
        offset = torch.empty(frames.shape[0], 1, 1, 1).uniform_(-0.3, 0.3, generator=gen)
        x["video_frames"] = frames * scale + offset
    else:
        ids = x["text_ids"].clone()
        drop = (torch.rand(ids.shape, generator=gen) < 0.1) & x["text_mask"]
        ids[drop] = 1  # unknown-word id: robustness to ASR errors and unseen words
        x["text_ids"] = ids
    return x


def warp_mel_axis(mel: Tensor, factor: Tensor) -> Tensor:
    """(B, n_mels, T) log-mel with band i read from band i / factor[b] (linear interpolation,
    edges held): factor > 1 moves the spectrum up, as a shorter vocal tract does."""
    n_mel = mel.shape[1]
    src = (torch.arange(n_mel, dtype=mel.dtype)[None] / factor[:, None]).clamp(0, n_mel - 1)
    lo = src.floor().long()  # (B, n_mels)
    hi = (lo + 1).clamp(max=n_mel - 1)
    w = (src - lo.to(mel.dtype))[:, :, None]  # (B, n_mels, 1)

    def bands(idx: Tensor) -> Tensor:  # (B, n_mels) band indices -> (B, n_mels, T)
        return mel.gather(1, idx[:, :, None].expand(-1, -1, mel.shape[2]))

    return bands(lo) * (1 - w) + bands(hi) * w


# ------------------------------------------------------------------------------- front-ends
def predict_frontend(fe: nn.Module, m: str, d: ModalityData, batch: int = 128) -> np.ndarray:
    fe.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(d), batch):
            idx = np.arange(s, min(s + batch, len(d)))
            tokens, mask = run_frontend(fe, m, _tensors(d, idx))
            out.append(fe.forward_head(tokens, mask).numpy())  # type: ignore[operator]
    return np.concatenate(out) if out else np.zeros((0, len(LABELS)), np.float32)


MEMBER_SEED_STRIDE = 1_000_003  # member j of an ensemble trains from seed + j * stride


def fit_frontend(m: str, fcfg: FrontendConfig, train: ModalityData, val: ModalityData,
                 **options: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Train front-end + pooled head (`_fit_one`); with `fcfg.members` > 1, that many copies
    apart, from different seeds on the same data, as one FrontendEnsemble.

    Member 0 starts from the caller's torch seed, so it is exactly the single-copy model.
    """
    how = options.pop("fit", "sgd")
    if how not in FITS:
        raise ValueError(f"fit must be one of {FITS}, got {how!r}")
    if how == "logistic":
        if m != "video" or fcfg.members != 1:
            raise ValueError("the logistic fit is for one HOG face front-end")
        return _fit_hog_logistic(fcfg, train, val, **options)
    if fcfg.members == 1:
        return _fit_one(m, fcfg, train, val, **options)
    seed = torch.initial_seed() % 2**62
    one = dataclasses.replace(fcfg, members=1)
    members, infos = [], []
    for j in range(fcfg.members):
        torch.manual_seed(seed + j * MEMBER_SEED_STRIDE)
        fe, info = _fit_one(m, one, train, val, **options)
        members.append(fe)
        infos.append(info)
    ensemble = FrontendEnsemble(members).eval()
    val_metrics = classification_metrics(val.labels, predict_frontend(ensemble, m, val),
                                         val.label_mask)
    return ensemble, {"best_epoch": [i["best_epoch"] for i in infos], "best_val": val_metrics,
                      "member_val_ua": [i["best_val"]["ua"] for i in infos]}


SCHEDULES = ("onecycle", "warmup-linear")


LOGISTIC_C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
FITS = ("sgd", "logistic")


def _mean_hog(hog: nn.Module, d: ModalityData, mirror: bool = False) -> np.ndarray:
    """(N, F): each sample's HOG features averaged over its real crops. The face front-end is
    linear after HOG and its head reads the mean token, so this mean is all the head sees."""
    frames = d.inputs["video_frames"]  # (N, T, 48, 48)
    mask = d.inputs["video_mask"].astype(np.float32)  # (N, T)
    if mirror:
        frames = frames[..., ::-1]
    n, t, h, w = frames.shape
    with torch.no_grad():
        feats = hog(torch.from_numpy(np.ascontiguousarray(frames, np.float32)
                                     .reshape(n * t, 1, h, w))).numpy().reshape(n, t, -1)
    return (feats * mask[..., None]).sum(1) / np.maximum(mask.sum(1), 1.0)[:, None]


def _fit_hog_logistic(fcfg: FrontendConfig, train: ModalityData, val: ModalityData, *,
                      class_weight_power: float = 1.0, augmentation: str = "flip",
                      inner_folds: int = 5, **_: Any) -> tuple[nn.Module, dict[str, Any]]:
    """The HOG face front-end fitted as a convex problem instead of by SGD.

    HOG is fixed and the rest (map, mean over crops, head) is linear, so the front-end is a
    linear classifier on mean HOG features: fitted here as L2 logistic regression to
    convergence, C chosen by `inner_folds`-fold grouped CV on the training groups only (UA),
    training crops plus their mirrors (unless `augmentation` is "none"), class weights
    (n / n_c) ** power. The coefficients become the map's rows at the class indices (token
    dims 0..6 = class scores, the rest 0) and the head reads them back (its spread half is 0).
    CK+48 10-fold-by-subject, nested: UA 0.872 vs 0.815 by SGD (bench/ckplus_hog_lr.py).
    """
    from sklearn.linear_model import LogisticRegression

    if "hog" not in fcfg.video_branches or "cnn" in fcfg.video_branches:
        raise ValueError("the logistic fit needs the HOG-only face front-end")
    if fcfg.dim < len(LABELS):
        raise ValueError(f"the logistic fit needs token dim >= {len(LABELS)}")
    fe = build_frontend("video", fcfg)
    assert isinstance(fe, VideoFrontend) and fe.hog is not None
    hog, linear, head = fe.hog[0], fe.hog[2], fe.head[1]
    assert isinstance(linear, nn.Linear) and isinstance(head, nn.Linear)
    x, y = _mean_hog(hog, train), train.labels
    x_aug = _mean_hog(hog, train, mirror=True) if augmentation != "none" else None
    counts = np.bincount(y, minlength=len(LABELS)).astype(np.float64)
    weights = {int(c): float((counts.sum() / counts[c] / len(LABELS)) ** class_weight_power)
               for c in np.unique(y)}

    def fit(idx: np.ndarray, c: float) -> LogisticRegression:
        xs, ys = [x[idx]], [y[idx]]
        if x_aug is not None:
            xs.append(x_aug[idx])
            ys.append(y[idx])
        return LogisticRegression(C=c, class_weight=weights, max_iter=3000).fit(
            np.concatenate(xs), np.concatenate(ys))

    inner = group_kfold(train.groups, inner_folds)
    every = np.arange(len(y))
    inner_ua = {c: float(np.mean([
        classification_metrics(y[v], _scores(fit(np.setdiff1d(every, v), c), x[v]),
                               train.label_mask)["ua"] for v in inner]))
        for c in LOGISTIC_C_GRID}
    pick = max(LOGISTIC_C_GRID, key=lambda c: inner_ua[c])
    lr = fit(every, pick)
    with torch.no_grad():
        for p in (linear.weight, linear.bias, head.weight):
            p.zero_()
        head.bias.fill_(NEG)  # a class the fit never saw has no score (its dims stay 0)
        for k, c in enumerate(lr.classes_):
            linear.weight[int(c)] = torch.from_numpy(lr.coef_[k].astype(np.float32))
            linear.bias[int(c)] = float(lr.intercept_[k])
            head.weight[int(c), int(c)] = 1.0
            head.bias[int(c)] = 0.0
    fe.eval()
    val_metrics = classification_metrics(val.labels, predict_frontend(fe, "video", val),
                                         val.label_mask)
    return fe, {"best_epoch": None, "best_val": val_metrics, "picked_c": pick,
                "inner_ua": {str(c): u for c, u in inner_ua.items()}}


def _scores(lr: Any, x: np.ndarray) -> np.ndarray:
    """(N, len(LABELS)) class scores of a fitted LogisticRegression; absent classes -inf."""
    out = np.full((len(x), len(LABELS)), -np.inf)
    out[:, lr.classes_.astype(int)] = lr.decision_function(x)
    return out


def _fit_one(m: str, fcfg: FrontendConfig, train: ModalityData, val: ModalityData, *,
             epochs: int, lr: float, batch_size: int, weight_decay: float,
             select_on: str = "ua", class_weight_power: float = 1.0,
             augmentation: str = "standard", label_smoothing: float = 0.0,
             schedule: str = "onecycle", grad_clip: float = 0.0, head_lr: float = 0.0,
             average_from: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    """Train one front-end + pooled head; keep the epoch with the best validation `select_on`.

    Class weights (n / n_c) ** power: 1 = balanced (UA targets), 0.5 = milder (weighted-F1).
    `augmentation`: "none", or a kind of `augment` for this modality.
    The pretrained text encoder (MiniLMTextFrontend) starts from its pinned weights; `schedule`
    "warmup-linear" (10 % linear warm-up, then linear decay to 0) and `grad_clip` (max gradient
    norm, 0 = off) are the usual BERT fine-tuning recipe, "onecycle" the from-scratch one;
    `head_lr` (0 = `lr`) is the rate of a pretrained front-end's new layers (its map and head).
    `average_from` (0 = off): the mean of the end-of-epoch weights from that epoch on (tail
    weight averaging, as in stochastic weight averaging) is one more candidate, kept only if
    validation prefers it to every single epoch. Not for BatchNorm front-ends, whose running
    statistics an average of weights does not match.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if not 0 <= average_from <= epochs:
        raise ValueError(f"average_from must be 0 (off) or an epoch in 1..{epochs}")
    fe = build_frontend(m, fcfg)
    if average_from and any(isinstance(x, nn.modules.batchnorm._BatchNorm)
                            for x in fe.modules()):
        raise ValueError(f"weight averaging needs a front-end without BatchNorm ({m} has it)")
    pretrained = fe if isinstance(fe, MiniLMTextFrontend) else None
    groups: list[dict[str, Any]] = [{"params": list(fe.parameters()), "lr": lr}]
    if pretrained is not None:
        pretrained.load_pretrained()
        if head_lr > 0:
            encoder = {id(p) for p in pretrained.encoder.parameters()}
            groups = [{"params": list(pretrained.encoder.parameters()), "lr": lr},
                      {"params": [p for p in fe.parameters() if id(p) not in encoder],
                       "lr": head_lr}]
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    steps = epochs * max(1, -(-len(train) // batch_size))
    sched: torch.optim.lr_scheduler.LRScheduler
    if schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups],
                                                    total_steps=steps)
    else:
        warm = max(1, steps // 10)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm))))
    counts = np.bincount(train.labels, minlength=len(LABELS)).astype(np.float64)
    ratio = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / len(LABELS), 0.0)
    weight = torch.tensor(ratio ** class_weight_power, dtype=torch.float32)
    label_mask = torch.from_numpy(train.label_mask)[None]
    gen = torch.Generator().manual_seed(int(torch.initial_seed()) % (2**31))

    def validate() -> dict[str, Any]:
        return classification_metrics(val.labels, predict_frontend(fe, m, val), val.label_mask)

    best: dict[str, Any] = {"score": -1.0}  # the kept state's validation `select_on`
    val_per_epoch: dict[int, float] = {}
    average: dict[str, Tensor] = {}  # running mean of the end-of-epoch weights (average_from)
    for epoch in range(1, epochs + 1):
        fe.train()
        order = torch.randperm(len(train), generator=gen).numpy()
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            if idx.size < 2:
                continue  # BatchNorm needs two samples
            x = _tensors(train, idx)
            if augmentation != "none":
                x = augment(m, x, gen, augmentation)
            tokens, mask = run_frontend(fe, m, x)
            logits = fe.forward_head(tokens, mask)  # type: ignore[operator]
            y = torch.from_numpy(train.labels[idx])
            loss = masked_ce(logits, y, label_mask.expand(len(idx), -1), weight,
                             label_smoothing)
            opt.zero_grad()
            loss.backward()
            if grad_clip > 0:
                nn.utils.clip_grad_norm_(fe.parameters(), grad_clip)
            opt.step()
            sched.step()
        val_metrics = validate()
        val_per_epoch[epoch] = val_metrics[select_on]
        if val_metrics[select_on] > best["score"]:
            best = {"score": val_metrics[select_on], "epoch": epoch, "metrics": val_metrics,
                    "state": copy.deepcopy(fe.state_dict())}
        if average_from and epoch >= average_from:
            n = epoch - average_from  # states averaged so far
            with torch.no_grad():
                for k, v in fe.state_dict().items():
                    average[k] = (v.detach().clone() if n == 0 or not v.is_floating_point()
                                  else average[k] + (v - average[k]) / (n + 1))
    val_average = None
    if average:
        fe.load_state_dict(average)
        val_metrics = validate()
        val_average = val_metrics[select_on]
        if val_average > best["score"]:
            best = {"score": val_average, "epoch": epochs, "metrics": val_metrics,
                    "state": average, "averaged": list(range(average_from, epochs + 1))}
    fe.load_state_dict(best["state"])
    fe.eval()
    if pretrained is not None:
        # Stored in FP16 (engines.live.round_large_weights_to_fp16); the validation numbers
        # are those of the rounded weights, the ones that ship.
        round_large_weights_to_fp16(fe)
        best["metrics"] = validate()
    return fe, {"best_epoch": best["epoch"], "best_val": best["metrics"],
                "averaged_epochs": best.get("averaged"), "val_per_epoch": val_per_epoch,
                "val_average": val_average}


# ------------------------------------------------------------------------------ MoMKE stages
def encode_all(model: LiveModel, data: dict[str, ModalityData]
               ) -> dict[str, tuple[Tensor, Tensor]]:
    """Frozen front-ends -> tokens (n, T, D) and token masks (n, T) for every sample."""
    out = {}
    with torch.no_grad():
        for m in model.cfg.modalities:
            fe, d = model.frontends[m], data[m]
            fe.eval()
            parts = [run_frontend(fe, m, _tensors(d, np.arange(s, min(s + 256, len(d))), False))
                     for s in range(0, len(d), 256)]
            out[m] = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    return out


class TripleSampler:
    """SYNTHETIC tri-modal samples: one sample per present modality, all with the same label.

    A pattern may only include modalities whose dataset has the label (EmoDB has no surprise,
    CK+ no neutral); the label mask is the intersection of the present datasets' label sets.
    """

    def __init__(self, data: dict[str, ModalityData], idx: dict[str, np.ndarray],
                 modalities: tuple[str, ...]) -> None:
        self.modalities = modalities
        self.by_class = {m: {c: idx[m][data[m].labels[idx[m]] == c] for c in range(len(LABELS))}
                         for m in modalities}
        self.masks = {m: data[m].label_mask for m in modalities}

    def patterns_for(self, c: int) -> list[tuple[str, ...]]:
        ok = [m for m in self.modalities if self.by_class[m][c].size]
        return [p for r in range(1, len(ok) + 1) for p in itertools.combinations(ok, r)]

    def draw(self, rng: np.random.Generator, c: int, pattern: tuple[str, ...]
             ) -> tuple[dict[str, int], np.ndarray]:
        picks = {m: int(rng.choice(self.by_class[m][c])) for m in pattern}
        mask = np.logical_and.reduce([self.masks[m] for m in pattern])
        return picks, mask


def _core_batch(tokens: dict[str, tuple[Tensor, Tensor]], modalities: tuple[str, ...],
                rows: list[dict[str, int]]) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor]:
    feats, masks = {}, {}
    present = torch.tensor([[m in r for m in modalities] for r in rows], dtype=torch.bool)
    for i, m in enumerate(modalities):
        if not present[:, i].any():
            continue
        tok, msk = tokens[m]
        idx = torch.tensor([r.get(m, 0) for r in rows])
        mask = msk[idx] & present[:, i, None]
        keep = max(1, int(mask.sum(1).max()))  # trailing padding: exact to drop (causal, masked)
        feats[m] = (tok[idx] * present[:, i, None, None])[:, :keep]
        masks[m] = mask[:, :keep]
    return feats, masks, present


def _mixing_set(sampler: TripleSampler, n_per_pattern: int, seed: int, prior: np.ndarray
                ) -> list[tuple[dict[str, int], int, np.ndarray]]:
    """Validation items per availability pattern.

    A single-modality pattern is simply every validation sample of that dataset (real data, its
    natural label distribution); a multi-modality pattern is `n_per_pattern` SYNTHETIC triples
    whose labels follow `prior` (restricted to the labels every present dataset has).
    """
    rng = np.random.default_rng(seed)
    out = []
    for m in sampler.modalities:
        for c in range(len(LABELS)):
            out += [({m: int(i)}, c, sampler.masks[m]) for i in sampler.by_class[m][c]]
    for r in range(2, len(sampler.modalities) + 1):
        for pattern in itertools.combinations(sampler.modalities, r):
            classes = [c for c in range(len(LABELS)) if pattern in sampler.patterns_for(c)]
            if not classes:
                continue
            p = prior[classes] / prior[classes].sum()
            for _ in range(n_per_pattern):
                c = int(rng.choice(classes, p=p))
                picks, mask = sampler.draw(rng, c, pattern)
                out.append((picks, c, mask))
    return out


def _run_core(model: LiveModel, tokens: dict[str, tuple[Tensor, Tensor]],
              items: list[tuple[dict[str, int], int, np.ndarray]], stage: int = 2
              ) -> Tensor:
    model.core.eval()
    with torch.no_grad():
        outs = []
        for s in range(0, len(items), 256):
            rows = [it[0] for it in items[s:s + 256]]
            feats, masks, present = _core_batch(tokens, model.cfg.modalities, rows)
            outs.append(model.core(feats, masks, present, stage=stage).logits)
    return torch.cat(outs)


def _pattern_scores(model: LiveModel, tokens: dict[str, tuple[Tensor, Tensor]],
                    items: list[tuple[dict[str, int], int, np.ndarray]], stage: int,
                    select_on: dict[str, str]) -> dict[str, float]:
    """Validation score per availability pattern: a lone modality's is the metric its expert is
    selected on (`select_on`: text weighted-F1, audio / video UA), a combination's is UA."""
    logits = _run_core(model, tokens, items, stage).numpy()
    labels = np.array([it[1] for it in items])
    lmask = np.stack([it[2] for it in items])
    keys = np.array([pattern_key(tuple(it[0])) for it in items])
    scores = {}
    for key in dict.fromkeys(keys.tolist()):
        sel = keys == key
        metrics = classification_metrics(labels[sel], logits[sel], lmask[sel].all(0))
        scores[key] = metrics[select_on.get(key, "ua")]
    return scores


def train_core(model: LiveModel, data: dict[str, ModalityData],
               splits: dict[str, tuple[np.ndarray, np.ndarray]], stage1_epochs: int,
               stage2_epochs: int, *, lr: float, batch_size: int, mixing_samples: int,
               val_per_pattern: int, seed: int, select_on: dict[str, str],
               class_prior: np.ndarray | None = None) -> dict[str, Any]:
    """MoMKE stage 1 (own expert per dataset) then stage 2 (mixing on SYNTHETIC triples).

    Stage 1 keeps, per modality, its path (input map, expert, unimodal head) from the epoch
    best on that modality's validation samples by its own `select_on` metric: one shared epoch
    chosen on pooled UA was a compromise that cost the text expert (MELD weighted-F1) most.
    Stage 2 draws a lone-modality sample from its dataset's own label distribution (as the
    validation items of that pattern are: real samples, not prior-drawn SYNTHETIC labels),
    decays its rate along a cosine (later epochs move less, so the choice among them is
    steadier) and keeps the epoch with the best mean over availability patterns of each
    pattern's score (`_pattern_scores`): every pattern counts once, whatever its item count.
    class_prior: label distribution of the SYNTHETIC training triples (None = uniform).
    """
    prior = (np.full(len(LABELS), 1.0 / len(LABELS)) if class_prior is None
             else np.asarray(class_prior, float) / np.sum(class_prior))
    for p in model.frontends.parameters():
        p.requires_grad_(False)
    tokens = encode_all(model, data)
    mods = model.cfg.modalities
    rng = np.random.default_rng(seed)
    train_s = TripleSampler(data, {m: splits[m][0] for m in mods}, mods)
    val_s = TripleSampler(data, {m: splits[m][1] for m in mods}, mods)
    val_items = _mixing_set(val_s, val_per_pattern, seed + 1, prior)
    single_val = [it for it in val_items if len(it[0]) == 1]
    core = model.core
    paths = MoMKETrainable(core)  # per-modality state slices of the stage-1 paths
    opt = torch.optim.AdamW(core.parameters(), lr=lr, weight_decay=1e-4)

    def run_epoch(stage: int, batches: Any) -> None:
        core.train()
        for rows, labels, lmask in batches:
            feats, masks, present = _core_batch(tokens, mods, rows)
            loss = masked_ce(core(feats, masks, present, stage=stage).logits, labels, lmask)
            opt.zero_grad()
            loss.backward()
            opt.step()

    def show(stage: int, epoch: int, scores: dict[str, float]) -> None:
        print(f"  [core stage {stage}] epoch {epoch}: val "
              + " ".join(f"{k} {v:.3f}" for k, v in scores.items()), flush=True)

    def stage1_batches() -> Any:  # each batch: one dataset, its own modality only
        jobs = []
        for m in mods:
            order = rng.permutation(splits[m][0])
            jobs += [(m, order[s:s + batch_size]) for s in range(0, order.size, batch_size)]
        for j in rng.permutation(len(jobs)):
            m, idx = jobs[j]
            yield ([{m: int(i)} for i in idx], torch.from_numpy(data[m].labels[idx]),
                   torch.from_numpy(data[m].label_mask)[None].expand(len(idx), -1))

    def stage2_batches() -> Any:
        for _ in range(0, mixing_samples, batch_size):
            rows, labels, lmasks = [], [], []
            for _ in range(batch_size):
                c = int(rng.choice(len(LABELS), p=prior))
                pats = train_s.patterns_for(c)
                pattern = pats[int(rng.integers(len(pats)))]
                if len(pattern) == 1:  # a lone modality: any training sample of its dataset,
                    (m,) = pattern     # so its labels follow that dataset, as in validation
                    i = int(rng.choice(splits[m][0]))
                    picks, mask, c = {m: i}, data[m].label_mask, int(data[m].labels[i])
                else:
                    picks, mask = train_s.draw(rng, c, pattern)
                rows.append(picks)
                labels.append(c)
                lmasks.append(mask)
            yield rows, torch.tensor(labels), torch.from_numpy(np.stack(lmasks))

    best1: dict[str, dict[str, Any]] = {}
    for epoch in range(1, stage1_epochs + 1):
        run_epoch(1, stage1_batches())
        scores = _pattern_scores(model, tokens, single_val, 1, select_on)
        show(1, epoch, scores)
        for m in mods:
            if m in scores and scores[m] > best1.get(m, {"score": -1.0})["score"]:
                best1[m] = {"score": scores[m], "epoch": epoch, "state": paths.modality_state(m)}
    for m, b in best1.items():
        paths.load_modality_state(m, b.pop("state"))
    for g in opt.param_groups:
        g["lr"] = lr / 2  # mixing fine-tunes experts that stage 1 already fitted
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(stage2_epochs, 1))
    best2: dict[str, Any] = {"score": -1.0}
    for epoch in range(1, stage2_epochs + 1):
        run_epoch(2, stage2_batches())
        decay.step()
        scores = _pattern_scores(model, tokens, val_items, 2, select_on)
        show(2, epoch, scores)
        score = float(np.mean(list(scores.values())))
        if score > best2["score"]:
            best2 = {"score": score, "epoch": epoch, "per_pattern": scores,
                     "state": copy.deepcopy(core.state_dict())}
    if "state" in best2:  # no mixing epochs (stage2_epochs = 0): the stage-1 paths as kept
        core.load_state_dict(best2.pop("state"))
    logits = _run_core(model, tokens, val_items).numpy()
    per_pattern: dict[str, Any] = {}
    val_logits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    keys = np.array([pattern_key(tuple(it[0])) for it in val_items])
    labels = np.array([it[1] for it in val_items])
    lmask = np.stack([it[2] for it in val_items])
    for key in dict.fromkeys(keys.tolist()):
        sel = keys == key
        per_pattern[key] = classification_metrics(labels[sel], logits[sel], lmask[sel].all(0))
        val_logits[key] = (logits[sel], labels[sel])
    criterion = {m: select_on.get(m, "ua") for m in mods}
    return {"metrics": {"stage1": {"selected_epoch": {m: b["epoch"] for m, b in best1.items()},
                                   "val_score": {m: b["score"] for m, b in best1.items()},
                                   "criterion": f"per modality, own validation samples: "
                                                f"{criterion}"},
                        "stage2": {"selected_epoch": best2.get("epoch"),
                                   "val_mean_pattern_score": best2["score"],
                                   "val_score_per_pattern": best2.get("per_pattern", {}),
                                   "criterion": "mean over patterns (lone modality: its own "
                                                "metric; combinations: UA)"},
                        "val_per_pattern_SYNTHETIC": per_pattern},
            "val_logits": val_logits}


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def _fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    grid = np.exp(np.linspace(np.log(0.2), np.log(10.0), 200))
    nll = [-np.mean(np.log(_softmax(logits / t)[np.arange(len(labels)), labels] + 1e-12))
           for t in grid]
    return float(grid[int(np.argmin(nll))])


def fit_temperatures(val_logits: dict[str, tuple[np.ndarray, np.ndarray]]
                     ) -> tuple[dict[str, float], dict[str, Any]]:
    """Per-pattern temperature minimising NLL over the full label set (grid search).

    The shipped temperature is fitted on all of a pattern's validation items. ECE (15 bins)
    after calibration is cross-fitted, so no item is scored with a temperature it helped fit:
    even-indexed items get the temperature fitted on the odd-indexed ones and vice versa, and
    the ECE is taken over all items (twice the n of a single held-out half: the estimate is
    less noisy, which matters at the 30-200 items per pattern we have).
    """
    temps: dict[str, float] = {"": 1.0}
    report: dict[str, Any] = {}
    for key, (logits, labels) in val_logits.items():
        temps[key] = _fit_temperature(logits, labels)
        halves = (np.arange(len(labels)) % 2 == 0, np.arange(len(labels)) % 2 == 1)
        probs = np.zeros_like(logits, dtype=np.float64)
        half_temps = []
        for fit_sel, score_sel in (halves, halves[::-1]):
            if not fit_sel.any() or not score_sel.any():
                probs[score_sel] = _softmax(logits[score_sel] / temps[key])
                continue
            t = _fit_temperature(logits[fit_sel], labels[fit_sel])
            half_temps.append(t)
            probs[score_sel] = _softmax(logits[score_sel] / t)
        report[key] = {"temperature": temps[key], "n": int(len(labels)),
                       "half_temperatures": half_temps,
                       "ece_before": expected_calibration_error(_softmax(logits), labels),
                       "ece_after": expected_calibration_error(probs, labels),
                       "ece_if_calibrated": ece_if_calibrated(probs),
                       "ece_after_protocol": "cross-fitted halves (even/odd)"}
    return temps, report
