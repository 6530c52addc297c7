"""Two-stage MoMKE training, generic over batches (see /work/MOMKE_API.md and MOMKE.md section 3).

Stage 1: each modality through its own expert + unimodal head (sum of per-modality masked CE).
  The best epoch is selected *per modality* on validation (accuracy, ties by NLL) and those
  modality paths are put back together: this is what the reference's stage-1→2 hand-off meant
  to do, done on validation data instead of training accuracy.
Stage 2: the mixing stage. One availability pattern is sampled per sample (uniform over the
  non-empty subsets of what the sample has, the empty pattern with `p_empty`), so one model
  serves every pattern. Groups named in `freeze_in_stage2` are frozen (default: input
  projections, experts and unimodal heads; see `TrainConfig`). Selection: mean accuracy over
  every pattern on validation.

A model is anything `Trainable`: an nn.Module whose `forward(batch, stage)` returns a
MoMKEOutput and that names its parameter groups. `MoMKETrainable` adapts a bare MoMKE; a live
model that owns front-end encoders implements the same three methods.
"""

from __future__ import annotations

import copy
import itertools
import math
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engines.momke import MoMKE, MoMKEOutput


@dataclass(frozen=True, kw_only=True)
class Batch:
    feats: dict[str, Tensor]  # m -> (B, T_m, d_m)
    token_mask: dict[str, Tensor]  # m -> (B, T_m) bool
    present: Tensor  # (B, M) bool, in the model's modality order
    labels: Tensor  # (B,) int64
    label_mask: Tensor  # (B, C) bool: classes that exist in the sample's source dataset

    def with_present(self, present: Tensor) -> Batch:
        return replace(self, present=present)


class Trainable(Protocol):
    modalities: tuple[str, ...]

    def __call__(self, batch: Batch, stage: int) -> MoMKEOutput: ...
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]: ...
    def modality_state(self, name: str) -> dict[str, Tensor]: ...
    def load_modality_state(self, name: str, state: dict[str, Tensor]) -> None: ...
    def parameters(self) -> Iterator[nn.Parameter]: ...
    def train(self, mode: bool = True) -> nn.Module: ...
    def eval(self) -> nn.Module: ...
    def state_dict(self) -> dict[str, Tensor]: ...
    def load_state_dict(self, state: dict[str, Tensor]) -> object: ...


class MoMKETrainable(nn.Module):
    """Adapts a bare MoMKE to the trainer: forward(batch, stage) + per-modality state slices."""

    def __init__(self, model: MoMKE) -> None:
        super().__init__()
        self.model = model
        self.modalities = model.cfg.modalities

    def forward(self, batch: Batch, stage: int) -> MoMKEOutput:
        return self.model(batch.feats, batch.token_mask, batch.present, stage=stage)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return self.model.parameter_groups()

    def modality_state(self, name: str) -> dict[str, Tensor]:
        """Copies of the tensors on the stage-1 path of `name` (its slice of the expert stack)."""
        i = self.model.cfg.modalities.index(name)
        out: dict[str, Tensor] = {}
        for key, value in self.model.state_dict().items():
            if key.startswith("experts."):
                out[key] = value[i].clone()
            elif key.split(".")[1:2] == [name] and key.split(".")[0] in _PER_MODALITY:
                out[key] = value.clone()
        return out

    def load_modality_state(self, name: str, state: dict[str, Tensor]) -> None:
        i = self.model.cfg.modalities.index(name)
        current = self.model.state_dict()
        with torch.no_grad():
            for key, value in state.items():
                if key.startswith("experts."):
                    current[key][i].copy_(value)
                else:
                    current[key].copy_(value)


