"""Loaders on the real files (marked `data`: skipped when ../shared/data is absent)."""

from __future__ import annotations

import numpy as np
import pytest

from engines.datasets import (
    LABELS,
    ckplus_windows,
    emodb_windows,
    group_kfold,
    holdout_groups,
    load_meld,
    read_meld_csv,
)
from engines.features import N_AUDIO_FRAMES, Tokenizer, log_mel

pytestmark = pytest.mark.data


def test_emodb_is_resampled_to_16k_and_labels_harmonised(shared_data) -> None:
    raw = emodb_windows(shared_data / "emodb" / "wav")
    assert len(raw.windows) == 408
    audio = raw.windows[0].audio
    assert audio is not None and audio.dtype == np.int16 and audio.size == 32000  # 2.0 s
    assert log_mel(audio).shape[1] == N_AUDIO_FRAMES
    assert sorted(set(raw.groups.tolist())) == ["03", "08", "09", "10", "11", "12", "13", "14"]
    names = {LABELS[i] for i in raw.labels}
    assert names == {"neutral", "happy", "sad", "angry", "fear", "disgust"}  # boredom->neutral
    assert not raw.label_mask[LABELS.index("surprise")]
    # boredom (L) is neutral: file 03a01Nc (neutral) and any L file share the label
    files = sorted((shared_data / "emodb" / "wav").glob("*.wav"))
    boredom = [i for i, p in enumerate(files) if p.stem[5] == "L"]
    assert boredom and all(LABELS[raw.labels[i]] == "neutral" for i in boredom)


def test_ckplus_has_six_classes_no_neutral_and_subject_groups(shared_data) -> None:
    raw = ckplus_windows(shared_data / "ckplus48")
    assert len(raw.windows) == 594
    video = raw.windows[0].video
    assert video is not None and video.shape == (1, 48, 48) and video.dtype == np.uint8
    assert not raw.label_mask[LABELS.index("neutral")]
    assert all(g.startswith("S") and len(g) == 4 for g in raw.groups)
    folds = group_kfold(raw.groups, 10)
    assert len(folds) == 10
    for k, test in enumerate(folds):  # no subject on both sides of any fold
        train = np.setdiff1d(np.arange(len(raw.labels)), test)
        assert not set(raw.groups[test]) & set(raw.groups[train]), k


def test_meld_apostrophes_labels_and_dialogue_groups(shared_data) -> None:
    texts, labels, dialogues = read_meld_csv(shared_data / "meld_text" / "train_sent_emo.csv")
    assert len(texts) == 9989
    assert not any("\u2019" in t or "\x92" in t for t in texts)
    assert "you must've had your hands full." in texts
    assert set(labels.tolist()) == set(range(len(LABELS)))
    tok = Tokenizer.fit(texts[:500], min_count=1)
    d = load_meld({"train": shared_data / "meld_text" / "train_sent_emo.csv",
                   "dev": shared_data / "meld_text" / "dev_sent_emo.csv"}, tok)
    assert (d.split == "dev").sum() == 1109
    assert not set(d.groups[d.split == "dev"]) & set(d.groups[d.split == "train"])
    val = holdout_groups(d.groups[d.split == "train"], 0.1, seed=0)
    train_groups = d.groups[d.split == "train"]
    assert not set(train_groups[val]) & set(train_groups[~val])

