#!/usr/bin/env bash
# Rebuilds models/live from ../shared/data (or $EDGE_DATA_DIR) on CPU:
#   grouped CV of the audio (EmoDB, leave-one-speaker-out) and video (CK+48, 10-fold by subject)
#   experts, the final front-ends (epoch selected on held-out training groups), MoMKE stage 1,
#   the mixing stage on SYNTHETIC label-matched triples, per-pattern temperatures, ONNX export
#   with checker + torch/onnxruntime parity, the model card, and the front-end benchmark; the
#   audio CV without the speaker normaliser for comparison, and the INT8 graph with its gates.
#   The shipped models/live re-ran the later stages on the front-ends of the build before it
#   (`edge-train-live configs/live.toml --frontends-from models/live/live.pt`, same recipe and
#   seeds); from scratch this script trains the front-ends again.
#   bash models/build_live.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
DATA=${EDGE_DATA_DIR:-../shared/data}
RUN=${RUN:-runs/live}
$BIN/edge-train-live configs/live.toml --out "$RUN" --data-dir "$DATA"
# the audio expert's CV without the speaker normaliser, side by side in the model card
$BIN/edge-train-live configs/live_audio_plain.toml --cv-only audio --out "$RUN/audio_plain" \
  --data-dir "$DATA"
$BIN/edge-export --checkpoint "$RUN/live.pt" --out models/live --data-dir "$DATA"
cp "$RUN/live.pt" models/live/live.pt   # the torch reference backend loads it
cp "$RUN/config.json" models/live/train_config.json
cp "$RUN/metrics.json" models/live/train_metrics.json
# MELD dev: scored only (no choice in the recipe looks at it)
$BIN/edge-eval --model models/live --backend onnxruntime --json "$RUN/eval_meld_dev.json" \
  --meld "$DATA/meld_text/dev_sent_emo.csv"
bash models/build_int8.sh models/live
$BIN/python bench/bench_frontends.py --model models/live --json models/live/bench_frontends.json
$BIN/python -m engines.live_card "$RUN" models/live
