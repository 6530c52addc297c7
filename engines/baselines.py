"""Baselines in the same code and protocol as MoMKE (same data, folds, trainer, selection).

- `unimodal`: one modality's expert + head (a MoMKE over that modality alone), stage 1 only.
- `early_fusion`: window-mean of each modality's tokens, concatenated, MLP. Trained on samples
  with everything present (the usual recipe); a missing modality is filled with the features of
  a raw all-zero input (`impute="zero"`: what a pipeline that zero-fills a dead sensor does) or
  with the training mean (`impute="mean"`).
- `late_fusion`: the stage-1 experts and unimodal heads; output = mean of the present
  modalities' probabilities.
- MoMKE ablations need no code here: `router_mode = "average" | "own"` in the model config and
  `skip_stage1` in the train config.

`build_model(kind, model_args, ...)` builds any of them; checkpoints carry `kind` and
`model_args` so `load_model` rebuilds the right class (weights_only loading).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engines.momke import MoMKE, MoMKEConfig, MoMKEOutput
from engines.train import Batch, MoMKETrainable

KINDS = ("momke", "unimodal", "early_fusion", "late_fusion")


class UnimodalTrainable(MoMKETrainable):
    """A MoMKE over one modality, fed that modality's slice of multi-modality batches."""

    def __init__(self, model: MoMKE, all_modalities: tuple[str, ...]) -> None:
        super().__init__(model)
        (self.only,) = model.cfg.modalities
        self.modalities = all_modalities
        self.index = all_modalities.index(self.only)

    def forward(self, batch: Batch, stage: int) -> MoMKEOutput:
        i = self.index
        return self.model(
            {self.only: batch.feats[self.only]},
            {self.only: batch.token_mask[self.only]},
            batch.present[:, i : i + 1],
            stage=1,
        )

    def modality_state(self, name: str) -> dict[str, Tensor]:
        return super().modality_state(name) if name == self.only else {}

    def load_modality_state(self, name: str, state: dict[str, Tensor]) -> None:
        if name == self.only:
            super().load_modality_state(name, state)


class LateFusionTrainable(MoMKETrainable):
    """Stage-1 experts; prediction = log of the mean of the present modalities' probabilities."""

    def forward(self, batch: Batch, stage: int) -> MoMKEOutput:
        out = self.model(batch.feats, batch.token_mask, batch.present, stage=1)
        if self.training or not out.unimodal_logits:
            return out
        pres = batch.present.float()
        probs = torch.zeros_like(out.logits)
        for i, name in enumerate(self.modalities):
            if name in out.unimodal_logits:
                probs = probs + F.softmax(out.unimodal_logits[name], -1) * pres[:, i : i + 1]
        mean = probs / pres.sum(1, keepdim=True).clamp(min=1.0)
        logits = torch.where(
            batch.present.any(1, keepdim=True), mean.clamp(min=1e-8).log(), out.logits
        )
        return MoMKEOutput(logits=logits, unimodal_logits=out.unimodal_logits, router=None)


@dataclass(frozen=True, kw_only=True)
class EarlyFusionConfig:
    modalities: tuple[str, ...]
    input_dims: dict[str, int]
    n_classes: int
    width: int = 64
    dropout: float = 0.1
    impute: str = "zero"  # what fills a missing modality: "zero" (raw-zero input) or "mean"

    def __post_init__(self) -> None:
        object.__setattr__(self, "modalities", tuple(self.modalities))
        if self.impute not in ("zero", "mean"):
            raise ValueError("impute must be 'zero' or 'mean'")


class EarlyFusion(nn.Module):
    """Concatenated window-mean features -> MLP. Missing modalities are imputed, not masked."""

    def __init__(self, cfg: EarlyFusionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.modalities, self.impute = cfg.modalities, cfg.impute
        input_dims, width, dropout, n_classes = (
            cfg.input_dims,
            cfg.width,
            cfg.dropout,
            cfg.n_classes,
        )
        total = sum(input_dims[m] for m in self.modalities)
        self.net = nn.Sequential(
            nn.Linear(total, width), nn.GELU(), nn.Dropout(dropout), nn.Linear(width, n_classes)
        )
        for m in self.modalities:  # per-modality fill vector (window-mean space), set by fit_fill
            self.register_buffer(f"fill_{m}", torch.zeros(input_dims[m]))

    def fit_fill(self, train: Iterable[Batch], raw_zero: dict[str, Tensor] | None) -> None:
        for i, m in enumerate(self.modalities):
            if self.impute == "zero":
                value = raw_zero[m].mean(0) if raw_zero and m in raw_zero else None
            else:
                pooled = [_pool(b.feats[m], b.token_mask[m])[b.present[:, i]] for b in train]
                value = torch.cat(pooled).mean(0)
            if value is not None:
                getattr(self, f"fill_{m}").copy_(value)

    def forward(self, batch: Batch, stage: int) -> MoMKEOutput:
        parts = []
        for i, m in enumerate(self.modalities):
            fill: Tensor = getattr(self, f"fill_{m}")
            pooled = _pool(batch.feats[m], batch.token_mask[m])  # (B, d_m)
            parts.append(torch.where(batch.present[:, i : i + 1], pooled, fill.expand_as(pooled)))
        return MoMKEOutput(logits=self.net(torch.cat(parts, -1)))

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"fusion": list(self.net.parameters())}

    def modality_state(self, name: str) -> dict[str, Tensor]:
        return {}

    def load_modality_state(self, name: str, state: dict[str, Tensor]) -> None:
        return None


