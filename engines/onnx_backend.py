"""`OnnxBackend(model_dir)`: the live model on onnxruntime (CPU by default).

Featurises a `WindowInputs` in numpy (engines.features, the same code training used), feeds only
the present modalities' rows (an absent modality's front-end runs on zero rows, i.e. is not
computed), applies the availability pattern's temperature from the manifest and returns
calibrated probabilities with the router weights of the used modalities.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from engines.backend import MODALITIES, Prediction, WindowInputs, pattern_key
from engines.features import FeatureError, Tokenizer, featurise_windows
from engines.manifest import MODEL_NAME, Manifest, ManifestError

INT8_MODEL_NAME = "model.int8.onnx"  # written by calibration/quantize.py


class BackendInputError(ValueError):
    """A window the backend cannot featurise (bad dtype/shape); the caller counts and skips."""


def softmax_with_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    return (p / p.sum(axis=-1, keepdims=True)).astype(np.float32)


class FeaturisingBackend:
    """Shared by the onnxruntime and torch backends: manifest, tokenizer, featurisation, output."""

    name = "base"
    status = ""  # how this backend came to be, e.g. why a TensorRT request fell back to this

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = Path(model_dir)
        self.manifest = Manifest.load(self.model_dir)
        self.labels: tuple[str, ...] = self.manifest.labels
        self.modalities = self.manifest.modalities
        self.tokenizer: Tokenizer | None = None
        if self.manifest.tokenizer_file:
            tok_path = self.model_dir / self.manifest.tokenizer_file
            if not tok_path.is_file():
                raise ManifestError(f"manifest names {tok_path.name} but it is missing")
            self.tokenizer = Tokenizer.load(tok_path)
        self.input_names = [s.name for s in self.manifest.inputs]

    def feeds(self, inputs: WindowInputs) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
        # Modalities the model was not trained on are ignored, not an error: a video-less model
        # in a car with a camera still estimates from the rest.
        used = tuple(m for m in inputs.present() if m in self.modalities)
        window = WindowInputs(**{m: getattr(inputs, m) for m in used})
        try:
            return featurise_windows([window], self.modalities, self.tokenizer), used
        except FeatureError as exc:
            raise BackendInputError(str(exc)) from exc

    def run_graph(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def predict(self, inputs: WindowInputs) -> Prediction:
        feeds, used = self.feeds(inputs)
        logits, router = self.run_graph(feeds)
        key = pattern_key(used)
        probs = softmax_with_temperature(logits[0], self.manifest.temperature(key))
        experts = self.manifest.experts
        routes = {m: {e: float(router[0, i, j]) for j, e in enumerate(experts)}
                  for i, m in enumerate(self.modalities) if m in used}
        return Prediction(probs=probs, router=routes, used=used)

    def warmup(self) -> None:
        rng = np.random.default_rng(0)
        sample = WindowInputs(
            audio=(rng.standard_normal(16000) * 1000).astype(np.int16),
            video=rng.integers(0, 255, (3, 48, 48), dtype=np.uint8), text=("hello there",))
        for r in range(len(MODALITIES) + 1):
            for mask in _subsets(self.modalities, r):
                self.predict(WindowInputs(**{m: getattr(sample, m) for m in mask}))


def _subsets(items: tuple[str, ...], r: int) -> list[tuple[str, ...]]:
    import itertools

    return list(itertools.combinations(items, r))


class OnnxBackend(FeaturisingBackend):
    name = "onnxruntime"
    model_file = MODEL_NAME  # the graph in model_dir this backend runs
    # InferenceSession.run may be called from several threads at once, and featurisation is
    # pure numpy: the replaying daemon runs windows in parallel (DaemonConfig.replay_workers).
    thread_safe = True

    def __init__(self, model_dir: Path, threads: int | None = None) -> None:
        super().__init__(model_dir)
        import onnxruntime as ort

        path = self.model_dir / self.model_file
        if not path.is_file():
            raise ManifestError(f"no {self.model_file} in {model_dir}")
        opts = ort.SessionOptions()
        # One estimate per window: small intra-op parallelism; the car's other processes need
        # cores too. EDGE_ORT_THREADS overrides.
        opts.intra_op_num_threads = int(os.environ.get("EDGE_ORT_THREADS", threads or 1))
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), sess_options=opts,
                                            providers=["CPUExecutionProvider"])
        graph_inputs = {i.name for i in self.session.get_inputs()}
        if graph_inputs != set(self.input_names):
            raise ManifestError(f"manifest inputs {sorted(self.input_names)} do not match the "
                                f"graph's {sorted(graph_inputs)}")

    def run_graph(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        logits, router = self.session.run(["logits", "router"], feeds)
        return np.asarray(logits), np.asarray(router)


class OnnxInt8Backend(OnnxBackend):
    """The explicitly quantized (QDQ INT8) graph `calibration/quantize.py` writes beside
    model.onnx; same inputs, outputs, featurisation and temperatures as the FP32 graph."""

    name = "onnxruntime-int8"
    model_file = INT8_MODEL_NAME
