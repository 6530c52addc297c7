"""`tensorrt` / `tensorrt-int8`: the exported graph as a TensorRT engine, built on the target.

Build (TensorRT 10 Python API): `OnnxParser` fills a `NetworkDefinition` from model.onnx (FP16)
or from the QDQ graph calibration/quantize.py writes, model.int8.onnx (INT8: explicit
quantization; TensorRT's implicit INT8 calibrators are deprecated since 10.1 and gone in 11).
The `BuilderConfig` gets FP16 (and INT8 for the QDQ graph, so the float parts between Q/DQ pairs
may run in FP16), one optimization profile (see `profile_shapes`), and a timing cache kept next
to the engines so a rebuild (new model, new TensorRT) reuses kernel timings.

Engines are specific to the GPU, the TensorRT version and the profile, so they are built on the
target and cached under the unit's CacheDirectory ($CACHE_DIRECTORY/engines; EDGE_ENGINE_CACHE
overrides; else ~/.cache/emotion-edge/engines), keyed by sha256(ONNX bytes) + TensorRT version +
GPU name + precision + profile shapes. A cache hit deserializes in well under a second; a
first build takes tens of seconds to minutes, which is why the daemon sends systemd
EXTEND_TIMEOUT_USEC before loading a TensorRT backend.

Fallback: if TensorRT cannot be imported, there is no CUDA device, or the parse/build/
deserialize fails, the factories return another backend with one WARNING log line and
`backend.status` saying why: for `tensorrt`, the CUDA-graph backend when a GPU is there (the
GPU test machine has PyTorch with CUDA but no TensorRT), else onnxruntime; for `tensorrt-int8`,
the same QDQ graph on onnxruntime (`onnxruntime-int8`, or FP32 if no INT8 graph was made).

Device buffers are torch CUDA tensors (JetPack ships PyTorch wheels), allocated once at the
profile's maximum shapes; each call copies its inputs into a prefix of those buffers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.backend import Backend
from engines.manifest import MODEL_NAME, Manifest, ManifestError, sha256_file
from engines.onnx_backend import (
    INT8_MODEL_NAME,
    BackendInputError,
    FeaturisingBackend,
    OnnxBackend,
    OnnxInt8Backend,
)

log = logging.getLogger("engines.tensorrt")

ENGINE_SUFFIX = ".engine"
TIMING_CACHE_NAME = "timing.cache"
MAX_CACHED_ENGINES = 8  # per cache dir; the oldest are removed (bounded disk use)


class EngineBuildError(RuntimeError):
    """TensorRT could not parse, build or deserialize the engine."""


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    precision: str = "fp16"  # fp16 | int8 (int8 = the QDQ graph, FP16 allowed in between)
    opt_batch: int = 1  # the daemon runs one window at a time: kernels tuned for batch 1
    max_batch: int = 64  # largest batch (and per-modality row count) the engine accepts
    workspace_mib: int = 1024
    optimization_level: int = 3  # TensorRT's default; 5 searches longer for faster kernels

    def __post_init__(self) -> None:
        if self.precision not in ("fp16", "int8"):
            raise ValueError(f"precision must be fp16|int8, not {self.precision!r}")
        if not 1 <= self.opt_batch <= self.max_batch:
            raise ValueError("need 1 <= opt_batch <= max_batch")


def cache_dir() -> Path:
    """Where engines live: EDGE_ENGINE_CACHE, else the unit's CacheDirectory, else ~/.cache."""
    if os.environ.get("EDGE_ENGINE_CACHE"):
        return Path(os.environ["EDGE_ENGINE_CACHE"])
    if os.environ.get("CACHE_DIRECTORY"):  # systemd: colon-separated when several are given
        return Path(os.environ["CACHE_DIRECTORY"].split(":")[0]) / "engines"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "emotion-edge" / "engines"


Shape = tuple[int, ...]
ProfileShapes = dict[str, tuple[Shape, Shape, Shape]]  # input -> (min, opt, max)


