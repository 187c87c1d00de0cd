#!/usr/bin/env bash
# The paper's configuration (Moellenbrok & Demir, IGARSS 2023) on UC Merced multi-label, as a
# chain of resumable commands of under 10 minutes each on one H100-class GPU.
#
#   DATA=../shared/data/ucmerced-ml OUT=sim-paper examples/paper_gpu.sh
#
# DenseNet121 at 256 px, BYOL (batch 100, Adam 1e-3), fine-tuning SGD lr 0.025, batch 10,
# lr x0.1 after epoch 80; 40 random initial labels, 20 per round up to 220; pool/val/test
# 1050/525/525; mge-clustering vs random. Every call works for at most MINUTES minutes,
# checkpoints, and exits 75 if there is more to do; the loop calls it again. What a run must
# hand back is small: OUT/report/ (curves, tables), OUT/simulation.json and the logs.
#
# Knobs for a short GPU slot (see docs/RESULTS.md for what fits in ~30 minutes):
#   BYOL_EPOCHS (paper 1000), FT_EPOCHS (paper 100), SEEDS (paper 5), SCENARIOS (1,2,3).
set -uo pipefail
data=${DATA:-../shared/data/ucmerced-ml}
out=${OUT:-sim-paper}
minutes=${MINUTES:-9}
while true; do
  alft simulate "$data/images" --labels "$data/labels.csv" -o "$out" \
    --image-size 256 --backbone densenet121 \
    --pretrain-epochs "${BYOL_EPOCHS:-1000}" --pretrain-batch-size 100 --pretrain-lr 1e-3 \
    --finetune-epochs "${FT_EPOCHS:-100}" --finetune-batch-size 10 --finetune-lr 0.025 \
    --lr-step "${LR_STEP:-80}" --initial 40 --budget 20 --max-labels 220 \
    --seeds "${SEEDS:-5}" --scenario "${SCENARIOS:-1}" \
    --strategies "${STRATEGIES:-mge-clustering,random}" --device cuda \
    --max-minutes "$minutes"
  rc=$?
  [ "$rc" -eq 0 ] && break
  [ "$rc" -eq 75 ] || exit "$rc"
  [ -n "${ONCE:-}" ] && exit 75   # one slot per call (e.g. a 10-minute device command)
done
alft report "$out"
