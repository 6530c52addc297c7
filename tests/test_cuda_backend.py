"""engines/cuda_backend.py: PyTorch + CUDA graphs, one per availability pattern at batch 1.

Needs a CUDA GPU (the GPU test machine has PyTorch with CUDA); skips elsewhere, saying so.
The one test that runs everywhere else checks the clear error a CPU-only host gets.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from calibration.parity import check_parity
from engines.backend import MODALITIES, WindowInputs, load_backend
from tests.int8_support import TINY

HAVE_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAVE_CUDA, reason="needs a CUDA GPU")


def _window(seed: int) -> WindowInputs:
    rng = np.random.default_rng(seed)
    return WindowInputs(audio=(rng.standard_normal(32000) * 2500).astype(np.int16),
                        video=rng.integers(0, 255, (8, 48, 48), dtype=np.uint8),
                        text=("why would you do that",))


@pytest.mark.skipif(HAVE_CUDA, reason="a CUDA GPU is present")
def test_without_cuda_the_error_says_so() -> None:
    with pytest.raises(RuntimeError, match="CUDA device"):
        load_backend(TINY, "cuda")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.timeout(300)
def test_warmup_captures_one_graph_per_pattern_and_replays_them() -> None:
    from engines.cuda_backend import CudaGraphBackend

    engine = load_backend(TINY, "cuda")
    assert isinstance(engine, CudaGraphBackend)
    engine.warmup()
    patterns = [p for r in range(len(MODALITIES) + 1)
                for p in itertools.combinations(MODALITIES, r)]
    assert len(engine.graphs) == len(patterns) == engine.captures
    reference = load_backend(TINY, "torch")
    for seed, pattern in enumerate(patterns):
        window = WindowInputs(**{m: getattr(_window(seed), m) for m in pattern})
        got, want = engine.predict(window), reference.predict(window)
        assert got.used == want.used
        np.testing.assert_allclose(got.probs, want.probs, atol=1e-3)
        for m in pattern:
            for e, w in want.router[m].items():
                assert got.router[m][e] == pytest.approx(w, abs=1e-3)
    assert engine.captures == len(patterns)  # replays only: nothing captured again


@pytest.mark.gpu
@needs_cuda
@pytest.mark.timeout(300)
def test_parity_gate_against_torch_on_cpu() -> None:
    report = check_parity(Path(TINY), backends=("cuda",))
    assert report["cuda"]["status"] == "passed", report["cuda"]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.timeout(300)
def test_graph_cache_is_bounded() -> None:
    from engines.cuda_backend import MAX_GRAPHS, CudaGraphBackend

    engine = load_backend(TINY, "cuda")
    assert isinstance(engine, CudaGraphBackend)
    for n in range(1, MAX_GRAPHS + 6):
        feeds = engine.featurise([_window(n)] * n)
        logits, _ = engine.run_graph(feeds)
        assert logits.shape[0] == n and np.isfinite(logits).all()
    assert len(engine.graphs) == MAX_GRAPHS
