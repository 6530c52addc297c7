#!/usr/bin/env bash
# Rebuilds everything under models/ from ../shared/data (or $EDGE_DATA_DIR) on CPU: the RAVDESS
# missing-modality benchmark (models/ravdess: CV tables of MoMKE and every baseline, final model,
# ONNX) and the product's live model (models/live: front-ends, MoMKE, SYNTHETIC mixing stage,
# temperatures, FP32 + INT8 ONNX, card, front-end bench). Hours on a 2-core machine.
#   bash models/build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash models/build_ravdess.sh
bash models/build_live.sh
