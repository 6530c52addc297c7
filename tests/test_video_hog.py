"""The in-graph HOG branch of the face front-end: invariances, discrimination, ONNX parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.datasets import synthetic_windows
from engines.export import check_parity, export_onnx
from engines.features import Tokenizer
from engines.frontends import HOG
from engines.live import LiveModel, LiveModelConfig


def _faces(seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:48, 0:48]
    img = np.sin(xx / (3 + seed)) + np.cos(yy / 5.0) + 0.1 * rng.standard_normal((48, 48))
    return torch.tensor(img, dtype=torch.float32)[None, None]  # (1, 1, 48, 48)


def test_hog_is_blind_to_brightness_and_contrast_but_not_to_shape() -> None:
    hog = HOG()
    x = _faces(0)
    with torch.no_grad():
        base, relit, other = hog(x), hog(2.5 * x + 0.7), hog(_faces(4))
    assert base.shape == (1, 900) and torch.isfinite(base).all()
    assert torch.allclose(base, relit, atol=1e-3)  # block normalisation removes gain/offset
    assert (base - other).abs().max() > 0.05


def test_hog_orientation_bins_follow_the_edge_direction() -> None:
    hog = HOG()
    vertical = torch.zeros(1, 1, 48, 48)
    vertical[..., 24:] = 1.0  # vertical edge: horizontal gradient, theta = 0 -> bin 0
    horizontal = vertical.transpose(2, 3)  # theta = 90 degrees -> bin 4 or 5
    with torch.no_grad():
        v = hog(vertical).view(4, 9, 25).sum((0, 2))  # (cells, bins, blocks)
        h = hog(horizontal).view(4, 9, 25).sum((0, 2))
    assert int(v.argmax()) == 0
    assert int(h.argmax()) in (4, 5)


def test_hog_cell_sizes_concatenate_and_must_tile_the_crop() -> None:
    x = _faces(1)
    with torch.no_grad():
        coarse, both = HOG()(x), HOG((8, 4))(x)
    assert HOG((8, 4)).n_out == both.shape[1] == 900 + 36 * 11 * 11
    assert torch.equal(both[:, :900], coarse)  # the 8-pixel blocks come first, unchanged
    with pytest.raises(ValueError, match="divide 48"):
        HOG((5,))


def test_cnn_plus_hog_live_model_with_ensemble_front_ends_exports_with_parity(tmp_path) -> None:
    raw = synthetic_windows(8, seed=1)
    tok = Tokenizer.fit([t for w in raw.windows for t in (w.text or ())], min_count=1,
                        n_bigram_buckets=16)
    model = LiveModel(LiveModelConfig(
        token_dim=8, frontend_width={"audio": 4, "video": 4, "text": 4}, text_vocab=tok.n_ids,
        text_embed=8, video_branches="cnn+hog", hog_cells=(8, 4),
        frontend_members={"audio": 2, "video": 2},
        momke={"width": 8, "depth": 1, "heads": 2, "max_tokens": 64})).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # non-trivial weights in the HOG projection
        for member in model.frontends["video"].members:  # type: ignore[union-attr]
            member.hog[2].weight.normal_()
    export_onnx(model, tmp_path / "model.onnx")
    report = check_parity(model, tmp_path / "model.onnx", tok, None)
    assert report["max_abs_diff"] <= 1e-4
