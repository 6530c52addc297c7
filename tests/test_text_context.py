"""bench/finetune_text.py's causal dialogue context: past lines of the same dialogue only.

The README reports a MELD number "with the previous line as context" and calls it causal;
this pins that down (file order shuffled, two dialogues interleaved).
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def _bench_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("finetune_text", ROOT / "bench/finetune_text.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(path: Path, rows: list[tuple[int, int, str, str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["Utterance", "Emotion", "Dialogue_ID", "Utterance_ID"])
        w.writeheader()
        for dia, utt, text, emotion in rows:
            w.writerow({"Utterance": text, "Emotion": emotion, "Dialogue_ID": dia,
                        "Utterance_ID": utt})


def test_context_is_past_lines_of_the_same_dialogue_most_recent_first(tmp_path: Path) -> None:
    ft = _bench_module()
    path = tmp_path / "train_sent_emo.csv"
    _write(path, [(1, 2, "b3", "joy"), (0, 1, "a2", "anger"), (1, 0, "b1", "neutral"),
                  (0, 0, "a1", "neutral"), (1, 1, "b2", "sadness"), (0, 2, "a3", "joy")])
    texts, contexts, labels, dialogues = ft.read_dialogues(path, context=2)
    sep = ft.CONTEXT_SEPARATOR
    assert texts == ["a1", "a2", "a3", "b1", "b2", "b3"]
    assert contexts == ["", "a1", f"a2{sep}a1", "", "b1", f"b2{sep}b1"]
    assert list(dialogues) == ["train_sent_emo:0"] * 3 + ["train_sent_emo:1"] * 3
    assert labels.shape == (6,)
    _, no_context, _, _ = ft.read_dialogues(path, context=0)
    assert no_context == [""] * 6
