"""The manifest that travels with an exported model (`manifest.json` beside `model.onnx`).

It is everything a backend needs to run the graph without the training code: the opset, the
graph's input and output names/dtypes/shapes, the label set, the featurisation settings, the
calibration temperature per availability pattern, where the text tokenizer lives, the
checkpoint's hash, the resolved training config, what data (and licence) it was trained on and
the measured export parity. Standard library only: `edge/` imports this module.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
MODEL_NAME = "model.onnx"
FORMAT_VERSION = 1


class ManifestError(ValueError):
    """A manifest that is missing fields or contradicts itself."""


@dataclass(frozen=True, kw_only=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: float32, int64, bool
    shape: tuple[int | str, ...]  # str = symbolic (e.g. "batch")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(name=str(d["name"]), dtype=str(d["dtype"]), shape=tuple(d["shape"]))


@dataclass(frozen=True, kw_only=True)
class Manifest:
    labels: tuple[str, ...]
    modalities: tuple[str, ...]  # modalities the model can use, canonical order
    experts: tuple[str, ...]  # expert names, index-aligned with the router's last axis
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # Each modality's inputs carry their own batch axis: rows exist only for samples where the
    # modality is present, so an absent modality's front-end runs on zero rows (no compute).
    input_groups: dict[str, tuple[str, ...]]  # modality -> its input names
    opset: int
    temperatures: dict[str, float]  # availability pattern key -> temperature (1.0 = uncalibrated)
    features: dict[str, Any]  # featurisation settings (engines.features constants at export)
    tokenizer_file: str | None = None  # relative to the model dir
    checkpoint_sha256: str = ""
    onnx_sha256: str = ""
    config: dict[str, Any] = field(default_factory=dict)  # resolved training/model config
    training_data: tuple[dict[str, str], ...] = ()  # {"name", "licence", "use", "note"}
    parity: dict[str, Any] = field(default_factory=dict)  # measured max abs diff + tolerance
    metrics: dict[str, Any] = field(default_factory=dict)  # validation numbers, with protocol
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        for name in ("labels", "modalities", "experts", "inputs", "outputs", "training_data"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "input_groups",
                           {m: tuple(v) for m, v in self.input_groups.items()})
        if len(self.labels) < 2:
            raise ManifestError("a model needs at least two labels")
        input_names = {s.name for s in self.inputs}
        for m, names in self.input_groups.items():
            if m not in self.modalities:
                raise ManifestError(f"input group for unknown modality {m!r}")
            unknown = set(names) - input_names
            if unknown:
                raise ManifestError(f"input group {m} names unknown inputs {sorted(unknown)}")
        bad = {k: t for k, t in self.temperatures.items() if not t > 0}
        if bad:
            raise ManifestError(f"temperatures must be > 0: {bad}")

    def temperature(self, pattern: str) -> float:
        return float(self.temperatures.get(pattern, 1.0))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False)

    def save(self, model_dir: Path) -> Path:
        path = Path(model_dir) / MANIFEST_NAME
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        try:
            version = int(d.get("format_version", FORMAT_VERSION))
            if version != FORMAT_VERSION:
                raise ManifestError(f"manifest format {version}, this code reads {FORMAT_VERSION}")
            fields = dict(d)
            fields["inputs"] = tuple(TensorSpec.from_dict(s) for s in d["inputs"])
            fields["outputs"] = tuple(TensorSpec.from_dict(s) for s in d["outputs"])
            fields["temperatures"] = {str(k): float(v) for k, v in d["temperatures"].items()}
            return cls(**fields)
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"invalid manifest: {exc}") from exc

    @classmethod
    def load(cls, model_dir: str | Path) -> Manifest:
        path = Path(model_dir) / MANIFEST_NAME
        if not path.is_file():
            raise ManifestError(f"no {MANIFEST_NAME} in {model_dir}")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path}: not JSON ({exc})") from exc

    def input_spec(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise ManifestError(f"no input named {name!r}")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
