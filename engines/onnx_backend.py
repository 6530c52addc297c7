"""`OnnxBackend(model_dir)`: the live model on onnxruntime (CPU by default).

Featurises a `WindowInputs` in numpy (engines.features, the same code training used), feeds only
the present modalities' rows (an absent modality's front-end runs on zero rows, i.e. is not
computed), applies the availability pattern's temperature from the manifest and returns
calibrated probabilities with the router weights of the used modalities. Face crops are
encoded once each and their tokens reused by the overlapping windows (`CropTokenCache`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from engines.backend import MODALITIES, Prediction, WindowInputs, pattern_key
from engines.features import FeatureError, TextTokenizer, featurise_windows, load_tokenizer
from engines.manifest import MODEL_NAME, Manifest, ManifestError

INT8_MODEL_NAME = "model.int8.onnx"  # written by calibration/quantize.py
log = logging.getLogger(__name__)


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
        self.tokenizer: TextTokenizer | None = None
        if self.manifest.tokenizer_file:
            tok_path = self.model_dir / self.manifest.tokenizer_file
            if not tok_path.is_file():
                raise ManifestError(f"manifest names {tok_path.name} but it is missing")
            try:
                self.tokenizer = load_tokenizer(tok_path)
            except FeatureError as exc:
                raise ManifestError(str(exc)) from exc
        self.input_names = [s.name for s in self.manifest.inputs]
        # Trained on log-mel centred by the speaker's past: the caller (the daemon, edge-eval)
        # keeps a SpeakerNormaliser per stream and hands its centre in WindowInputs.
        self.audio_speaker_norm = bool(self.manifest.features.get("audio_speaker_norm", False))

    def feeds(self, inputs: WindowInputs) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
        # Modalities the model was not trained on are ignored, not an error: a video-less model
        # in a car with a camera still estimates from the rest.
        used = tuple(m for m in inputs.present() if m in self.modalities)
        try:
            return self.featurise([inputs.only(used)]), used
        except FeatureError as exc:
            raise BackendInputError(str(exc)) from exc

    def featurise(self, windows: list[WindowInputs]) -> dict[str, np.ndarray]:
        """Windows -> this model's graph feeds (engines.features, as in training)."""
        return featurise_windows(windows, self.modalities, self.tokenizer,
                                 self.audio_speaker_norm)

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
                self.predict(sample.only(mask))


def _subsets(items: tuple[str, ...], r: int) -> list[tuple[str, ...]]:
    import itertools

    return list(itertools.combinations(items, r))


