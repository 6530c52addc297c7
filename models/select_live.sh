#!/usr/bin/env bash
# Nested grouped-CV choice between one-line variants of configs/live.toml, for the audio
# (EmoDB, leave one speaker out) and video (CK+48, 10 folds by subject) experts
# (engines/live_select.py says how the choice and the honest estimate are made).
# The shipped audio expert is 3 copies of the pick trained apart; `ensemble` scores that
# procedure nested the same way (per outer fold: 3 copies of that fold's pick).
# ~100 min on the shared 2-core machine (two variants at a time); then put the chosen lines in
# configs/live.toml and run models/build_live.sh (the card then shows the nested estimates).
#   bash models/select_live.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/select}
JOBS=${JOBS:-2}
# name, then the --set overrides that make the variant (none = configs/live.toml as shipped
# before this selection: audio width 48, HOG faces without augmentation)
AUDIO_VARIANTS='width48
epochs60 --set epochs.audio=60
lr1e-3 --set lr=1e-3
lr3e-3 --set lr=3e-3
wd0.05 --set frontend_weight_decay.audio=0.05
smooth0.05 --set label_smoothing.audio=0.05
smooth0.1 --set label_smoothing.audio=0.1
dropout0.3 --set model.frontend_dropout.audio=0.3
epochs30 --set epochs.audio=30
warp --set augmentation.audio=\"warp\"
warp_dropout0.3 --set augmentation.audio=\"warp\" --set model.frontend_dropout.audio=0.3
warp_epochs60 --set augmentation.audio=\"warp\" --set epochs.audio=60'
VIDEO_VARIANTS='hog
hog_augmented --set no_augment=[]
wd0.3 --set frontend_weight_decay.video=0.3
wd3 --set frontend_weight_decay.video=3.0
smooth0.05 --set label_smoothing.video=0.05
smooth0.1 --set label_smoothing.video=0.1
flip_wd0.3 --set no_augment=[] --set augmentation.video=\"flip\" --set frontend_weight_decay.video=0.3
cells84_wd0.3 --set model.hog_cells=[8,4] --set frontend_weight_decay.video=0.3
cells84_flip_wd0.3 --set model.hog_cells=[8,4] --set no_augment=[] --set augmentation.video=\"flip\" --set frontend_weight_decay.video=0.3'
mkdir -p "$OUT"
BASE="$OUT/base.toml"  # kept: `live_select ensemble` re-trains picks from it
# the variants start from the pre-selection recipe: audio dropout 0.2 like the other front-ends,
# the HOG face map at the common weight decay, 8-pixel cells, no augmentation; one copy each
sed -e 's/^frontend_dropout = .*/frontend_dropout = { audio = 0.2, video = 0.2, text = 0.2 }/' \
    -e 's/^frontend_weight_decay = .*/frontend_weight_decay = {}/' \
    -e 's/^no_augment = .*/no_augment = ["video"]/' -e 's/^augmentation = .*/augmentation = {}/' \
    -e 's/^hog_cells = .*/hog_cells = [8]/' -e 's/^frontend_members = .*/frontend_members = {}/' \
    configs/live.toml > "$BASE"
for modality in audio video; do
  variants=AUDIO_VARIANTS; [ "$modality" = video ] && variants=VIDEO_VARIANTS
  mkdir -p "$OUT/$modality"
  echo "${!variants}" | BASE="$BASE" OUT="$OUT/$modality" M="$modality" xargs -P "$JOBS" -L 1 \
    sh -c 'nice -n 5 .venv/bin/python -m engines.live_select score "$BASE" "$@" --modality "$M" \
           --out "$OUT/$0.json" > "$OUT/$0.log" 2>&1'
  .venv/bin/python -m engines.live_select choose "$OUT/$modality"/*.json \
    --json "$OUT/${modality}_choice.json"
  # the model card reads it: the nested estimate is the number that holds for unseen people
  cp "$OUT/${modality}_choice.json" "models/live/selection_$modality.json"
done
nice -n 5 .venv/bin/python -m engines.live_select ensemble "$BASE" "$OUT/audio"/*.json \
  --members 3 --modality audio --out "$OUT/audio_ensemble3.json"
cp "$OUT/audio_ensemble3.json" models/live/selection_audio_ensemble3.json
