#!/usr/bin/env bash
# INT8 for an exported live model: model.int8.onnx (QDQ, from training-side calibration windows)
# + quantization.json (FP32 vs INT8 per availability pattern on held-out data, size, CPU
# latency) beside model.onnx, then the parity gates with their tolerances written into
# manifest.json. Runs on CPU.
#   bash models/build_int8.sh models/live
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-models/live}
DATA=${EDGE_DATA_DIR:-../shared/data}
.venv/bin/edge-quantize --model "$MODEL" --data-dir "$DATA"
.venv/bin/edge-parity --model "$MODEL" --data-dir "$DATA" --write
