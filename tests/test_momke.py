"""MoMKE core: shapes, no NaN on every pattern, masking, causality, checkpoints."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch

from engines.momke import MoMKE, MoMKEConfig, load_checkpoint, save_checkpoint

MODS = ("audio", "video", "text")
DIMS = {"audio": 12, "video": 7, "text": 9}
T = {"audio": 6, "video": 3, "text": 1}


def make_model(**kw: object) -> MoMKE:
    torch.manual_seed(0)
    cfg = MoMKEConfig(modalities=MODS, input_dims=DIMS, n_classes=5, width=16, depth=2, **kw)  # type: ignore[arg-type]
    return MoMKE(cfg).eval()


def make_inputs(b: int = 4, seed: int = 1) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    feats = {m: torch.randn(b, T[m], DIMS[m], generator=g) for m in MODS}
    mask = {m: torch.ones(b, T[m], dtype=torch.bool) for m in MODS}
    mask["audio"][0, 4:] = False  # ragged: sample 0 has 4 real audio tokens
    return feats, mask


ALL_PATTERNS = [p for r in range(4) for p in itertools.combinations(range(3), r)]


@pytest.mark.parametrize("router_mode", ["soft", "average", "own"])
@pytest.mark.parametrize("stage", [1, 2])
def test_shapes_and_no_nan_for_every_pattern(router_mode: str, stage: int) -> None:
    model = make_model(router_mode=router_mode)
    feats, mask = make_inputs()
    for pattern in ALL_PATTERNS:
        present = torch.zeros(4, 3, dtype=torch.bool)
        present[:, list(pattern)] = True
        out = model(feats, mask, present, stage=stage)
        assert out.logits.shape == (4, 5)
        assert torch.isfinite(out.logits).all(), pattern
        assert set(out.unimodal_logits) == {MODS[i] for i in pattern}
        if stage == 2:
            assert out.router is not None and out.router.shape == (4, 3, 3)
            sums = out.router.sum(-1)  # rows of present modalities sum to 1, absent rows are 0
            expected = present.float()
            assert torch.allclose(sums, expected, atol=1e-6)


def test_all_missing_gives_the_learned_prior() -> None:
    model = make_model()
    with torch.no_grad():
        model.prior.copy_(torch.arange(5.0))
    feats, mask = make_inputs()
    present = torch.zeros(4, 3, dtype=torch.bool)
    present[1] = True  # another sample in the batch has everything
    out = model(feats, mask, present)
    assert torch.equal(out.logits[0], torch.arange(5.0))
    assert not torch.equal(out.logits[1], torch.arange(5.0))
    # also when the modality keys are not passed at all
    out2 = model({}, {}, torch.zeros(2, 3, dtype=torch.bool))
    assert torch.equal(out2.logits, torch.arange(5.0).expand(2, 5))


def test_absent_modality_does_not_influence_output() -> None:
    model = make_model()
    feats, mask = make_inputs()
    present = torch.tensor([[True, False, True]] * 4)
    ref = model(feats, mask, present).logits
    poisoned = dict(feats)
    poisoned["video"] = torch.full_like(feats["video"], 1e6)  # garbage (even NaN-free huge)
    assert torch.equal(model(poisoned, mask, present).logits, ref)
    poisoned["video"] = torch.full_like(feats["video"], float("nan"))
    assert torch.equal(model(poisoned, mask, present).logits, ref)
    # not passing the absent modality at all (the fast path) gives the same numbers
    skipped = {k: v for k, v in feats.items() if k != "video"}
    assert torch.allclose(model(skipped, mask, present).logits, ref, atol=1e-6)


def test_absent_in_one_sample_does_not_leak_across_the_batch() -> None:
    model = make_model()
    feats, mask = make_inputs()
    present = torch.ones(4, 3, dtype=torch.bool)
    present[2, 0] = False
    ref = model(feats, mask, present).logits
    changed = {k: v.clone() for k, v in feats.items()}
    changed["audio"][2] = float("nan")
    out = model(changed, mask, present).logits
    assert torch.equal(out, ref)


def test_padding_does_not_change_output() -> None:
    model = make_model()
    feats, mask = make_inputs(b=1)
    present = torch.ones(1, 3, dtype=torch.bool)
    mask["audio"][:] = True
    short = dict(feats)
    short["audio"] = feats["audio"][:, :4]
    short_mask = dict(mask)
    short_mask["audio"] = mask["audio"][:, :4]
    ref = model(short, short_mask, present).logits
    padded_mask = dict(mask)
    padded_mask["audio"] = mask["audio"].clone()
    padded_mask["audio"][:, 4:] = False
    padded = dict(feats)
    padded["audio"] = feats["audio"].clone()
    padded["audio"][:, 4:] = 123.0  # whatever sits in padding
    assert torch.allclose(model(padded, padded_mask, present).logits, ref, atol=1e-5)


def test_expert_token_states_are_causal() -> None:
    model = make_model()
    h = torch.randn(2, 6, 16)
    mask = torch.ones(2, 6, dtype=torch.bool)
    from engines.momke import _causal_bias

    out = model.experts(h, _causal_bias(mask), slice(None))  # (E, B, T, D)
    h2 = h.clone()
    h2[:, 4:] = torch.randn(2, 2, 16)  # change the future
    out2 = model.experts(h2, _causal_bias(mask), slice(None))
    assert torch.allclose(out[:, :, :4], out2[:, :, :4], atol=1e-6)
    assert not torch.allclose(out[:, :, 4:], out2[:, :, 4:])


def test_stage1_uses_only_own_expert() -> None:
    model = make_model()
    feats, mask = make_inputs()
    present = torch.ones(4, 3, dtype=torch.bool)
    ref = model(feats, mask, present, stage=1).unimodal_logits["audio"]
    with torch.no_grad():  # perturb the video expert's parameters only (index 1 in every stack)
        for p in model.experts.parameters():
            p[1].add_(1.0)
    assert torch.equal(model(feats, mask, present, stage=1).unimodal_logits["audio"], ref)


def test_gradients_reach_every_group_in_stage2() -> None:
    model = make_model().train()
    feats, mask = make_inputs()
    present = torch.ones(4, 3, dtype=torch.bool)
    out = model(feats, mask, present)
    (out.logits.sum() + sum(v.sum() for v in out.unimodal_logits.values())).backward()
    for name, params in model.parameter_groups().items():
        if name == "fusion":
            params = params[:-1]  # the prior only gets gradient from all-missing samples
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params), name


def test_checkpoint_round_trip_weights_only(tmp_path) -> None:
    model = make_model()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, extra={"labels": ["a", "b", "c", "d", "e"]})
    loaded, extra = load_checkpoint(path)
    assert loaded.cfg == model.cfg
    assert extra["labels"][0] == "a"
    feats, mask = make_inputs()
    present = torch.ones(4, 3, dtype=torch.bool)
    assert torch.equal(loaded(feats, mask, present).logits, model(feats, mask, present).logits)


def test_config_validation() -> None:
    cfg = MoMKEConfig(modalities=MODS, input_dims=DIMS, n_classes=5)
    with pytest.raises(ValueError, match="order"):
        replace(cfg, modalities=("video", "audio"))
    with pytest.raises(ValueError, match="input_dims"):
        MoMKEConfig(modalities=MODS, input_dims={"audio": 3}, n_classes=5)
    with pytest.raises(ValueError, match="router_mode"):
        replace(cfg, router_mode="hard")