_PER_MODALITY = ("input_proj", "pos", "unimodal_heads")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    stage1_epochs: int = 80
    # Without validation data (a final fit on everything): keep modality m's stage-1 path as it
    # was after this many epochs (e.g. the median best epoch over CV folds); absent = last epoch.
    stage1_epochs_by_modality: dict[str, int] = field(default_factory=dict)
    stage2_epochs: int = 80
    patience: int = 15  # epochs without validation improvement before stopping a stage
    lr: float = 2e-3
    stage2_lr: float = 2e-3
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    label_smoothing: float = 0.0
    # Frozen in stage 2. Default: what stage 1 learned stays as selected on validation, so a lone
    # modality keeps its validated expert and head, and 700-odd training clips cannot overwrite
    # the experts while the router learns to mix them. Set () to fine-tune everything.
    freeze_in_stage2: tuple[str, ...] = ("input", "experts", "unimodal_heads")
    aux_unimodal_weight: float = 0.0  # stage-2 weight of unimodal losses (if experts train)
    sample_patterns: bool = True  # False: stage 2 sees every sample with all it has
    p_empty: float = 0.02  # share of stage-2 samples with nothing present (trains the prior)
    skip_stage1: bool = False  # ablation "MoMKE without stage 1"
    skip_stage2: bool = False  # stage-1-only models (unimodal, late fusion)
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "freeze_in_stage2", tuple(self.freeze_in_stage2))
        object.__setattr__(self, "stage1_epochs_by_modality", dict(self.stage1_epochs_by_modality))
        if self.skip_stage1 and self.skip_stage2:
            raise ValueError("cannot skip both stages")

    @property
    def eval_stage(self) -> int:
        return 1 if self.skip_stage2 else 2


@dataclass
class TrainResult:
    best_epoch: dict[str, int] = field(default_factory=dict)  # "stage1:audio", "stage2" -> epoch
    val_score: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float | int | str]] = field(default_factory=list)
    seconds: float = 0.0


def all_patterns(n_modalities: int, include_empty: bool = False) -> list[tuple[int, ...]]:
    start = 0 if include_empty else 1
    return [
        p
        for r in range(start, n_modalities + 1)
        for p in itertools.combinations(range(n_modalities), r)
    ]


def sample_patterns(present: Tensor, p_empty: float, gen: torch.Generator) -> Tensor:
    """Per sample: a uniformly drawn non-empty subset of its present modalities (or nothing)."""
    b, m = present.shape
    out = torch.zeros_like(present)
    draws = torch.rand(b, generator=gen)
    for i in range(b):
        avail = present[i].nonzero().flatten().tolist()
        if not avail or draws[i] < p_empty:
            continue
        subsets = [s for s in all_patterns(len(avail))]
        pick = subsets[int(torch.randint(len(subsets), (1,), generator=gen))]
        out[i, [avail[j] for j in pick]] = True
    return out


def masked_cross_entropy(
    logits: Tensor, labels: Tensor, label_mask: Tensor, smoothing: float = 0.0
) -> Tensor:
    """CE over the classes the sample's dataset has: absent classes leave the softmax entirely."""
    masked = logits.masked_fill(~label_mask, -1e4)
    if smoothing:
        logp = F.log_softmax(masked, -1)
        n_valid = label_mask.sum(-1, keepdim=True).clamp(min=1)
        smooth = -(logp * label_mask).sum(-1, keepdim=True) / n_valid
        nll = -logp.gather(1, labels[:, None])
        return ((1 - smoothing) * nll + smoothing * smooth).mean()
    return F.cross_entropy(masked, labels)


