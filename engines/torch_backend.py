"""`TorchBackend(model_dir)`: the reference implementation of the same exported model.

Runs the PyTorch checkpoint the ONNX graph was exported from (`live.pt` beside the manifest, or
the path in EDGE_TORCH_CHECKPOINT) through the same featurisation and temperature as
`OnnxBackend`, so any difference between the two is the graph, not the pre/post-processing.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from engines.manifest import ManifestError, sha256_file
from engines.onnx_backend import FeaturisingBackend

CHECKPOINT_NAME = "live.pt"


class TorchBackend(FeaturisingBackend):
    name = "torch"

    def __init__(self, model_dir: Path) -> None:
        super().__init__(model_dir)
        from engines.live import load_live_checkpoint

        path = Path(os.environ.get("EDGE_TORCH_CHECKPOINT", self.model_dir / CHECKPOINT_NAME))
        if not path.is_file():
            raise ManifestError(f"torch backend needs the checkpoint {path}")
        if self.manifest.checkpoint_sha256 and sha256_file(path) != self.manifest.checkpoint_sha256:
            raise ManifestError(f"{path} is not the checkpoint this model was exported from")
        self.model, _ = load_live_checkpoint(path)
        torch.set_num_threads(1)

    def run_graph(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            logits, router = self.model(*(torch.from_numpy(feeds[n]) for n in self.input_names))
        return logits.numpy(), router.numpy()
