"""Model registry: every model family we train or ship, with an example batch.

tests/test_registry.py runs the same contract over every entry (shapes, finite outputs on every
availability pattern including all-missing, absent modalities ignored, ONNX export parity
where the entry is exportable), so a new entry gets those tests without anyone writing them.
Register with `register(name, build, exportable=...)`; `build()` returns (model, example batch)
where the model follows engines.train.Trainable. The MoMKE ablations without stage 1 / without
the mixing stage are the "momke" entry trained differently (`skip_stage1`) or the
"momke-own-expert" entry.
The live model (raw windows in, `engines/live.py`) meets its own contract in
tests/test_live_model.py, tests/test_export_parity.py and tests/test_parity.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from engines.baselines import build_model, load_model
from engines.train import Batch

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Entry:
    name: str
    build: Callable[[], tuple[nn.Module, Batch]]
    exportable: bool  # MoMKE models: engines.feature_export graphs must match torch
    description: str = ""


REGISTRY: dict[str, Entry] = {}


def register(
    name: str,
    build: Callable[[], tuple[nn.Module, Batch]],
    *,
    exportable: bool,
    description: str = "",
) -> None:
    if name in REGISTRY:
        raise ValueError(f"registry entry {name!r} exists")
    REGISTRY[name] = Entry(name, build, exportable, description)


def example_batch(
    modalities: tuple[str, ...],
    dims: dict[str, int],
    tokens: dict[str, int],
    n_classes: int,
    b: int = 3,
) -> Batch:
    gen = torch.Generator().manual_seed(0)
    feats = {m: torch.randn(b, tokens[m], dims[m], generator=gen) for m in modalities}
    mask = {m: torch.ones(b, tokens[m], dtype=torch.bool) for m in modalities}
    for m in modalities:
        if tokens[m] > 1:
            mask[m][0, tokens[m] // 2 :] = False  # one ragged sample
    return Batch(
        feats=feats,
        token_mask=mask,
        present=torch.ones(b, len(modalities), dtype=torch.bool),
        labels=torch.zeros(b, dtype=torch.long),
        label_mask=torch.ones(b, n_classes, dtype=torch.bool),
    )


_MODS = ("audio", "video", "text")
_DIMS = {"audio": 10, "video": 12, "text": 8}
_TOKENS = {"audio": 6, "video": 3, "text": 2}


def _builder(kind: str, **args: object) -> Callable[[], tuple[nn.Module, Batch]]:
    def build() -> tuple[nn.Module, Batch]:
        torch.manual_seed(0)
        margs = {"width": 16, **args}
        model = build_model(kind, margs, modalities=_MODS, input_dims=_DIMS, n_classes=7)
        return model.eval(), example_batch(_MODS, _DIMS, _TOKENS, 7)

    return build


def _shipped_ravdess() -> tuple[nn.Module, Batch]:
    model, meta = load_model(REPO / "models" / "ravdess" / "checkpoint.pt")
    dims = {m: int(d) for m, d in meta["input_dims"].items()}
    n_tok = (
        int(meta["data_config"].get("n_segments", 8))
        if meta["data_config"].get("audio_tokens") == "segments"
        else 1
    )
    mods = tuple(meta["modalities"])
    return model, example_batch(mods, dims, {"audio": n_tok, "video": 1}, int(meta["n_classes"]))


register("momke", _builder("momke", depth=2), exportable=True, description="MoMKE, soft routers")
register("momke-average-router", _builder("momke", router_mode="average"), exportable=True)
register("momke-own-expert", _builder("momke", router_mode="own"), exportable=True)
register("unimodal-audio", _builder("unimodal", modality="audio"), exportable=False)
register("unimodal-video", _builder("unimodal", modality="video"), exportable=False)
register("unimodal-text", _builder("unimodal", modality="text"), exportable=False)
register("late-fusion", _builder("late_fusion"), exportable=False)
register("early-fusion-zero", _builder("early_fusion", impute="zero"), exportable=False)
register("early-fusion-mean", _builder("early_fusion", impute="mean"), exportable=False)
if (REPO / "models" / "ravdess" / "checkpoint.pt").exists():
    register("ravdess-shipped", _shipped_ravdess, exportable=True, description="models/ravdess")
