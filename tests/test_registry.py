"""The contract every registered model meets (engines/registry.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from engines.feature_export import (
    PARITY_TOLERANCE,
    PatternGraph,
    as_feature_model,
    export_pattern,
    input_names,
)
from engines.registry import REGISTRY

NAMES = sorted(REGISTRY)


def _patterns(n: int) -> list[tuple[int, ...]]:
    return [p for r in range(n + 1) for p in itertools.combinations(range(n), r)]


def test_registry_has_the_method_and_every_baseline() -> None:
    for name in (
        "momke",
        "momke-average-router",
        "momke-own-expert",
        "unimodal-audio",
        "unimodal-video",
        "unimodal-text",
        "late-fusion",
        "early-fusion-zero",
        "early-fusion-mean",
    ):
        assert name in REGISTRY


@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_finite_on_every_pattern_including_all_missing(name: str) -> None:
    model, batch = REGISTRY[name].build()
    n_mods = batch.present.shape[1]
    n_cls = batch.label_mask.shape[1]
    b = batch.labels.shape[0]
    with torch.no_grad():
        for p in _patterns(n_mods):
            present = torch.zeros_like(batch.present)
            present[:, list(p)] = True
            out = model(batch.with_present(present), 2)
            assert out.logits.shape == (b, n_cls), (name, p)
            assert torch.isfinite(out.logits).all(), (name, p)
            if out.router is not None:
                assert out.router.shape == (b, n_mods, n_mods)
                assert torch.isfinite(out.router).all()


@pytest.mark.parametrize("name", NAMES)
def test_absent_modality_content_is_ignored(name: str) -> None:
    model, batch = REGISTRY[name].build()
    present = batch.present.clone()
    present[:, 0] = False
    first = next(iter(batch.feats))
    with torch.no_grad():
        ref = model(batch.with_present(present), 2).logits
        feats = dict(batch.feats)
        feats[first] = torch.full_like(feats[first], 7.5)
        changed = model(
            type(batch)(**{**batch.__dict__, "feats": feats, "present": present}), 2
        ).logits
    assert torch.allclose(ref, changed, atol=1e-6), name


@pytest.mark.parametrize("name", [n for n in NAMES if REGISTRY[n].exportable])
def test_onnx_export_parity_on_every_pattern(name: str, tmp_path) -> None:
    import onnxruntime as ort

    model, batch = REGISTRY[name].build()
    momke = as_feature_model(model)
    mods = momke.cfg.modalities
    tokens = {m: batch.feats[m].shape[1] for m in mods}
    for p in _patterns(len(mods))[1:]:
        pattern = tuple(mods[i] for i in p)
        path = tmp_path / f"{'_'.join(pattern)}.onnx"
        export_pattern(momke, pattern, tokens, path)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = {}
        for m in pattern:
            feeds[f"{m}_tokens"] = batch.feats[m].numpy()
            feeds[f"{m}_mask"] = batch.token_mask[m].numpy()
        got = sess.run(None, feeds)
        with torch.no_grad():
            graph = PatternGraph(momke, pattern).eval()
            want = graph(*(torch.from_numpy(feeds[n]) for n in input_names(pattern)))
        for g, w in zip(got, want, strict=True):
            assert np.abs(g - w.numpy()).max() <= PARITY_TOLERANCE, (name, pattern)
