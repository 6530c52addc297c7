"""`OnnxBackend(model_dir)`: the live model on onnxruntime (CPU by default).

Featurises a `WindowInputs` in numpy (engines.features, the same code training used), feeds only
the present modalities' rows (an absent modality's front-end runs on zero rows, i.e. is not
computed), applies the availability pattern's temperature from the manifest and returns
calibrated probabilities with the router weights of the used modalities. Face crops and a
window's text (MiniLM) are encoded once each and their tokens reused by the overlapping windows
(`SplitGraph`).
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
from engines.onnx_graph import token_cuts

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
    # numpy and the token caches lock: the replaying daemon runs windows in parallel
    # (DaemonConfig.replay_workers).
    thread_safe = True

    def __init__(self, model_dir: Path, threads: int | None = None,
                 token_cache: bool = True) -> None:
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
        self.split: SplitGraph | None = (
            SplitGraph.split(path, opts, self.modalities) if token_cache else None)
        # A split graph runs as its parts only: a session of the whole graph beside them would
        # hold a second copy of every weight (the MiniLM text encoder's are 90 MB in FP32).
        self.session: Any = None
        if self.split is not None:
            graph_inputs = set(self.split.graph_inputs)
        else:
            self.session = ort.InferenceSession(str(path), sess_options=opts,
                                                providers=["CPUExecutionProvider"])
            graph_inputs = {i.name for i in self.session.get_inputs()}
        if graph_inputs != set(self.input_names):
            raise ManifestError(f"manifest inputs {sorted(self.input_names)} do not match the "
                                f"graph's {sorted(graph_inputs)}")
        cached = sorted(self.split.caches) if self.split else []
        self.status = "token caches: " + (", ".join(cached) if cached else
                                          "off (graph not split)" if token_cache else "off")
        release_freed_memory()

    @property
    def crops(self) -> TokenCache | None:
        """The face crops' token cache, if the graph was split for it."""
        return self.split.caches.get("video") if self.split else None

    def run_graph(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        if self.split is not None:
            return self.split.run(feeds)
        logits, router = self.session.run(["logits", "router"], feeds)
        return np.asarray(logits), np.asarray(router)


class TokenCache:
    """LRU of one front-end's output per input row, each row encoded alone (batch 1).

    Alone, so a row's tokens are the same whatever else is in the batch or the cache."""

    def __init__(self, session: Any, input_names: tuple[str, ...], output_name: str,
                 max_rows: int) -> None:
        self.session, self.input_names, self.output_name = session, input_names, output_name
        self.max_rows = max_rows
        self._tokens: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def tokens(self, rows: dict[str, np.ndarray]) -> np.ndarray:
        """input name -> (N, ...) rows  ->  (N, ...) outputs, encoding only the unseen rows."""
        n = len(rows[self.input_names[0]])
        out = []
        for r in range(n):
            digest = hashlib.blake2b(digest_size=16)
            for name in self.input_names:
                digest.update(rows[name][r].tobytes())
            key = digest.digest()
            with self._lock:
                token = self._tokens.get(key)
                if token is not None:
                    self._tokens.move_to_end(key)
                    self.hits += 1
            if token is None:
                token = self.session.run([self.output_name], {
                    name: rows[name][r:r + 1] for name in self.input_names})[0][0]
                with self._lock:
                    self.misses += 1
                    self._tokens[key] = token
                    if len(self._tokens) > self.max_rows:
                        self._tokens.popitem(last=False)
            out.append(token)
        if out:
            return np.stack(out)
        shape = [int(d) if isinstance(d, int) else 0 for d in self.session.get_outputs()[0].shape]
        return np.zeros(shape, np.float32)  # no rows: (0, ...) with the output's fixed dims


class SplitGraph:
    """The live graph cut after the front-ends whose output is a pure function of one row, with a
    TokenCache for each; the rest of the graph takes their tokens in place of their inputs.

    Windows overlap (2 s windows, 0.5 s hop): every face crop and every transcript line is in
    four windows. Cached: the video front-end's per-crop encoder (eval BatchNorm, no cross-crop
    op) and the MiniLM text front-end per window's text (a transcript line alone costs ~10 ms
    on one core; the compact text encoder is too cheap to be worth a cut). All parts are cut
    from the exported graph at load time (onnx.utils.Extractor); a front-end whose graph does
    not have the expected shape (e.g. the QDQ INT8 one) is not cut, and a graph with no cut is
    run whole.
    """

    MAX_ROWS = {"video": 512, "text": 64}  # cached rows (LRU); a window holds <= 20 crops

    def __init__(self, caches: dict[str, TokenCache], rest: Any, replaced: set[str],
                 graph_inputs: tuple[str, ...]) -> None:
        self.caches, self.rest, self.replaced = caches, rest, replaced
        self.graph_inputs = graph_inputs  # the whole graph's, which run() takes

    @classmethod
    def split(cls, model_path: Path, opts: Any, modalities: tuple[str, ...]
              ) -> SplitGraph | None:
        import onnx
        import onnx.utils
        import onnxruntime as ort

        try:
            model = onnx.load(str(model_path))
            graph = model.graph
            cuts = {m: c for m, c in token_cuts(graph).items() if m in modalities}
            if not cuts:
                return None
            # The exporter's graph carries every tensor's type and shape (value_info), which is
            # what the extractor needs; a graph without them (QDQ) gets them inferred, at the
            # cost of a second in-memory copy of the model while loading.
            extractors = [onnx.utils.Extractor(model)]
            providers = ["CPUExecutionProvider"]

            def session(inputs: list[str], outputs: list[str]) -> Any:
                try:
                    part = extractors[-1].extract_model(inputs, outputs)
                except Exception:  # noqa: BLE001 - missing value_info: infer and retry once
                    if len(extractors) > 1:
                        raise
                    extractors.append(onnx.utils.Extractor(
                        onnx.shape_inference.infer_shapes(model)))
                    part = extractors[-1].extract_model(inputs, outputs)
                return ort.InferenceSession(part.SerializeToString(), opts, providers=providers)

            caches = {m: TokenCache(session(list(c.inputs), [c.output]), c.inputs, c.output,
                                    cls.MAX_ROWS[m]) for m, c in cuts.items()}
            replaced = {c.replaces for c in cuts.values()}  # the rest needs these no more
            rest_inputs = [i.name for i in graph.input if i.name not in replaced]
            rest = session(rest_inputs + [c.output for c in cuts.values()],
                           [o.name for o in graph.output])
            return cls(caches, rest, replaced, tuple(i.name for i in graph.input))
        except Exception as exc:  # any other graph shape: run it whole
            log.info("token caches off for %s: %s", model_path.name, exc)
            return None

    def run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        rest = {k: v for k, v in feeds.items() if k not in self.replaced}
        for m, cache in self.caches.items():
            if m == "video":
                frames = feeds["video_frames"]  # (Bv, T, 48, 48) -> one row per crop
                rows = {cache.input_names[0]: frames.reshape(-1, 1, *frames.shape[2:])}
            else:
                rows = {name: feeds[name] for name in cache.input_names}
            rest[cache.output_name] = cache.tokens(rows)
        logits, router = self.rest.run(["logits", "router"], rest)
        return np.asarray(logits), np.asarray(router)


def release_freed_memory() -> None:
    """Hand the heap that loading freed (ONNX protos, serialized parts: hundreds of MB for a
    MiniLM model) back to the OS, so the daemon's resident size is what it holds, not what it
    once held. glibc only; elsewhere a no-op."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class OnnxInt8Backend(OnnxBackend):
    """The explicitly quantized (QDQ INT8) graph `calibration/quantize.py` writes beside
    model.onnx; same inputs, outputs, featurisation and temperatures as the FP32 graph."""

    name = "onnxruntime-int8"
    model_file = INT8_MODEL_NAME
