"""MoMKE: per-modality experts, one soft router per modality, a fusion head (see shared/MOMKE.md).

What differs from the reference release, and why (MOMKE.md section 5):
- Absent modalities are skipped, not fed zeros: a modality missing from `feats` is never
  computed, and `present` removes a modality from fusion per sample. With nothing present the
  logits are a learned prior (a bias vector), never NaN.
- Attention inside an expert is causal (a token sees only itself and earlier tokens) with a
  learned position encoding; the window representation is the mean over real tokens only, so
  padding never changes the output and a prefix's token states do not depend on later tokens.
- Pre-LayerNorm expert layers with an output projection (the reference has neither and is
  unstable at small widths); no dropout on router logits (a train/test mismatch in the release).
- All experts are held as one stacked bank (E, ...) and applied with broadcast matmuls, so the
  "every modality through every expert" mixing costs one pass per present modality instead of E
  passes: this is what keeps the exported graph small and fast at batch 1.

Router modes: "soft" (the method), "average" (uniform weights: ablation), "own" (each modality
uses only its own expert: the "no mixing" ablation).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engines.backend import MODALITIES

ROUTER_MODES = ("soft", "average", "own")


@dataclass(frozen=True, kw_only=True)
class MoMKEConfig:
    modalities: tuple[str, ...]  # subset of engines.backend.MODALITIES, canonical order
    input_dims: dict[str, int]  # per-modality token feature dim (front-end output)
    n_classes: int
    width: int = 64  # hidden D (reference: 256)
    depth: int = 2  # expert layers (reference: 4)
    heads: int = 2
    dropout: float = 0.1
    mlp_ratio: float = 2.0
    max_tokens: int = 64  # learned positions; later tokens share the last position embedding
    router_mode: str = "soft"
    router_hidden: int = 0  # 0 = same as width

    def __post_init__(self) -> None:
        # TOML/JSON round trips turn tuples into lists; normalise so the frozen config is hashable.
        object.__setattr__(self, "modalities", tuple(self.modalities))
        object.__setattr__(self, "input_dims", dict(self.input_dims))
        if not self.modalities:
            raise ValueError("MoMKEConfig.modalities must name at least one modality")
        if list(self.modalities) != [m for m in MODALITIES if m in self.modalities]:
            raise ValueError(f"modalities must be a subset of {MODALITIES} in that order")
        missing = [m for m in self.modalities if m not in self.input_dims]
        if missing:
            raise ValueError(f"input_dims lacks {missing}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.router_mode not in ROUTER_MODES:
            raise ValueError(f"router_mode must be one of {ROUTER_MODES}")
        if self.n_classes < 2 or self.depth < 1 or self.max_tokens < 1:
            raise ValueError("n_classes >= 2, depth >= 1 and max_tokens >= 1 are required")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MoMKEConfig:
        return cls(**d)


@dataclass(frozen=True)
class MoMKEOutput:
    logits: Tensor  # (B, C) fused logits (stage 2) or mean of unimodal logits (stage 1)
    unimodal_logits: dict[str, Tensor] = field(default_factory=dict)  # m -> (B, C), computed m only
    router: Tensor | None = (
        None  # (B, M, M): row m = modality m's weights over experts; 0 if absent
    )


class _StackedLinear(nn.Module):
    """E independent Linear layers applied in one broadcast matmul: (E, B, T, i) -> (E, B, T, o)."""

    def __init__(self, n: int, d_in: int, d_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n, d_in, d_out) * 0.02)
        self.bias = nn.Parameter(torch.zeros(n, d_out))

    def forward(self, x: Tensor, sel: slice) -> Tensor:
        w, b = self.weight[sel], self.bias[sel]
        return torch.matmul(x, w[:, None]) + b[:, None, None]  # (E,B,T,i) @ (E,1,i,o)


class _StackedLayerNorm(nn.Module):
    def __init__(self, n: int, d: int) -> None:
        super().__init__()
        self.d = d
        self.weight = nn.Parameter(torch.ones(n, d))
        self.bias = nn.Parameter(torch.zeros(n, d))

    def forward(self, x: Tensor, sel: slice) -> Tensor:
        y = F.layer_norm(x, (self.d,))  # a Python int, so traced graphs keep no shape ops
        return y * self.weight[sel][:, None, None] + self.bias[sel][:, None, None]


class _ExpertLayer(nn.Module):
    """One pre-LN transformer layer for every expert at once (causal self-attention + MLP)."""

    def __init__(self, n_experts: int, cfg: MoMKEConfig) -> None:
        super().__init__()
        d, hidden = cfg.width, int(cfg.width * cfg.mlp_ratio)
        self.heads = cfg.heads
        self.ln1 = _StackedLayerNorm(n_experts, d)
        self.qkv = _StackedLinear(n_experts, d, 3 * d)
        self.proj = _StackedLinear(n_experts, d, d)
        self.ln2 = _StackedLayerNorm(n_experts, d)
        self.fc1 = _StackedLinear(n_experts, d, hidden)
        self.fc2 = _StackedLinear(n_experts, hidden, d)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, attn_bias: Tensor, sel: slice) -> Tensor:
        # x: (E, B, T, D); attn_bias: (B, T, T) additive, 0 where allowed, -inf where not
        e, b, t, d = x.shape
        qkv = self.qkv(self.ln1(x, sel), sel)  # (E, B, T, 3D)
        qkv = qkv.reshape(e, b, t, 3, self.heads, d // self.heads)  # (E, B, T, 3, H, Dh)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # each (E, B, H, T, Dh)
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(d // self.heads)
        attn = torch.softmax(scores + attn_bias[None, :, None], dim=-1)  # (E, B, H, T, T)
        y = torch.matmul(attn, v).permute(0, 1, 3, 2, 4).reshape(e, b, t, d)  # (E, B, T, D)
        x = x + self.drop(self.proj(y, sel))
        return x + self.drop(self.fc2(F.gelu(self.fc1(self.ln2(x, sel), sel)), sel))


class ExpertBank(nn.Module):
    """The E modality experts (E = number of modalities), stacked."""

    def __init__(self, cfg: MoMKEConfig) -> None:
        super().__init__()
        n = len(cfg.modalities)
        self.layers = nn.ModuleList(_ExpertLayer(n, cfg) for _ in range(cfg.depth))
        self.ln_f = _StackedLayerNorm(n, cfg.width)

    def forward(self, h: Tensor, attn_bias: Tensor, sel: slice) -> Tensor:
        """h: (B, T, D) tokens of one modality -> (E_sel, B, T, D), one per selected expert."""
        n_sel = len(range(*sel.indices(self.ln_f.weight.shape[0])))
        x = h.unsqueeze(0).expand(n_sel, -1, -1, -1)  # (E_sel, B, T, D)
        for layer in self.layers:
            x = layer(x, attn_bias, sel)
        return self.ln_f(x, sel)


def _causal_bias(token_mask: Tensor) -> Tensor:
    """(B, T) bool real-token mask -> (B, T, T) additive attention bias.

    A query may attend to earlier-or-same real tokens, and always to itself, so no row is
    empty (no NaN) even for padding or an all-padding absent sample; padded queries are excluded
    from pooling, so what they compute does not matter.
    """
    t = token_mask.shape[1]
    idx = torch.arange(t, device=token_mask.device)
    causal = idx[None, :] <= idx[:, None]  # (T, T): key j <= query i
    itself = idx[None, :] == idx[:, None]  # (T, T) diagonal (no EyeLike: onnxruntime lacks bool)
    allowed = (causal[None] & token_mask[:, None, :]) | itself[None]  # (B, T, T)
    zero = torch.zeros((), dtype=torch.float32, device=token_mask.device)
    return torch.where(allowed, zero, torch.full_like(zero, float("-inf")))


def _masked_mean(x: Tensor, token_mask: Tensor) -> Tensor:
    """x: (..., B, T, D), token_mask: (B, T) -> (..., B, D), mean over real tokens only."""
    w = token_mask.to(x.dtype)
    denom = w.sum(-1).clamp(min=1.0)[:, None]  # (B, 1)
    return (x * w[..., None]).sum(-2) / denom


class MoMKE(nn.Module):
    def __init__(self, cfg: MoMKEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, m, c = cfg.width, len(cfg.modalities), cfg.n_classes
        self.input_proj = nn.ModuleDict(
            {k: nn.Linear(cfg.input_dims[k], d) for k in cfg.modalities}
        )
        self.pos = nn.ParameterDict(
            {k: nn.Parameter(torch.randn(cfg.max_tokens, d) * 0.02) for k in cfg.modalities}
        )
        self.input_drop = nn.Dropout(cfg.dropout)
        self.experts = ExpertBank(cfg)
        self.unimodal_heads = nn.ModuleDict({k: nn.Linear(d, c) for k in cfg.modalities})
        rh = cfg.router_hidden or d
        self.routers = nn.ModuleDict(
            {
                k: nn.Sequential(nn.Linear(d, rh), nn.GELU(), nn.Linear(rh, m))
                for k in cfg.modalities
            }
        )
        # Fusion as in the reference (u = ReLU(Linear(concat)); hidden = concat + u), plus the
        # presence flags so the head knows which slots are empty rather than inferring it.
        self.fuse = nn.Linear(m * d + m, m * d)
        self.fuse_drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(m * d, c)
        self.prior = nn.Parameter(torch.zeros(c))  # logits when no modality is present

    # -- parameter groups: the trainer freezes by group name (see engines/train.py) --
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {
            "input": [*self.input_proj.parameters(), *self.pos.parameters()],
            "experts": list(self.experts.parameters()),
            "unimodal_heads": list(self.unimodal_heads.parameters()),
            "routers": list(self.routers.parameters()),
            "fusion": [*self.fuse.parameters(), *self.head.parameters(), self.prior],
        }

    def _embed(self, name: str, x: Tensor) -> Tensor:
        t = x.shape[1]
        pos_idx = torch.arange(t, device=x.device).clamp(max=self.cfg.max_tokens - 1)
        return self.input_drop(self.input_proj[name](x) + self.pos[name][pos_idx])  # (B, T, D)

    def _route(self, name: str, h_pooled: Tensor, index: int) -> Tensor:
        b, m = h_pooled.shape[0], len(self.cfg.modalities)
        if self.cfg.router_mode == "soft":
            return torch.softmax(self.routers[name](h_pooled), dim=-1)  # (B, M)
        if self.cfg.router_mode == "average":
            return h_pooled.new_full((b, m), 1.0 / m)
        return F.one_hot(torch.full((b,), index, device=h_pooled.device), m).to(h_pooled.dtype)

    def forward(
        self,
        feats: dict[str, Tensor],
        token_mask: dict[str, Tensor],
        present: Tensor,
        stage: int = 2,
    ) -> MoMKEOutput:
        cfg = self.cfg
        m_all, d = len(cfg.modalities), cfg.width
        b = present.shape[0]
        pres = present.to(torch.float32)  # (B, M)
        unimodal: dict[str, Tensor] = {}
        fused_slots: list[Tensor] = []
        router_rows: list[Tensor] = []
        for i, name in enumerate(cfg.modalities):
            if name not in feats or self._skippable(present[:, i]):
                fused_slots.append(pres.new_zeros(b, d))
                router_rows.append(pres.new_zeros(b, m_all))
                continue
            mask = token_mask[name]
            # An absent sample's slot may hold anything (even NaN); 0 * NaN is NaN, so select.
            x = torch.where(present[:, i, None, None], feats[name], 0.0)
            h = self._embed(name, x)  # (B, T, D)
            bias = _causal_bias(mask)
            if stage == 1:
                own = self.experts(h, bias, slice(i, i + 1))[0]  # (B, T, D)
                unimodal[name] = self.unimodal_heads[name](_masked_mean(own, mask))
                continue
            outs = _masked_mean(self.experts(h, bias, slice(None)), mask)  # (E, B, D)
            unimodal[name] = self.unimodal_heads[name](outs[i])
            w = self._route(name, _masked_mean(h, mask), i)  # (B, E)
            mixed = torch.einsum("be,ebd->bd", w, outs)  # R^m = sum_e w_e * expert_e(h_m)
            fused_slots.append(mixed * pres[:, i : i + 1])
            router_rows.append(w * pres[:, i : i + 1])
        any_present = present.any(dim=1, keepdim=True)  # (B, 1)
        if stage == 1:
            logits = self._mean_unimodal(unimodal, pres, any_present)
            return MoMKEOutput(logits=logits, unimodal_logits=unimodal, router=None)
        concat = torch.cat(fused_slots, dim=-1)  # (B, M*D)
        u = self.fuse_drop(F.relu(self.fuse(torch.cat([concat, pres], dim=-1))))
        fused = self.head(concat + u)  # (B, C)
        logits = torch.where(any_present, fused, self.prior.expand_as(fused))
        router = torch.stack(router_rows, dim=1)  # (B, M, M)
        return MoMKEOutput(logits=logits, unimodal_logits=unimodal, router=router)

    def _skippable(self, present_col: Tensor) -> bool:
        # Skipping a modality absent from the whole batch saves its compute in eager mode; under
        # tracing/export the graph must not depend on values, so there only a missing key skips.
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return False
        return not bool(present_col.any())

    def _mean_unimodal(
        self, unimodal: dict[str, Tensor], pres: Tensor, any_present: Tensor
    ) -> Tensor:
        total = self.prior.new_zeros(pres.shape[0], self.cfg.n_classes)
        for i, name in enumerate(self.cfg.modalities):
            if name in unimodal:
                total = total + unimodal[name] * pres[:, i : i + 1]
        mean = total / pres.sum(1, keepdim=True).clamp(min=1.0)
        return torch.where(any_present, mean, self.prior.expand_as(mean))


# -- checkpoints: model args + state dict only, loadable with weights_only=True --
def save_checkpoint(path: str | Path, model: MoMKE, extra: dict[str, Any] | None = None) -> None:
    payload: dict[str, Any] = {"model_args": asdict(model.cfg), "state_dict": model.state_dict()}
    if extra:
        payload["extra"] = extra
    torch.save(payload, Path(path))


def load_checkpoint(path: str | Path) -> tuple[MoMKE, dict[str, Any]]:
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    model = MoMKE(MoMKEConfig.from_dict(payload["model_args"]))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, payload.get("extra", {})