def _pool(x: Tensor, mask: Tensor) -> Tensor:
    w = mask.to(x.dtype)[..., None]  # (B, T, 1)
    return (x * w).sum(1) / w.sum(1).clamp(min=1.0)


def build_model(
    kind: str,
    model_args: dict[str, Any],
    *,
    modalities: tuple[str, ...],
    input_dims: dict[str, int],
    n_classes: int,
) -> nn.Module:
    """Any model of KINDS; `model_args` holds the kind's own options (width, dropout, ...)."""
    args = dict(model_args)
    if kind == "early_fusion":
        return EarlyFusion(
            EarlyFusionConfig(
                modalities=modalities, input_dims=input_dims, n_classes=n_classes, **args
            )
        )
    if kind == "unimodal":
        only = args.pop("modality")
        cfg = MoMKEConfig(
            modalities=(only,), input_dims={only: input_dims[only]}, n_classes=n_classes, **args
        )
        return UnimodalTrainable(MoMKE(cfg), modalities)
    cfg = MoMKEConfig(modalities=modalities, input_dims=input_dims, n_classes=n_classes, **args)
    if kind == "late_fusion":
        return LateFusionTrainable(MoMKE(cfg))
    if kind == "momke":
        return MoMKETrainable(MoMKE(cfg))
    raise ValueError(f"unknown model kind {kind!r}; choose one of {KINDS}")


def save_model(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """meta must hold kind, model_args, modalities, input_dims, n_classes (rebuild inputs)."""
    torch.save({"meta": meta, "state_dict": model.state_dict()}, Path(path))


class Ensemble(nn.Module):
    """Independently trained members (different seeds) of one kind; logits are averaged.

    Small data makes single runs noisy (early stopping on 180 validation clips); averaging a
    few seeds is the cheapest variance reduction and also tempers over-confidence.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.modalities = getattr(members[0], "modalities", ())

    def forward(self, batch: Batch, stage: int) -> MoMKEOutput:
        outs = [m(batch, stage) for m in self.members]
        logits = torch.stack([o.logits for o in outs]).mean(0)
        routers = [o.router for o in outs if o.router is not None]
        router = torch.stack(routers).mean(0) if len(routers) == len(outs) else None
        uni = {
            k: torch.stack([o.unimodal_logits[k] for o in outs]).mean(0)
            for k in outs[0].unimodal_logits
        }
        return MoMKEOutput(logits=logits, unimodal_logits=uni, router=router)


class MoMKEEnsemble(nn.Module):
    """The MoMKE call signature over ensemble members (for export): outputs averaged."""

    def __init__(self, members: list[MoMKE]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.cfg = members[0].cfg

    @property
    def prior(self) -> Tensor:
        return torch.stack([m.prior for m in self.members if isinstance(m, MoMKE)]).mean(0)

    def forward(
        self,
        feats: dict[str, Tensor],
        token_mask: dict[str, Tensor],
        present: Tensor,
        stage: int = 2,
    ) -> MoMKEOutput:
        outs = [m(feats, token_mask, present, stage=stage) for m in self.members]
        logits = torch.stack([o.logits for o in outs]).mean(0)
        router = torch.stack([o.router for o in outs if o.router is not None]).mean(0)
        return MoMKEOutput(logits=logits, router=router)


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    meta = payload["meta"]

    def one() -> nn.Module:
        return build_model(
            meta["kind"],
            meta["model_args"],
            modalities=tuple(meta["modalities"]),
            input_dims=dict(meta["input_dims"]),
            n_classes=int(meta["n_classes"]),
        )

    n = int(meta.get("ensemble", 1))
    model = one() if n == 1 else Ensemble([one() for _ in range(n)])
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, meta