def profile_shapes(manifest: Manifest, cfg: EngineConfig) -> ProfileShapes:
    """Input name -> (min, opt, max) shapes of the one optimization profile.

    Window shapes (mel bins x frames, faces x 48 x 48, tokens) are fixed by the manifest. The
    first axis is the batch for `present` (1..max) and a per-modality row count for the
    modality inputs (0..max: an absent modality feeds zero rows, an empty tensor).
    """
    shapes: ProfileShapes = {}
    for spec in manifest.inputs:
        first, rest = spec.shape[0], tuple(int(d) for d in spec.shape[1:])
        low = 1 if first == "batch" else 0
        shapes[spec.name] = ((low, *rest), (cfg.opt_batch, *rest), (cfg.max_batch, *rest))
    return shapes


def engine_key(*, onnx_sha256: str, trt_version: str, gpu: str, cfg: EngineConfig,
               shapes: dict[str, Any]) -> str:
    blob = json.dumps({"onnx_sha256": onnx_sha256, "tensorrt": trt_version, "gpu": gpu,
                       "config": asdict(cfg), "shapes": shapes}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # a reader never sees half an engine


def prune_cache(directory: Path, keep: int = MAX_CACHED_ENGINES) -> list[Path]:
    engines = sorted(directory.glob(f"*{ENGINE_SUFFIX}"), key=lambda p: p.stat().st_mtime)
    removed = engines[:-keep] if len(engines) > keep else []
    for p in removed:
        p.unlink(missing_ok=True)
        p.with_suffix(".json").unlink(missing_ok=True)
    return removed


def build_engine(trt: Any, onnx_path: Path, cfg: EngineConfig,
                 shapes: ProfileShapes, timing_cache: Path) -> bytes:
    """Parse the ONNX graph and build a serialized engine (TensorRT 10 API)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"ONNX parser rejected {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mib << 20)
    config.builder_optimization_level = cfg.optimization_level
    config.set_flag(trt.BuilderFlag.FP16)
    if cfg.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # scales come from the graph's Q/DQ nodes
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in shapes.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file()
                                       else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT could not build {onnx_path.name} ({cfg.precision})")
    _atomic_write(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(serialized))


class TensorRTBackend(FeaturisingBackend):
    """One engine, one execution context, one CUDA stream; static buffers at the profile max."""

    def __init__(self, model_dir: Path, cfg: EngineConfig | None = None) -> None:
        super().__init__(model_dir)
        import tensorrt as trt
        import torch

        if not torch.cuda.is_available():
            raise EngineBuildError("no CUDA device")
        self.cfg = cfg or EngineConfig()
        self.name = "tensorrt" if self.cfg.precision == "fp16" else "tensorrt-int8"
        onnx_path = self.model_dir / (INT8_MODEL_NAME if self.cfg.precision == "int8"
                                      else MODEL_NAME)
        if not onnx_path.is_file():
            raise ManifestError(f"{self.name} needs {onnx_path}")
        shapes = profile_shapes(self.manifest, self.cfg)
        gpu = torch.cuda.get_device_name()
        key = engine_key(onnx_sha256=sha256_file(onnx_path), trt_version=trt.__version__,
                         gpu=gpu, cfg=self.cfg, shapes=shapes)
        directory = cache_dir()
        directory.mkdir(parents=True, exist_ok=True)
        self.engine_path = directory / f"{onnx_path.stem}-{self.cfg.precision}-{key[:24]}.engine"
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = None
        if self.engine_path.is_file():
            engine = runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
            if engine is None:  # truncated / foreign file under our key: rebuild it
                log.warning("cached engine %s does not deserialize; rebuilding", self.engine_path)
        self.built = engine is None
        t0 = time.monotonic()
        if engine is None:
            log.info("building TensorRT %s engine for %s (first start on this GPU/TensorRT; "
                     "cached afterwards)", self.cfg.precision, onnx_path)
            blob = build_engine(trt, onnx_path, self.cfg, shapes, directory / TIMING_CACHE_NAME)
            _atomic_write(self.engine_path, blob)
            # the resolved build config next to the output, as every output here has
            self.engine_path.with_suffix(".json").write_text(json.dumps(
                {"onnx": str(onnx_path), "key": key, "tensorrt": trt.__version__, "gpu": gpu,
                 "config": asdict(self.cfg), "shapes": shapes,
                 "build_seconds": time.monotonic() - t0}, indent=2))
            prune_cache(directory)
            engine = runtime.deserialize_cuda_engine(blob)
            if engine is None:
                raise EngineBuildError("a freshly built engine failed to deserialize")
        self.load_seconds = time.monotonic() - t0
        self.engine = engine
        self.context = engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self._torch = torch
        dtypes = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
                  trt.DataType.INT32: torch.int32, trt.DataType.INT64: torch.int64,
                  trt.DataType.BOOL: torch.bool, trt.DataType.INT8: torch.int8}
        max_shapes = {n: s[2] for n, s in shapes.items()}
        for spec in self.manifest.outputs:
            max_shapes[spec.name] = tuple(self.cfg.max_batch if isinstance(d, str) else int(d)
                                          for d in spec.shape)
        self.buffers = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            self.buffers[name] = torch.zeros(max_shapes[name], device="cuda",
                                             dtype=dtypes[engine.get_tensor_dtype(name)])
            self.context.set_tensor_address(name, self.buffers[name].data_ptr())
        self.output_names = [s.name for s in self.manifest.outputs]
        self.status = (f"{self.name}: engine {'built' if self.built else 'from cache'} "
                       f"{self.engine_path.name} in {self.load_seconds:.1f} s on {gpu}")

    def run_graph(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        with torch.cuda.stream(self.stream):
            for name in self.input_names:
                arr = feeds[name]
                if arr.shape[0] > self.cfg.max_batch:
                    raise BackendInputError(f"{name}: {arr.shape[0]} rows > engine max "
                                            f"{self.cfg.max_batch}")
                if arr.shape[0]:
                    self.buffers[name][: arr.shape[0]].copy_(torch.from_numpy(arr),
                                                             non_blocking=False)
                self.context.set_input_shape(name, tuple(arr.shape))
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise EngineBuildError("TensorRT execute_async_v3 failed")
            outs = []
            for name in self.output_names:
                shape = tuple(self.context.get_tensor_shape(name))
                view = self.buffers[name][: shape[0]]
                outs.append(view.float().cpu().numpy())  # .cpu() waits for the stream
        return outs[0], outs[1]


def _with_fallback(model_dir: Path, precision: str) -> Backend:
    try:
        return TensorRTBackend(model_dir, EngineConfig(precision=precision))
    except ManifestError:
        raise  # a broken model directory is not a TensorRT problem: do not hide it
    except Exception as exc:  # noqa: BLE001 - no TensorRT, no GPU, parse/build/runtime failure
        backend = _fallback_backend(Path(model_dir), precision)
        backend.status = (f"fallback: tensorrt-{precision} unavailable "
                          f"({type(exc).__name__}: {exc}); running {backend.name}")
        log.warning("%s", backend.status)
        return backend


def _fallback_backend(model_dir: Path, precision: str) -> FeaturisingBackend:
    """FP16 request: the CUDA-graph backend when a GPU (and torch + checkpoint) is there, else
    onnxruntime. INT8 request: the same QDQ graph on onnxruntime (CUDA would not be INT8)."""
    if precision == "int8":
        if (model_dir / INT8_MODEL_NAME).is_file():
            return OnnxInt8Backend(model_dir)
        return OnnxBackend(model_dir)
    try:
        from engines.cuda_backend import CudaGraphBackend

        return CudaGraphBackend(model_dir)
    except Exception:  # noqa: BLE001 - no torch, no GPU, no checkpoint: CPU it is
        return OnnxBackend(model_dir)


def tensorrt_fp16(model_dir: Path) -> Backend:
    return _with_fallback(model_dir, "fp16")


def tensorrt_int8(model_dir: Path) -> Backend:
    return _with_fallback(model_dir, "int8")
