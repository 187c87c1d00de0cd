#!/usr/bin/env bash
# The paper's configuration (Moellenbrok & Demir, IGARSS 2023) on UC Merced multi-label, as a
# chain of resumable commands of under 10 minutes each on one H100/H200-class GPU.
#
#   SIM=sim-paper examples/paper_gpu.sh                  # on any machine with alft's packages
#
# DenseNet121 at 256 px, BYOL (batch 100, Adam 1e-3), fine-tuning SGD lr 0.025, batch 10,
# lr x0.1 after epoch 80; 40 random initial labels, 20 per round up to 220; pool/val/test
# 1050/525/525; mge-clustering vs random. Every call works for at most MINUTES minutes,
# checkpoints, and exits 75 if there is more to do; the loop calls it again. What a run must
# hand back is small: SIM/report/ (curves, tables), SIM/simulation.json and the logs.
#
# It runs where `alft` is not installed and pydantic is missing (the lent GPU machine): it
# calls `python3 -m alft_cli` from this checkout and installs the wheels carried in
# .gpu-carry/ (bench/gpu_prepare.py fills it here, UC Merced included) when alft does not
# import. On a lease, prefer bench/gpu_check.sh (one deadline-bound command that also writes
# versions and throughput to $OUT); for this script there, set SIM to a folder outside $OUT
# (it holds whole projects) and ONCE=1, and copy SIM/report/* into $OUT afterwards.
#
# Knobs for a short GPU slot (see docs/RESULTS.md for what fits in ~30 minutes):
#   BYOL_EPOCHS (paper 1000), FT_EPOCHS (paper 100), SEEDS (paper 5), SCENARIOS (1,2,3),
#   DATA (default ../shared/data/ucmerced-ml, else .gpu-carry/ucmerced-ml), SIM (output
#   folder, default sim-paper), DEVICE (default cuda), PYTHON (default python3); and, to try
#   the chain small (tests/test_gpu_check.py runs it on a CPU): IMAGE_SIZE, BACKBONE,
#   BYOL_BATCH, HIDDEN_DIM, PROJ_DIM, INITIAL, BUDGET, MAX_LABELS.
set -uo pipefail
caller=$PWD
absolute() { case "$1" in /*) echo "$1" ;; *) echo "$caller/$1" ;; esac; }
cd "$(dirname "$0")/.."
source bench/gpu_env.sh
alft() { "$py" -m alft_cli "$@"; }
if [ -n "${DATA:-}" ]; then
  data=$(absolute "$DATA")
elif [ -d ../shared/data/ucmerced-ml ]; then
  data=../shared/data/ucmerced-ml
else
  data=.gpu-carry/ucmerced-ml
fi
sim=$(absolute "${SIM:-sim-paper}")
minutes=${MINUTES:-9}
while true; do
  alft simulate "$data/images" --labels "$data/labels.csv" -o "$sim" \
    --image-size "${IMAGE_SIZE:-256}" --backbone "${BACKBONE:-densenet121}" \
    --pretrain-epochs "${BYOL_EPOCHS:-1000}" --pretrain-batch-size "${BYOL_BATCH:-100}" \
    --pretrain-lr 1e-3 --hidden-dim "${HIDDEN_DIM:-4096}" --proj-dim "${PROJ_DIM:-256}" \
    --finetune-epochs "${FT_EPOCHS:-100}" --finetune-batch-size 10 --finetune-lr 0.025 \
    --lr-step "${LR_STEP:-80}" --initial "${INITIAL:-40}" --budget "${BUDGET:-20}" \
    --max-labels "${MAX_LABELS:-220}" --seeds "${SEEDS:-5}" --scenario "${SCENARIOS:-1}" \
    --strategies "${STRATEGIES:-mge-clustering,random}" --device "${DEVICE:-cuda}" \
    --max-minutes "$minutes"
  rc=$?
  [ "$rc" -eq 0 ] && break
  [ "$rc" -eq 75 ] || exit "$rc"
  [ -n "${ONCE:-}" ] && exit 75   # one slot per call (e.g. a 10-minute device command)
done
alft report "$sim"
