"""The live model: the three front-ends (engines.frontends) feeding one MoMKE (engines.momke).

Graph inputs carry one batch axis *per modality*: modality m's arrays hold rows only for the
samples where m is present (present[:, m]), in sample order. Absent modalities therefore run
their front-end on zero rows, which costs nothing in onnxruntime, and the front-ends are the
expensive part of the graph. Inside the graph each modality's tokens are scattered back to the
full batch (zero rows for absent samples, which MoMKE masks out via `present`).

  audio_logmel (Ba, 40, 198) float32          video_frames (Bv, 20, 48, 48) float32
  video_mask   (Bv, 20) bool                  text_ids (Bt, 64) int64, text_mask (Bt, 64) bool
  present      (B, 3) bool                     -> logits (B, 7), router (B, 3, 3)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from engines.backend import MODALITIES
from engines.datasets import LABELS
from engines.frontends import INPUT_SHAPES, FrontendConfig, build_frontend, run_frontend
from engines.momke import MoMKE, MoMKEConfig, MoMKEOutput
from engines.onnx_graph import FP16_STORAGE_MIN_SIZE

DEFAULT_DROPOUT = 0.2


@dataclass(frozen=True, kw_only=True)
class LiveModelConfig:
    modalities: tuple[str, ...] = MODALITIES
    labels: tuple[str, ...] = LABELS
    token_dim: int = 64  # front-end output = MoMKE input dim
    frontend_width: dict[str, int] = field(
        default_factory=lambda: {"audio": 32, "video": 16, "text": 32})
    # one rate for every front-end, or per modality ({"audio": 0.3}; unnamed ones get
    # DEFAULT_DROPOUT)
    frontend_dropout: float | dict[str, float] = DEFAULT_DROPOUT
    text_vocab: int = 0  # the tokenizer's n_ids; required when "text" is in modalities
    text_embed: int = 64
    text_encoder: str = "compact"  # FrontendConfig.text_encoder: "compact" or "minilm"
    audio_norm: str = "window"
    audio_stats: bool = True
    # Featurisation contract, not a layer: log-mel centred by the speaker's past
    # (engines.features.SpeakerNormaliser); export writes it to the manifest's `features`.
    audio_speaker_norm: bool = False
    video_branches: str = "cnn"  # FrontendConfig.video_branches
    hog_cells: tuple[int, ...] = (8,)  # FrontendConfig.hog_cells
    # independently trained copies per front-end (FrontendConfig.members); absent = 1
    frontend_members: dict[str, int] = field(default_factory=dict)
    momke: dict[str, Any] = field(default_factory=dict)  # MoMKEConfig kwargs beyond the shapes

    def __post_init__(self) -> None:
        object.__setattr__(self, "modalities", tuple(self.modalities))
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "hog_cells", tuple(self.hog_cells))
        if list(self.modalities) != [m for m in MODALITIES if m in self.modalities]:
            raise ValueError(f"modalities must be a subset of {MODALITIES} in that order")

    def dropout(self, modality: str) -> float:
        if isinstance(self.frontend_dropout, dict):
            return float(self.frontend_dropout.get(modality, DEFAULT_DROPOUT))
        return float(self.frontend_dropout)

    def frontend_config(self, modality: str) -> FrontendConfig:
        return FrontendConfig(n_classes=len(self.labels), width=self.frontend_width[modality],
                              dim=self.token_dim, dropout=self.dropout(modality),
                              text_vocab=self.text_vocab, text_embed=self.text_embed,
                              text_encoder=self.text_encoder,
                              audio_norm=self.audio_norm, audio_stats=self.audio_stats,
                              video_branches=self.video_branches, hog_cells=self.hog_cells,
                              members=self.frontend_members.get(modality, 1))

    def momke_config(self) -> MoMKEConfig:
        return MoMKEConfig(modalities=self.modalities, n_classes=len(self.labels),
                           input_dims={m: self.token_dim * self.frontend_members.get(m, 1)
                                       for m in self.modalities},
                           **self.momke)


def input_names(modalities: tuple[str, ...]) -> list[str]:
    return [name for m in modalities for name in INPUT_SHAPES[m]] + ["present"]


def scatter_rows(rows: Tensor, present_col: Tensor) -> Tensor:
    """(Bm, ...) rows of the present samples -> (B, ...) with zeros where absent.

    Index 0 of the padded table is a zero row; sample b takes row cumsum(present)[b] if present,
    else 0. Gather-only, so it exports to ONNX and works for Bm = 0.
    """
    table = torch.cat([rows.new_zeros((1, *rows.shape[1:])), rows], dim=0)  # (1 + Bm, ...)
    flags = present_col.to(torch.int64)  # (B,)
    return table.index_select(0, torch.cumsum(flags, 0) * flags)


class LiveModel(nn.Module):
    def __init__(self, cfg: LiveModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.frontends = nn.ModuleDict(
            {m: build_frontend(m, cfg.frontend_config(m)) for m in cfg.modalities})
        self.core = MoMKE(cfg.momke_config())
        self.input_names = input_names(cfg.modalities)

    def encode(self, inputs: dict[str, Tensor], present: Tensor
               ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Front-ends on each modality's present rows, scattered to the full batch."""
        feats: dict[str, Tensor] = {}
        masks: dict[str, Tensor] = {}
        for i, m in enumerate(self.cfg.modalities):
            first_input = inputs[next(iter(INPUT_SHAPES[m]))]
            if not _exporting() and first_input.shape[0] == 0:
                continue  # eager: nothing present for this modality in the batch
            tokens, mask = run_frontend(self.frontends[m], m, inputs)
            feats[m] = scatter_rows(tokens, present[:, i])  # (B, T, D)
            masks[m] = scatter_rows(mask, present[:, i])  # (B, T)
        return feats, masks

    def run(self, inputs: dict[str, Tensor], present: Tensor, stage: int = 2) -> MoMKEOutput:
        feats, masks = self.encode(inputs, present)
        return self.core(feats, masks, present, stage=stage)

    def forward(self, *tensors: Tensor) -> tuple[Tensor, Tensor]:
        """Positional inputs in `self.input_names` order (the ONNX signature)."""
        named = dict(zip(self.input_names, tensors, strict=True))
        out = self.run(named, named["present"])
        assert out.router is not None
        return out.logits, out.router


