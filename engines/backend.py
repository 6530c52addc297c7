"""The one interface between the runtime (`edge/`) and the expert bank.

The daemon hands a backend what its window holds for each modality (raw samples, face crops,
utterances) plus which modalities are present; the backend runs the front-ends, the experts,
the soft routers and the fusion head, applies the availability pattern's calibration
temperature, and returns probabilities and router weights. `edge/` imports this module and
`engines.manifest` only; everything behind `load_backend` may import torch, onnxruntime or
TensorRT lazily, so that the default install (onnxruntime on CPU) never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

MODALITIES: tuple[str, ...] = ("audio", "video", "text")

# Raw input conventions the capture processes and the front-ends agree on.
AUDIO_RATE_HZ = 16_000  # mono int16 samples
FACE_SIZE = 48  # grayscale uint8 face crops, FACE_SIZE x FACE_SIZE


def pattern_key(present: tuple[str, ...] | list[str] | set[str]) -> str:
    """Availability pattern name: present modalities joined by '+' in MODALITIES order."""
    return "+".join(m for m in MODALITIES if m in present)


@dataclass(frozen=True, kw_only=True)
class WindowInputs:
    """What one event-time window holds, per modality. None = not available in this window.

    audio: int16 mono samples at AUDIO_RATE_HZ, shape (n_samples,), in capture order.
    video: uint8 face crops, shape (n_frames, FACE_SIZE, FACE_SIZE), in capture order.
    text:  utterances (transcript lines) stamped inside the window, in order.
    """

    audio: np.ndarray | None = None
    video: np.ndarray | None = None
    text: tuple[str, ...] | None = None
    # The speaker's running log-mel centre (engines.features.SpeakerNormaliser) from audio
    # before this window; used only by models trained with audio_speaker_norm.
    audio_centre: np.ndarray | None = None

    def present(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if getattr(self, m) is not None)

    @classmethod
    def pick(cls, sources: Mapping[str, WindowInputs]) -> WindowInputs:
        """Modality -> the window it comes from (a SYNTHETIC pairing may draw each modality from
        another window); the audio centre travels with the audio."""
        audio = sources.get("audio")
        return cls(**{m: getattr(w, m) for m, w in sources.items()},
                   audio_centre=None if audio is None else audio.audio_centre)

    def only(self, modalities: Iterable[str]) -> WindowInputs:
        """This window with only `modalities` (and the audio centre if audio stays)."""
        return WindowInputs.pick({m: self for m in modalities})


@dataclass(frozen=True, kw_only=True)
class Prediction:
    """A calibrated estimate for one window.

    probs:  calibrated class probabilities, shape (n_labels,), sums to 1.
    router: for each *used* modality, its soft router's weights over the experts
            (expert name -> weight; weights sum to 1).
    used:   the modalities that entered the model, in MODALITIES order.
    """

    probs: np.ndarray
    router: dict[str, dict[str, float]] = field(default_factory=dict)
    used: tuple[str, ...] = ()


class Backend(Protocol):
    """An inference engine for one exported model (onnxruntime, torch, TensorRT, CUDA)."""

    name: str  # e.g. "onnxruntime"
    labels: tuple[str, ...]  # class names, index-aligned with Prediction.probs

    def warmup(self) -> None:
        """Run every availability pattern once so the first real window pays no setup cost."""
        ...

    def predict(self, inputs: WindowInputs) -> Prediction:
        """Estimate from the present modalities; with none present, return the prior."""
        ...


BackendFactory = Callable[[Path], Backend]
_REGISTRY: dict[str, str] = {
    # backend name -> "module:factory"; imported only when chosen.
    "onnxruntime": "engines.onnx_backend:OnnxBackend",
    "torch": "engines.torch_backend:TorchBackend",
    # The GPU path (engines/tensorrt_backend.py, engines/cuda_backend.py) and the QDQ INT8 graph
    # that calibration/quantize.py writes beside model.onnx. The TensorRT factories fall back to
    # onnxruntime (with a log line and a `status`) where TensorRT or a GPU is missing.
    "onnxruntime-int8": "engines.onnx_backend:OnnxInt8Backend",
    "cuda": "engines.cuda_backend:CudaGraphBackend",
    "tensorrt": "engines.tensorrt_backend:tensorrt_fp16",
    "tensorrt-int8": "engines.tensorrt_backend:tensorrt_int8",
}


def available_backends() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def load_backend(model_dir: str | Path, kind: str = "onnxruntime") -> Backend:
    """Load the exported model in `model_dir` (model.onnx + manifest.json) on backend `kind`."""
    if kind not in _REGISTRY:
        raise ValueError(f"unknown backend {kind!r}; choose one of {', '.join(_REGISTRY)}")
    import importlib

    module_name, attr = _REGISTRY[kind].split(":")
    factory: BackendFactory = getattr(importlib.import_module(module_name), attr)
    return factory(Path(model_dir))
