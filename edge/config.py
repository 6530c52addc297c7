"""Runtime configuration: frozen keyword-only dataclasses, validated on construction,
loaded from TOML (or a resolved-config JSON), and written back out next to every output.

Values that depend on the machine (run directory, model directory, endpoints) are empty in
the dataclass defaults and filled in by ``resolved()``, so the config written next to an
output is the one that actually ran.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

REPO_ROOT = Path(__file__).resolve().parents[1]
MODALITIES: tuple[str, ...] = ("audio", "video", "text")  # == engines.backend.MODALITIES

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or value that cannot be used."""


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{name} must be > 0, got {value}")


def _modalities(name: str, values: tuple[str, ...]) -> None:
    unknown = [m for m in values if m not in MODALITIES]
    if unknown:
        raise ConfigError(f"{name}: unknown modalities {unknown}; use {MODALITIES}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class WindowConfig:
    window_ms: int = 2000  # event-time window length
    hop_ms: int = 500  # one estimate per hop; window ends are multiples of hop
    max_lag_ms: int = 100  # a window closes this long after its end, never later
    # Link states are judged as of close - settle_ms: every message stamped before then has
    # had settle_ms to arrive, so live and replay judge the same messages (bit-identical).
    settle_ms: int = 20
    # Live only: the model runs this long after a window's end, on what the window holds then
    # (frames stamped before the end have had this long to arrive), and at the close its
    # answer is reused if the window's inputs did not change (else the model runs again). The
    # estimate is the same either way; it just leaves the daemon sooner after the close, as
    # long as inference takes less than max_lag_ms - precompute_after_ms.
    # A value >= max_lag_ms turns it off.
    precompute_after_ms: int = 20
    max_future_ms: int = 1000  # frames stamped further ahead of "now" are rejected
    max_catchup_windows: int = 20  # after a clock jump, skip rather than emit a backlog
    max_frames_per_modality: int = 256  # bound on buffered frames per modality

    def __post_init__(self) -> None:
        for name in ("window_ms", "hop_ms", "max_catchup_windows", "max_frames_per_modality"):
            _positive(name, getattr(self, name))
        if self.max_lag_ms < 0 or self.max_future_ms < 0:
            raise ConfigError("max_lag_ms and max_future_ms must be >= 0")
        if not 0 <= self.settle_ms <= self.max_lag_ms:
            raise ConfigError("settle_ms must be between 0 and max_lag_ms")
        if self.precompute_after_ms < 0:
            raise ConfigError("precompute_after_ms must be >= 0")
        if self.window_ms % self.hop_ms:
            raise ConfigError("window_ms must be a multiple of hop_ms")


@dataclasses.dataclass(frozen=True, kw_only=True)
class WatchdogConfig:
    heartbeat_ms: int = 100  # sensors' heartbeat interval
    miss_limit: int = 2  # dead after this many heartbeat intervals of silence
    stale_ms: int = 2000  # alive but no frames for longer than this -> stale
    history: int = 64  # stamps kept per link to answer "state as of t"

    def __post_init__(self) -> None:
        for name in ("heartbeat_ms", "miss_limit", "stale_ms", "history"):
            _positive(name, getattr(self, name))

    @property
    def dead_after_ns(self) -> int:
        return self.miss_limit * self.heartbeat_ms * 1_000_000


@dataclasses.dataclass(frozen=True, kw_only=True)
class DaemonConfig:
    run_dir: str = ""  # ipc endpoints live here; "" -> default_run_dir()
    ingress: str = ""  # SUB binds here, sensors connect; "" -> ipc://{run_dir}/ingress.ipc
    telemetry: str = ""  # PUB binds here; "" -> ipc://{run_dir}/telemetry.ipc
    model_dir: str = ""  # "" -> models/live if present, else tests/assets/tiny_model
    backend: str = "onnxruntime"
    clock: Literal["monotonic", "event"] = "monotonic"  # "event": replay, time = stamps
    modalities: tuple[str, ...] = MODALITIES
    disabled: tuple[str, ...] = ()  # switched off for privacy: never used, reported disabled
    rcv_hwm: int = 2000  # ingress queue bound (messages)
    snd_hwm: int = 100  # telemetry queue bound per subscriber; a slow one loses, never blocks
    max_payload_bytes: int = 4 * 1024 * 1024
    status_interval_ms: int = 1000
    shutdown_deadline_s: float = 2.0
    estimates_jsonl: str = ""  # also append every estimate to this file
    # clock = "event" (replay): closed windows run through the model on this many threads at
    # once when the backend is thread-safe (onnxruntime); estimates are still published in
    # window order and are the same as with 1 (the model sees each window alone).
    replay_workers: int = 2
    out_dir: str = ""  # resolved config goes here; "" -> $STATE_DIRECTORY or run_dir
    # CurveZMQ key dir (edge-keys); required when an endpoint is tcp:// (it leaves the device)
    curve_dir: str = ""
    window: WindowConfig = dataclasses.field(default_factory=WindowConfig)
    watchdog: WatchdogConfig = dataclasses.field(default_factory=WatchdogConfig)

    def __post_init__(self) -> None:
        if self.clock not in ("monotonic", "event"):
            raise ConfigError(f"clock must be monotonic|event, got {self.clock!r}")
        _modalities("modalities", self.modalities)
        _modalities("disabled", self.disabled)
        for name in ("rcv_hwm", "snd_hwm", "max_payload_bytes", "status_interval_ms",
                     "replay_workers"):
            _positive(name, getattr(self, name))
        _positive("shutdown_deadline_s", self.shutdown_deadline_s)
        require_curve_for_tcp((self.ingress, self.telemetry), self.curve_dir)

    def resolved(self) -> DaemonConfig:
        run_dir = self.run_dir or str(default_run_dir())
        return dataclasses.replace(
            self,
            run_dir=run_dir,
            ingress=self.ingress or f"ipc://{run_dir}/ingress.ipc",
            telemetry=self.telemetry or f"ipc://{run_dir}/telemetry.ipc",
            model_dir=self.model_dir or str(default_model_dir()),
            # under systemd, StateDirectory= (STATE_DIRECTORY) outlives the runtime dir
            out_dir=self.out_dir or os.environ.get("STATE_DIRECTORY", "").split(":")[0] or run_dir,
        )


def default_run_dir() -> Path:
    """Where ipc endpoints live: $EDGE_RUN_DIR, systemd's $RUNTIME_DIRECTORY,
    $XDG_RUNTIME_DIR/emotion-edge, else /tmp/emotion-edge-$UID."""
    for var in ("EDGE_RUN_DIR", "RUNTIME_DIRECTORY"):
        if os.environ.get(var):
            return Path(os.environ[var].split(":")[0])
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "emotion-edge"
    return Path(f"/tmp/emotion-edge-{os.getuid()}")


def require_curve_for_tcp(endpoints: tuple[str, ...], curve_dir: str) -> None:
    """A link that leaves the device (tcp) is authenticated and encrypted, never plain."""
    tcp = [e for e in endpoints if e.startswith("tcp://")]
    if tcp and not curve_dir:
        raise ConfigError(f"{tcp}: tcp links need curve_dir (CurveZMQ keys from edge-keys)")


def ensure_private_dir(path: str | Path) -> Path:
    """Create the runtime dir 0700, or check an existing one: ipc sockets in it are then
    reachable only by the service user. Refuses a dir owned by someone else (a squatter in
    /tmp) and tightens a dir of ours that others can enter."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.stat()
    if st.st_uid != os.getuid():
        raise ConfigError(f"{path} is owned by uid {st.st_uid}, not {os.getuid()}; refusing it")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def default_model_dir() -> Path:
    live = REPO_ROOT / "models" / "live"
    tiny = REPO_ROOT / "tests" / "assets" / "tiny_model"
    return live if (live / "manifest.json").exists() else tiny


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Turn a TOML/JSON value into the annotated type (nested dataclasses, tuples)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table")
        return from_dict(tp, value, where=where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list")
        (item_tp, *_rest) = typing.get_args(tp)
        return tuple(_convert(item_tp, v, where) for v in value)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} not one of {typing.get_args(tp)}")
        return value
    if origin in (typing.Union, types.UnionType):
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (
        isinstance(tp, type)
        and not isinstance(value, tp)
        or (tp is int and isinstance(value, bool))
    ):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type[T], doc: dict[str, Any], *, where: str = "") -> T:
    """Build dataclass `cls` from a mapping; unknown keys are an error (typos never pass)."""
    assert dataclasses.is_dataclass(cls)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(doc) - names)
    if unknown:
        raise ConfigError(f"{where or cls.__name__}: unknown keys {unknown}")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}".lstrip(".")) for k, v in doc.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where or cls.__name__}: {exc}") from exc


def load(cls: type[T], path: str | Path | None = None, *, section: str = "", **overrides: Any) -> T:
    """Load `cls` from a TOML (or resolved JSON) file's `section`, then apply overrides.

    Overrides of nested tables are given as dicts (``window={"hop_ms": 250}``) and merge.
    """
    doc: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            raw = path.read_bytes()
            data = json.loads(raw) if path.suffix == ".json" else tomllib.loads(raw.decode())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        doc = data.get(section, {}) if section else data
        if not isinstance(doc, dict):
            raise ConfigError(f"{path}: [{section}] is not a table")
    merged = dict(doc)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return from_dict(cls, merged, where=section)


def to_dict(config: Any) -> dict[str, Any]:
    doc = config if isinstance(config, dict) else dataclasses.asdict(config)
    return json.loads(json.dumps(doc))  # tuples -> lists, a plain JSON-able tree


def write_resolved(config: Any, out_dir: str | Path, name: str) -> Path:
    """Write `config` as `{name}.resolved.json` in `out_dir` (loadable again with `load`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.resolved.json"
    path.write_text(json.dumps(to_dict(config), indent=2, sort_keys=True) + "\n")
    return path
