"""`cuda`: the PyTorch model on a CUDA GPU, replayed from CUDA graphs (where TensorRT is not).

At batch 1 this small model is launch-bound: eager PyTorch spends its time issuing a few hundred
tiny kernels. A CUDA graph records the kernel sequence once and replays it with one launch
(a probe of a 1.1 M-parameter bank on an H200: eager 0.69 ms, graph replay 0.11 ms at batch 1,
synchronize included). Graphs need static shapes and addresses, so each distinct input-shape
signature gets its own graph with static input buffers: at batch 1 that is one graph per
availability pattern (an absent modality has 0 rows, a present one 1), all captured in
`warmup()` before the daemon says READY. Other batch shapes (edge-eval, bench) are captured on
first use and kept in a bounded LRU.

Two details graphs force:
- no host synchronisation inside the forward: MoMKE's eager shortcut "skip a modality absent from
  the whole batch" reads a GPU value on the host (`bool(present.any())`), which capture forbids.
  Under capture the model takes the exported graph's path instead (compute, then mask by
  `present`), which export parity already shows equal to the eager path to 1e-4;
- TF32 is off by default (`EDGE_CUDA_TF32=1` turns it on): parity with the CPU reference is a
  gate, and this model is far too small for TF32 to matter for speed.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from engines.onnx_backend import BackendInputError
from engines.torch_backend import TorchBackend

MAX_GRAPHS = 32  # distinct shape signatures kept captured (8 patterns at batch 1 + batches)
WARMUP_RUNS = 3  # eager runs on a side stream before capture (cuDNN/cuBLAS pick algorithms)


def _never_skip(present_col: torch.Tensor) -> bool:
    return False


class _CapturedGraph:
    def __init__(self, graph: torch.cuda.CUDAGraph, inputs: list[torch.Tensor],
                 outputs: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.graph = graph
        self.inputs = inputs
        self.outputs = outputs


class CudaGraphBackend(TorchBackend):
    name = "cuda"

    def __init__(self, model_dir: Path, device: str = "cuda") -> None:
        if not torch.cuda.is_available():
            raise RuntimeError("the cuda backend needs a CUDA device (torch.cuda.is_available() "
                               "is False); use onnxruntime")
        super().__init__(model_dir)
        tf32 = os.environ.get("EDGE_CUDA_TF32", "0") == "1"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        self.device = torch.device(device)
        self.model.to(self.device)
        # capture cannot read GPU values on the host: take the export path (see docstring)
        setattr(self.model.core, "_skippable", _never_skip)  # noqa: B010 - instance override
        self.graphs: OrderedDict[tuple[tuple[int, ...], ...], _CapturedGraph] = OrderedDict()
        self.captures = 0
        self.status = f"cuda graphs on {torch.cuda.get_device_name(self.device)}"

    def _dtype(self, arr: np.ndarray) -> torch.dtype:
        return torch.from_numpy(arr[:0]).dtype

    def _capture(self, feeds: dict[str, np.ndarray]) -> _CapturedGraph:
        static = [torch.zeros(feeds[n].shape, dtype=self._dtype(feeds[n]), device=self.device)
                  for n in self.input_names]
        for buf, n in zip(static, self.input_names, strict=True):
            buf.copy_(torch.from_numpy(feeds[n]))  # real values: warm-up runs see real ranges
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.no_grad():
            with torch.cuda.stream(side):
                for _ in range(WARMUP_RUNS):
                    self.model(*static)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # a private memory pool per graph: graphs are replayed in any order, so sharing
            # one pool (safe only in capture order) is not worth the few MB it would save
            with torch.cuda.graph(graph):
                logits, router = self.model(*static)
        self.captures += 1
        return _CapturedGraph(graph, static, (logits, router))

    def run_graph(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise BackendInputError(f"missing graph inputs {missing}")
        signature = tuple(tuple(feeds[n].shape) for n in self.input_names)
        captured = self.graphs.get(signature)
        if captured is None:
            captured = self._capture(feeds)
            self.graphs[signature] = captured
            if len(self.graphs) > MAX_GRAPHS:
                self.graphs.popitem(last=False)
        else:
            self.graphs.move_to_end(signature)
            for buf, n in zip(captured.inputs, self.input_names, strict=True):
                if buf.numel():
                    buf.copy_(torch.from_numpy(feeds[n]), non_blocking=False)
        captured.graph.replay()
        logits, router = captured.outputs
        return logits.cpu().numpy(), router.cpu().numpy()  # .cpu() synchronises
