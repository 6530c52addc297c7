"""Which raw windows a live model trained on, and which it did not: the calibration set of the
INT8 graph comes from the first, its accuracy check from the second.

`engines.live_train` holds out a fraction of each dataset's groups (EmoDB speakers, CK+
subjects, MELD training dialogues) for epoch selection, with `holdout_groups(groups,
val_fraction, seed)`; the manifest carries that config, so the same split is recomputed here
exactly. MELD dev is never used for training or selection. So:

  training side (calibration): EmoDB/CK+ training groups, MELD train minus its validation
                               dialogues;
  evaluation side (accuracy):  EmoDB/CK+ validation groups, MELD dev.

Models trained on generated data (`data = "synthetic"`, e.g. the tiny test model) regenerate
the same windows and split them the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.backend import WindowInputs
from engines.datasets import (
    LabelledWindows,
    ckplus_windows,
    emodb_windows,
    holdout_groups,
    meld_windows,
    synthetic_windows,
    with_speaker_centres,
)


@dataclass(frozen=True, kw_only=True)
class SplitWindows:
    """Per modality: windows the model trained on and windows it did not (with labels)."""

    train: dict[str, LabelledWindows]
    heldout: dict[str, LabelledWindows]
    source: dict[str, str]  # modality -> what the held-out side is, in words


def _take(raw: LabelledWindows, mask: np.ndarray, name: str) -> LabelledWindows:
    idx = np.flatnonzero(mask)
    return LabelledWindows(name=name, windows=[raw.windows[i] for i in idx],
                           labels=raw.labels[idx], groups=raw.groups[idx],
                           label_mask=raw.label_mask)


def only(raw: LabelledWindows, modality: str) -> LabelledWindows:
    """Keep one modality of each window (generated windows carry all three)."""
    return LabelledWindows(
        name=raw.name, labels=raw.labels, groups=raw.groups, label_mask=raw.label_mask,
        windows=[w.only((modality,)) for w in raw.windows])


def split_windows(training: dict[str, Any], modalities: tuple[str, ...],
                  data_dir: Path | None) -> SplitWindows:
    """`training` = the manifest's config["training"] (engines.live_train.LiveTrainConfig)."""
    frac = float(training.get("val_fraction", 0.15))
    seed = int(training.get("seed", 0))
    train: dict[str, LabelledWindows] = {}
    heldout: dict[str, LabelledWindows] = {}
    source: dict[str, str] = {}
    if training.get("data", "real") == "synthetic":
        raw = synthetic_windows(int(training.get("synthetic_n", 96)), seed=seed)
        val = holdout_groups(raw.groups, frac, seed)
        for m in modalities:
            train[m] = _take(only(raw, m), ~val, f"synthetic-{m}-train")
            heldout[m] = _take(only(raw, m), val, f"synthetic-{m}-validation-groups")
            source[m] = "generated windows, validation groups of the training recipe"
        return SplitWindows(train=train, heldout=heldout, source=source)
    root = Path(data_dir or training.get("data_dir", "../shared/data"))
    if "audio" in modalities:
        # each clip carries its speaker's causal centre (for models trained with it)
        raw = with_speaker_centres(emodb_windows(root / "emodb" / "wav"))
        val = holdout_groups(raw.groups, frac, seed)
        train["audio"] = _take(raw, ~val, "emodb-train")
        heldout["audio"] = _take(raw, val, "emodb-validation-speakers")
        source["audio"] = f"EmoDB validation speakers {sorted(set(raw.groups[val].tolist()))}"
    if "video" in modalities:
        raw = ckplus_windows(root / "ckplus48")
        val = holdout_groups(raw.groups, frac, seed)
        train["video"] = _take(raw, ~val, "ckplus-train")
        heldout["video"] = _take(raw, val, "ckplus-validation-subjects")
        source["video"] = f"CK+48 validation subjects ({int(np.unique(raw.groups[val]).size)})"
    if "text" in modalities:
        raw = meld_windows(root / "meld_text" / "train_sent_emo.csv")
        val = holdout_groups(raw.groups, frac, seed)
        train["text"] = _take(raw, ~val, "meld-train")
        heldout["text"] = meld_windows(root / "meld_text" / "dev_sent_emo.csv")
        source["text"] = "MELD dev (never used for training or selection)"
    return SplitWindows(train=train, heldout=heldout, source=source)


def pattern_windows(parts: dict[str, LabelledWindows], pattern: tuple[str, ...], n: int,
                    seed: int) -> LabelledWindows:
    """Windows for one availability pattern.

    One modality: its windows as they are (real). Several: SYNTHETIC label-matched pairing — a
    label drawn among the classes every modality's set has, then one window per modality with
    that label — because no public set records all three modalities together.
    """
    if len(pattern) == 1:
        return parts[pattern[0]]
    rng = np.random.default_rng(seed)
    mask = np.logical_and.reduce([parts[m].label_mask for m in pattern])
    classes = [c for c in np.flatnonzero(mask)
               if all((parts[m].labels == c).any() for m in pattern)]
    if not classes:
        raise ValueError(f"no label common to {pattern}")
    labels = rng.choice(classes, size=n)
    windows = []
    for c in labels:
        windows.append(WindowInputs.pick({
            m: parts[m].windows[int(rng.choice(np.flatnonzero(parts[m].labels == c)))]
            for m in pattern}))
    return LabelledWindows(name="SYNTHETIC " + "+".join(pattern), windows=windows,
                           labels=labels.astype(np.int64), groups=np.array(["synthetic"] * n),
                           label_mask=mask)