@torch.no_grad()
def predict_patterns(
    model: Trainable, batches: Iterable[Batch], stage: int, patterns: list[tuple[int, ...]]
) -> dict[tuple[int, ...], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Pattern -> (logits (n, C), labels (n,), label_mask (n, C)) over samples that have it."""
    model.eval()
    acc: dict[tuple[int, ...], list[tuple[Tensor, Tensor, Tensor]]] = {p: [] for p in patterns}
    for batch in batches:
        for p in patterns:
            want = torch.zeros(batch.present.shape[1], dtype=torch.bool)
            want[list(p)] = True
            has = (batch.present | ~want).all(1)  # samples where every modality of p is present
            if not has.any():
                continue
            out = model(batch.with_present(want.expand_as(batch.present) & batch.present), stage)
            acc[p].append((out.logits[has], batch.labels[has], batch.label_mask[has]))
    result = {}
    for p, parts in acc.items():
        if parts:
            result[p] = tuple(torch.cat([x[k] for x in parts]).numpy() for k in range(3))
    return result  # type: ignore[return-value]


def _score(logits: np.ndarray, labels: np.ndarray, label_mask: np.ndarray) -> tuple[float, float]:
    z = np.where(label_mask, logits, -1e4)
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float((z.argmax(1) == labels).mean()), float(
        -logp[np.arange(len(labels)), labels].mean()
    )


class _Progress:
    def __init__(self, enabled: bool, label: str, total: int) -> None:
        self.enabled, self.label, self.total, self.t0 = enabled, label, total, time.monotonic()

    def update(self, epoch: int, text: str) -> None:
        if not self.enabled:
            return
        done = int(20 * (epoch + 1) / self.total)
        bar = "#" * done + "." * (20 - done)
        elapsed = time.monotonic() - self.t0
        sys.stderr.write(
            f"\r{self.label} [{bar}] {epoch + 1}/{self.total} {text} {elapsed:.0f}s   "
        )
        sys.stderr.flush()

    def close(self, text: str = "") -> None:
        if self.enabled:
            sys.stderr.write(f" {text}\n")


def _run_epoch(
    model: Trainable,
    batches: Iterable[Batch],
    opt: torch.optim.Optimizer,
    cfg: TrainConfig,
    stage: int,
    gen: torch.Generator,
) -> float:
    model.train()
    total, n = 0.0, 0
    params = [p for g in opt.param_groups for p in g["params"]]
    for batch in batches:
        if stage == 1:
            out = model(batch, 1)
            losses = []
            for i, name in enumerate(model.modalities):
                sel = batch.present[:, i]
                if name in out.unimodal_logits and sel.any():
                    lg = out.unimodal_logits[name][sel]
                    losses.append(
                        masked_cross_entropy(
                            lg, batch.labels[sel], batch.label_mask[sel], cfg.label_smoothing
                        )
                    )
            if not losses:
                continue
            loss = torch.stack(losses).sum()
        else:
            present = batch.present
            if cfg.sample_patterns:
                present = sample_patterns(present, cfg.p_empty, gen)
            out = model(batch.with_present(present), 2)
            loss = masked_cross_entropy(
                out.logits, batch.labels, batch.label_mask, cfg.label_smoothing
            )
            if cfg.aux_unimodal_weight:
                for i, name in enumerate(model.modalities):
                    sel = present[:, i]
                    if name in out.unimodal_logits and sel.any():
                        aux = masked_cross_entropy(
                            out.unimodal_logits[name][sel], batch.labels[sel], batch.label_mask[sel]
                        )
                        loss = loss + cfg.aux_unimodal_weight * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        total += float(loss.detach()) * len(batch.labels)
        n += len(batch.labels)
    return total / max(n, 1)


def _better(new: tuple[float, float], old: tuple[float, float] | None) -> bool:
    """(accuracy, nll): higher accuracy wins, ties go to lower NLL."""
    return (
        old is None or new[0] > old[0] + 1e-9 or (abs(new[0] - old[0]) <= 1e-9 and new[1] < old[1])
    )


def _stage1(
    model: Trainable,
    train: Iterable[Batch],
    val: Iterable[Batch] | None,
    cfg: TrainConfig,
    res: TrainResult,
    gen: torch.Generator,
) -> None:
    params = [
        p
        for name in ("input", "experts", "unimodal_heads")
        for p in model.parameter_groups().get(name, [])
    ]
    params += model.parameter_groups().get("frontends", [])
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    best: dict[str, tuple[float, float]] = {}
    best_state: dict[str, dict[str, Tensor]] = {}
    since: dict[str, int] = {m: 0 for m in model.modalities}
    bar = _Progress(cfg.progress, "stage 1", cfg.stage1_epochs)
    for epoch in range(cfg.stage1_epochs):
        loss = _run_epoch(model, train, opt, cfg, 1, gen)
        row: dict[str, float | int | str] = {"stage": 1, "epoch": epoch, "train_loss": loss}
        if val is not None:
            singles: list[tuple[int, ...]] = [(i,) for i in range(len(model.modalities))]
            preds = predict_patterns(model, val, 1, singles)
            for (i,), (lg, y, lm) in preds.items():
                name = model.modalities[i]
                score = _score(lg, y, lm)
                row[f"val_acc_{name}"] = score[0]
                if _better(score, best.get(name)):
                    best[name], since[name] = score, 0
                    best_state[name] = model.modality_state(name)
                    res.best_epoch[f"stage1:{name}"] = epoch
                else:
                    since[name] += 1
        else:
            for name, stop in cfg.stage1_epochs_by_modality.items():
                if epoch + 1 == stop:
                    best_state[name] = model.modality_state(name)
                    res.best_epoch[f"stage1:{name}"] = epoch
        res.history.append(row)
        bar.update(epoch, f"loss {loss:.3f}")
        if val is not None and all(since[m] >= cfg.patience for m in best):
            break
    for name, state in best_state.items():
        model.load_modality_state(name, state)
        if name in best:
            res.val_score[f"stage1:{name}"] = best[name][0]
    bar.close(" ".join(f"{k}={v[0]:.3f}" for k, v in best.items()))


def _stage2(
    model: Trainable,
    train: Iterable[Batch],
    val: Iterable[Batch] | None,
    cfg: TrainConfig,
    res: TrainResult,
    gen: torch.Generator,
) -> None:
    groups = model.parameter_groups()
    frozen = {id(p) for name in cfg.freeze_in_stage2 for p in groups.get(name, [])}
    params = [p for p in model.parameters() if id(p) not in frozen]
    for p in model.parameters():
        p.requires_grad_(id(p) not in frozen)
    opt = torch.optim.AdamW(params, lr=cfg.stage2_lr, weight_decay=cfg.weight_decay)
    best: tuple[float, float] | None = None
    best_state = None
    since = 0
    patterns = all_patterns(len(model.modalities))
    bar = _Progress(cfg.progress, "stage 2", cfg.stage2_epochs)
    for epoch in range(cfg.stage2_epochs):
        loss = _run_epoch(model, train, opt, cfg, 2, gen)
        row: dict[str, float | int | str] = {"stage": 2, "epoch": epoch, "train_loss": loss}
        if val is not None:
            preds = predict_patterns(model, val, 2, patterns)
            scores = [_score(*v) for v in preds.values()]
            score = (float(np.mean([s[0] for s in scores])), float(np.mean([s[1] for s in scores])))
            row["val_acc_mean_patterns"] = score[0]
            if _better(score, best):
                best, since = score, 0
                best_state = copy.deepcopy(model.state_dict())
                res.best_epoch["stage2"] = epoch
            else:
                since += 1
        res.history.append(row)
        bar.update(epoch, f"loss {loss:.3f}")
        if val is not None and since >= cfg.patience:
            break
    for p in model.parameters():
        p.requires_grad_(True)
    if best_state is not None and best is not None:
        model.load_state_dict(best_state)
        res.val_score["stage2"] = best[0]
    bar.close(f"mean over patterns={best[0]:.3f}" if best else "")


def train_two_stage(
    model: Trainable,
    train_batches: Iterable[Batch],
    val_batches: Iterable[Batch] | None,
    cfg: TrainConfig,
) -> TrainResult:
    """Train in place; with `val_batches` None, run the configured epochs and keep the last."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    res = TrainResult()
    t0 = time.monotonic()
    if not cfg.skip_stage1:
        _stage1(model, train_batches, val_batches, cfg, res, gen)
    if not cfg.skip_stage2:
        _stage2(model, train_batches, val_batches, cfg, res, gen)
    model.eval()
    res.seconds = time.monotonic() - t0
    if not math.isfinite(res.seconds):
        raise RuntimeError("clock went backwards")
    return res


class ArrayBatches:
    """Re-iterable mini-batches over in-memory tensors; reshuffled on every pass when `shuffle`."""

    def __init__(self, data: Batch, batch_size: int, shuffle: bool, seed: int = 0) -> None:
        self.data, self.batch_size, self.shuffle = data, batch_size, shuffle
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.data.labels)

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.data.labels)
        order = torch.randperm(n, generator=self.gen) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]  # (b,)
            yield Batch(
                feats={k: v[idx] for k, v in self.data.feats.items()},
                token_mask={k: v[idx] for k, v in self.data.token_mask.items()},
                present=self.data.present[idx],
                labels=self.data.labels[idx],
                label_mask=self.data.label_mask[idx],
            )


def main(argv: list[str] | None = None) -> int:
    from engines.train_cli import run_cli

    return run_cli(argv)
