"""engines/tensorrt_backend.py.

Runs here for real: the engine-cache key, the profile shapes, the cache location and bound, the
fallback when TensorRT is genuinely absent (this environment cannot install it), and the daemon
asking systemd for more start-up time before it loads a TensorRT backend. The build / cache /
parity tests need TensorRT and a CUDA GPU and skip, saying so, everywhere else; nothing here
pretends to be TensorRT.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from calibration.parity import check_parity
from engines.backend import WindowInputs, load_backend
from engines.manifest import Manifest
from engines.tensorrt_backend import (
    EngineConfig,
    cache_dir,
    engine_key,
    profile_shapes,
    prune_cache,
)
from tests.helpers import MODEL_DIR, short_tmp, spawn, stop
from tests.int8_support import TINY, copy_of, quantized_tiny

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


needs_trt = pytest.mark.skipif(not (HAVE_TRT and _cuda()),
                               reason="needs TensorRT (not installable here) and a CUDA GPU")


def test_profile_covers_batch_one_to_max_and_empty_modalities() -> None:
    shapes = profile_shapes(Manifest.load(TINY), EngineConfig(max_batch=64))
    assert shapes["present"] == ((1, 3), (1, 3), (64, 3))
    assert shapes["audio_logmel"] == ((0, 40, 198), (1, 40, 198), (64, 40, 198))
    assert shapes["video_frames"][0] == (0, 20, 48, 48)
    assert shapes["text_ids"][2] == (64, 64)


def test_engine_key_changes_with_every_ingredient() -> None:
    manifest = Manifest.load(TINY)
    cfg = EngineConfig()
    base: dict[str, Any] = dict(onnx_sha256="a" * 64, trt_version="10.3.0", gpu="Orin",
                                cfg=cfg, shapes=profile_shapes(manifest, cfg))
    key = engine_key(**base)
    assert key == engine_key(**base)
    variants: list[dict[str, Any]] = [
        {"onnx_sha256": "b" * 64}, {"trt_version": "10.4.0"}, {"gpu": "H200"},
        {"cfg": EngineConfig(precision="int8")},
        {"shapes": profile_shapes(manifest, EngineConfig(max_batch=8))}]
    keys = {engine_key(**{**base, **v}) for v in variants}
    assert key not in keys and len(keys) == len(variants)


def test_cache_dir_follows_the_units_cache_directory(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    monkeypatch.delenv("EDGE_ENGINE_CACHE", raising=False)
    monkeypatch.setenv("CACHE_DIRECTORY", f"{tmp_path}/a:{tmp_path}/b")
    assert cache_dir() == tmp_path / "a" / "engines"
    monkeypatch.setenv("EDGE_ENGINE_CACHE", str(tmp_path / "override"))
    assert cache_dir() == tmp_path / "override"
    monkeypatch.delenv("EDGE_ENGINE_CACHE")
    monkeypatch.delenv("CACHE_DIRECTORY")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "emotion-edge" / "engines"


def test_engine_cache_is_bounded_oldest_first(tmp_path: Path) -> None:
    for i in range(5):
        (tmp_path / f"m{i}.engine").write_bytes(b"x")
        (tmp_path / f"m{i}.json").write_text("{}")
        os.utime(tmp_path / f"m{i}.engine", (1000 + i, 1000 + i))
    removed = prune_cache(tmp_path, keep=3)
    assert [p.name for p in removed] == ["m0.engine", "m1.engine"]
    assert sorted(p.name for p in tmp_path.glob("*.engine")) == ["m2.engine", "m3.engine",
                                                                   "m4.engine"]
    assert not (tmp_path / "m0.json").exists()


def test_engine_config_is_validated() -> None:
    with pytest.raises(ValueError, match="precision"):
        EngineConfig(precision="int4")
    with pytest.raises(ValueError, match="opt_batch"):
        EngineConfig(opt_batch=65, max_batch=64)


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is importable here: no fallback to observe")
def test_without_tensorrt_falls_back_with_one_log_line_and_a_status(
        tmp_path_factory: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture) -> None:
    int8_dir = quantized_tiny(tmp_path_factory)
    with caplog.at_level(logging.WARNING, logger="engines.tensorrt"):
        fp16 = load_backend(int8_dir, "tensorrt")
        int8 = load_backend(int8_dir, "tensorrt-int8")
    lines = [r for r in caplog.records if r.name == "engines.tensorrt"]
    assert len(lines) == 2 and all("fallback" in r.getMessage() for r in lines)
    assert "tensorrt" in getattr(int8, "status", "") and int8.name == "onnxruntime-int8"
    assert getattr(fp16, "status", "").startswith("fallback: tensorrt-fp16 unavailable")
    assert fp16.name == ("cuda" if _cuda() else "onnxruntime")
    # the fallback is a working backend, not a placeholder
    window = WindowInputs(audio=np.zeros(16000, np.int16), text=("fine thanks",))
    ref = load_backend(int8_dir, "onnxruntime-int8").predict(window)
    np.testing.assert_allclose(int8.predict(window).probs, ref.probs, atol=1e-6)


@pytest.mark.timeout(90)
def test_daemon_extends_its_start_timeout_before_loading_tensorrt(tmp_path: Path) -> None:
    """A real edge-daemon with NOTIFY_SOCKET: EXTEND_TIMEOUT_USEC arrives before READY=1."""
    with short_tmp() as run_dir:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(run_dir / "notify.sock"))
        sock.settimeout(1.0)
        proc = spawn("edge-daemon", "--run-dir", str(run_dir), "--model-dir", str(MODEL_DIR),
                     "--backend", "tensorrt", "--seconds", "20",
                     env={"NOTIFY_SOCKET": str(run_dir / "notify.sock")},
                     log=tmp_path / "daemon.log")
        messages: list[str] = []
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not any("READY=1" in m for m in messages):
                try:
                    messages.append(sock.recv(4096).decode())
                except TimeoutError:
                    assert proc.poll() is None, (tmp_path / "daemon.log").read_text()
        finally:
            stop(proc)
            sock.close()
    extend = [i for i, m in enumerate(messages) if m.startswith("EXTEND_TIMEOUT_USEC=")]
    ready = [i for i, m in enumerate(messages) if "READY=1" in m]
    assert extend and ready and extend[0] < ready[0], messages
    assert int(messages[extend[0]].split("=")[1]) >= 60_000_000
    log = (tmp_path / "daemon.log").read_text()
    if not HAVE_TRT:
        assert "fallback: tensorrt-fp16 unavailable" in log


# ------------------------------------------------------------- TensorRT + CUDA GPU only
@pytest.mark.gpu
@needs_trt
@pytest.mark.timeout(900)
@pytest.mark.parametrize("kind", ["tensorrt", "tensorrt-int8"])
def test_engine_builds_caches_and_matches_onnxruntime(
        kind: str, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from engines.tensorrt_backend import TensorRTBackend

    monkeypatch.setenv("EDGE_ENGINE_CACHE", str(tmp_path / "cache"))
    int8_dir = quantized_tiny(tmp_path_factory)
    first = load_backend(int8_dir, kind)
    assert isinstance(first, TensorRTBackend), getattr(first, "status", "")
    assert first.built and first.engine_path.is_file()
    assert (tmp_path / "cache" / "timing.cache").is_file()
    assert first.engine_path.with_suffix(".json").is_file()  # the resolved build config
    mtime = first.engine_path.stat().st_mtime_ns
    first.warmup()
    second = load_backend(int8_dir, kind)
    assert isinstance(second, TensorRTBackend) and not second.built
    assert second.engine_path == first.engine_path
    assert second.engine_path.stat().st_mtime_ns == mtime
    report = check_parity(int8_dir, backends=(kind,))
    assert report[kind]["status"] == "passed", report[kind]


@pytest.mark.gpu
@needs_trt
@pytest.mark.timeout(900)
def test_corrupt_cached_engine_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    from engines.tensorrt_backend import TensorRTBackend

    monkeypatch.setenv("EDGE_ENGINE_CACHE", str(tmp_path / "cache"))
    model = copy_of(TINY, tmp_path / "m")
    first = TensorRTBackend(model)
    first.engine_path.write_bytes(b"not an engine")
    again = TensorRTBackend(model)
    assert again.built and again.engine_path == first.engine_path
    assert dataclasses.asdict(again.cfg) == dataclasses.asdict(first.cfg)