def round_large_weights_to_fp16(module: nn.Module) -> int:
    """Round every float parameter of at least FP16_STORAGE_MIN_SIZE values to the nearest FP16
    value (kept in FP32); -> how many. Why: the fine-tuned MiniLM text encoder is 22 M
    parameters, 90 MB in FP32; rounded, its files are half that, and it still computes in FP32.
    """
    n = 0
    with torch.no_grad():
        for p in module.parameters():
            if p.dtype == torch.float32 and p.numel() >= FP16_STORAGE_MIN_SIZE:
                p.copy_(p.half().float())
                n += 1
    return n


def _storage_form(t: Tensor) -> Tensor:
    exact = (t.dtype == torch.float32 and t.numel() >= FP16_STORAGE_MIN_SIZE
             and torch.equal(t.half().float(), t))
    return t.half() if exact else t


def save_live_checkpoint(path: Path, model: LiveModel, extra: dict[str, Any]) -> None:
    state = {k: _storage_form(v) for k, v in model.state_dict().items()}  # lossless
    torch.save({"model_args": asdict(model.cfg), "state_dict": state, "extra": extra}, path)


def load_live_checkpoint(path: Path) -> tuple[LiveModel, dict[str, Any]]:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    model = LiveModel(LiveModelConfig(**payload["model_args"]))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, dict(payload.get("extra", {}))


def _exporting() -> bool:
    # Under export the graph must not depend on batch sizes; only eager code may skip.
    return bool(torch.jit.is_tracing() or torch.compiler.is_compiling())
