"""OnnxBackend / TorchBackend on the tiny model exported by the real CLI (tests/assets)."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from engines.backend import MODALITIES, WindowInputs, load_backend, pattern_key
from engines.datasets import LABELS, synthetic_windows
from engines.manifest import Manifest, ManifestError
from engines.onnx_backend import BackendInputError, OnnxBackend, softmax_with_temperature

TINY = Path(__file__).parent / "assets" / "tiny_model"
SAMPLE = synthetic_windows(3, seed=5).windows[0]
PATTERNS = [p for r in range(len(MODALITIES) + 1) for p in itertools.combinations(MODALITIES, r)]


def _window(pattern: tuple[str, ...]) -> WindowInputs:
    return WindowInputs(**{m: getattr(SAMPLE, m) for m in pattern})


@pytest.fixture(scope="module")
def onnx_backend() -> OnnxBackend:
    backend = load_backend(TINY, "onnxruntime")
    assert isinstance(backend, OnnxBackend)
    backend.warmup()
    return backend


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: pattern_key(p) or "none")
def test_every_pattern_gives_a_distribution_and_router_rows(onnx_backend, pattern) -> None:
    pred = onnx_backend.predict(_window(pattern))
    assert onnx_backend.labels == LABELS
    assert pred.probs.shape == (len(LABELS),) and np.isfinite(pred.probs).all()
    assert abs(float(pred.probs.sum()) - 1.0) < 1e-5
    assert pred.used == pattern
    assert set(pred.router) == set(pattern)
    for weights in pred.router.values():
        assert set(weights) == set(MODALITIES)
        assert abs(sum(weights.values()) - 1.0) < 1e-5


def test_all_missing_is_the_learned_prior_whatever_else(onnx_backend) -> None:
    first = onnx_backend.predict(WindowInputs()).probs
    again = onnx_backend.predict(WindowInputs()).probs
    assert np.array_equal(first, again)
    assert not onnx_backend.predict(WindowInputs()).router


def test_an_absent_modality_does_not_influence_the_estimate(onnx_backend) -> None:
    # Same audio, different (absent) video: identical output, because absent rows are not fed.
    a = onnx_backend.predict(WindowInputs(audio=SAMPLE.audio)).probs
    feeds, used = onnx_backend.feeds(WindowInputs(audio=SAMPLE.audio))
    assert used == ("audio",)
    assert feeds["video_frames"].shape[0] == 0 and feeds["text_ids"].shape[0] == 0
    assert np.array_equal(a, onnx_backend.predict(WindowInputs(audio=SAMPLE.audio)).probs)
    assert not np.allclose(a, onnx_backend.predict(_window(("audio", "video"))).probs)


def test_torch_reference_matches_onnxruntime() -> None:
    ort_b, torch_b = load_backend(TINY, "onnxruntime"), load_backend(TINY, "torch")
    for pattern in PATTERNS:
        p_ort = ort_b.predict(_window(pattern))
        p_torch = torch_b.predict(_window(pattern))
        assert np.max(np.abs(p_ort.probs - p_torch.probs)) < 1e-4
        assert p_ort.used == p_torch.used


def test_the_pattern_temperature_is_applied(tmp_path) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(TINY, model_dir)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["temperatures"] = {"text": 4.0}
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    hot = OnnxBackend(model_dir)
    feeds, _ = hot.feeds(_window(("text",)))
    logits, _ = hot.run_graph(feeds)
    expected = softmax_with_temperature(logits[0], 4.0)
    assert np.allclose(hot.predict(_window(("text",))).probs, expected, atol=1e-6)
    assert not np.allclose(expected, softmax_with_temperature(logits[0], 1.0))


@pytest.mark.parametrize("bad", [
    WindowInputs(audio=np.zeros(100, np.float32)),
    WindowInputs(video=np.zeros((2, 32, 32), np.uint8)),
    WindowInputs(text=(b"not str",)),  # type: ignore[arg-type]
])
def test_bad_input_is_a_typed_error(onnx_backend, bad) -> None:
    with pytest.raises(BackendInputError):
        onnx_backend.predict(bad)


def test_broken_model_dirs_are_clear_errors(tmp_path) -> None:
    with pytest.raises(ManifestError):
        OnnxBackend(tmp_path)
    shutil.copytree(TINY, tmp_path / "m")
    (tmp_path / "m" / "tokenizer.json").unlink()
    with pytest.raises(ManifestError, match="tokenizer"):
        OnnxBackend(tmp_path / "m")
    (tmp_path / "m" / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError):
        Manifest.load(tmp_path / "m")


def _overlapping_windows(n_windows: int = 10) -> list[WindowInputs]:
    """Windows sliding over one stream of crops as the daemon cuts them (hop = 5 crops), with
    short (padded), long (subsampled) and crop-less windows among them."""
    rng = np.random.default_rng(11)
    crops = rng.integers(0, 255, (5 * n_windows + 40, 48, 48), dtype=np.uint8)
    audio = (rng.standard_normal(16_000 * 2) * 2000).astype(np.int16)
    windows = []
    for k in range(n_windows):
        n = (20, 7, 33, 20, 0)[k % 5]
        video = crops[5 * k: 5 * k + n] if n else None
        windows.append(WindowInputs(audio=audio, video=video, text=("what a day",)))
    return windows


def test_the_crop_cache_gives_the_whole_graphs_answer_and_encodes_each_crop_once() -> None:
    cached, whole = OnnxBackend(TINY), OnnxBackend(TINY, token_cache=False)
    # the tiny model's compact text encoder is not worth a cut: only the faces are cached
    assert cached.crops is not None and cached.status == "token caches: video"
    assert whole.crops is None and whole.status == "token caches: off"
    windows = _overlapping_windows()
    for window in windows:
        a, b = cached.predict(window), whole.predict(window)
        # one crop alone through the encoder is what the whole graph computes for it
        np.testing.assert_allclose(a.probs, b.probs, rtol=0, atol=1e-6)
        for modality, weights in b.router.items():
            assert a.router[modality] == pytest.approx(weights, abs=1e-6)
    distinct = {c.tobytes() for w in windows if w.video is not None for c in w.video}
    # every distinct crop (at most: the subsampled ones skip some) and the padding slot
    assert cached.crops.misses <= len(distinct) + 1
    assert cached.crops.hits > cached.crops.misses  # windows overlap: most crops are reused


def test_the_crop_cache_is_bounded_and_safe_across_threads() -> None:
    from concurrent.futures import ThreadPoolExecutor

    backend = OnnxBackend(TINY)
    assert backend.crops is not None
    backend.crops.max_rows = 16
    windows = _overlapping_windows(12)
    serial = [OnnxBackend(TINY).predict(w).probs for w in windows]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda w: backend.predict(w).probs, windows * 3))
    for i, probs in enumerate(parallel):
        np.testing.assert_array_equal(probs, serial[i % len(windows)])
    assert len(backend.crops._tokens) <= 16