class OnnxBackend(FeaturisingBackend):
    name = "onnxruntime"
    model_file = MODEL_NAME  # the graph in model_dir this backend runs
    # InferenceSession.run may be called from several threads at once, featurisation is pure
    # numpy and the crop cache locks: the replaying daemon runs windows in parallel
    # (DaemonConfig.replay_workers).
    thread_safe = True

    def __init__(self, model_dir: Path, threads: int | None = None,
                 crop_cache: bool = True) -> None:
        super().__init__(model_dir)
        import onnxruntime as ort

        path = self.model_dir / self.model_file
        if not path.is_file():
            raise ManifestError(f"no {self.model_file} in {model_dir}")
        opts = ort.SessionOptions()
        # One estimate per window: small intra-op parallelism; the car's other processes need
        # cores too. EDGE_ORT_THREADS overrides.
        opts.intra_op_num_threads = int(os.environ.get("EDGE_ORT_THREADS") or threads or 1)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), sess_options=opts,
                                            providers=["CPUExecutionProvider"])
        graph_inputs = {i.name for i in self.session.get_inputs()}
        if graph_inputs != set(self.input_names):
            raise ManifestError(f"manifest inputs {sorted(self.input_names)} do not match the "
                                f"graph's {sorted(graph_inputs)}")
        self.crops: CropTokenCache | None = None
        if crop_cache and "video" in self.modalities:
            self.crops = CropTokenCache.split(path, opts)
        self.status = "video crop cache: " + (
            "on" if self.crops else "off (graph not split)" if crop_cache else "off")

    def run_graph(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        if self.crops is not None:
            return self.crops.run(feeds)
        logits, router = self.session.run(["logits", "router"], feeds)
        return np.asarray(logits), np.asarray(router)


class CropTokenCache:
    """The live graph cut after the video front-end's per-crop encoder, with a cache of crop
    tokens.

    Windows overlap (2 s windows, 0.5 s hop): every face crop is in four windows, and the
    video CNN is most of the model's time. The encoder is a pure function of one crop (eval
    BatchNorm, no cross-crop op), so each crop is encoded once, alone (batch 1: the same
    result whatever else is in the cache), and its token reused by the next windows. The rest
    of the graph takes the tokens in place of the frames. Both halves are cut from the
    exported graph at load time (onnx.utils.Extractor); a graph without that shape (e.g. the
    QDQ INT8 one) is run whole.
    """

    MAX_CROPS = 512  # cached tokens (LRU); a window holds at most MAX_FACES crops

    def __init__(self, encoder: Any, rest: Any, crops_name: str, tokens_name: str) -> None:
        self.encoder, self.rest = encoder, rest
        self.crops_name, self.tokens_name = crops_name, tokens_name
        self._tokens: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @classmethod
    def split(cls, model_path: Path, opts: Any) -> CropTokenCache | None:
        import onnx
        import onnx.utils
        import onnxruntime as ort

        try:
            model = onnx.load(str(model_path))
            graph = model.graph
            # video_frames (Bv, T, 48, 48) -> Reshape -> (Bv*T, 1, 48, 48) -> CNN or HOG -> Gemm
            (reshape,) = [n for n in graph.node if "video_frames" in n.input]
            gemms = [n for n in graph.node if n.op_type == "Gemm" and any(
                i.startswith(("frontends.video.cnn.", "frontends.video.hog.")) for i in n.input)]
            if reshape.op_type != "Reshape" or len(gemms) != 1:
                return None
            crops_name, tokens_name = reshape.output[0], gemms[0].output[0]
            extractor = onnx.utils.Extractor(onnx.shape_inference.infer_shapes(model))
            encoder = extractor.extract_model([crops_name], [tokens_name])
            rest_inputs = [i.name for i in graph.input if i.name != "video_frames"]
            rest = extractor.extract_model(rest_inputs + [tokens_name],
                                           [o.name for o in graph.output])
            providers = ["CPUExecutionProvider"]
            return cls(ort.InferenceSession(encoder.SerializeToString(), opts,
                                            providers=providers),
                       ort.InferenceSession(rest.SerializeToString(), opts,
                                            providers=providers),
                       crops_name, tokens_name)
        except Exception as exc:  # any other graph shape: run it whole
            log.info("video crop cache off for %s: %s", model_path.name, exc)
            return None

    def tokens(self, frames: np.ndarray) -> np.ndarray:
        """(N, 48, 48) normalised crops -> (N, dim) tokens, encoding only the unseen ones."""
        out = []
        for crop in frames:
            key = hashlib.blake2b(crop.tobytes(), digest_size=16).digest()
            with self._lock:
                token = self._tokens.get(key)
                if token is not None:
                    self._tokens.move_to_end(key)
                    self.hits += 1
            if token is None:
                token = self.encoder.run([self.tokens_name],
                                         {self.crops_name: crop[None, None]})[0][0]
                with self._lock:
                    self.misses += 1
                    self._tokens[key] = token
                    if len(self._tokens) > self.MAX_CROPS:
                        self._tokens.popitem(last=False)
            out.append(token)
        return np.stack(out)

    def run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        frames = feeds["video_frames"]  # (Bv, T, 48, 48)
        rest = {k: v for k, v in feeds.items() if k != "video_frames"}
        rest[self.tokens_name] = (self.tokens(frames.reshape(-1, *frames.shape[2:]))
                                  if frames.shape[0] else
                                  np.zeros((0, self._token_dim()), np.float32))
        logits, router = self.rest.run(["logits", "router"], rest)
        return np.asarray(logits), np.asarray(router)

    def _token_dim(self) -> int:
        return int(self.encoder.get_outputs()[0].shape[-1])


class OnnxInt8Backend(OnnxBackend):
    """The explicitly quantized (QDQ INT8) graph `calibration/quantize.py` writes beside
    model.onnx; same inputs, outputs, featurisation and temperatures as the FP32 graph."""

    name = "onnxruntime-int8"
    model_file = INT8_MODEL_NAME
