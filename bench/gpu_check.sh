#!/usr/bin/env bash
# The one device command of a GPU lease (issue 19): versions, the paper configuration at the
# size that fits, throughput ratios, all inside a deadline, everything written to $OUT.
#
# HERE, before the lease (fills the git-ignored .gpu-carry/: wheels of what the device lacks,
# for cp312 manylinux, and a copy of UC Merced; sums what would travel, refuses > 64 MiB):
#
#   python bench/gpu_prepare.py
#
# THE DEVICE CALL (run tool), once, early in the session:
#
#   command:   bash bench/gpu_check.sh --deadline-min 8
#   carry:     [".gpu-carry"]
#   timeout_s: 560
#
# The script's own deadline (8 min from its start, wheel install included) ends the work and
# a watchdog ends the process 20 s after it, so the results of a slow run still come back;
# timeout_s 560 leaves the run tool's kill as a last resort only. With 15 minutes of device
# time per session (a start costs 1-2 minutes), a rerun fits only on the warm machine, at
# once, with what status's budget_left_s allows minus a minute, e.g.
#   bash bench/gpu_check.sh --deadline-min 3 --only env,throughput      (timeout_s 230)
# then give the machine back. Read $OUT/summary.md first (results.json has every figure,
# log.txt the whole output).
#
# Options go to bench/gpu_check.py (--help): --device, --deadline-min, --only
# env,paper,throughput, --data DIR or --synthetic N, --backbone, --image-size, budgets...
# Environment: PYTHON (default python3: the machine's own, with its torch), OUT (default
# bench/out/gpu-check), ALFT_CARRY (default .gpu-carry), ALFT_SITE (where carried wheels are
# installed, default /tmp/alft-site).
set -uo pipefail
cd "$(dirname "$0")/.."
started_at=$(date +%s.%N)
out=${OUT:-bench/out/gpu-check}
mkdir -p "$out"

deadline_min=8
prev=""
for arg in "$@"; do
  case "$arg" in --deadline-min=*) deadline_min=${arg#*=} ;; esac
  [ "$prev" = "--deadline-min" ] && deadline_min=$arg
  prev=$arg
done
# Hard stop well after the watchdog (deadline + 20 s): only if Python itself hangs.
hard_s=$(awk -v m="$deadline_min" 'BEGIN { printf "%d", m * 60 + 45 }')

{
  echo "gpu_check: $(date -u +%FT%TZ) on $(hostname); deadline ${deadline_min} min; python:" \
       "${PYTHON:-python3}"
  source bench/gpu_env.sh
  PYTHONUNBUFFERED=1 timeout --kill-after=10 "$hard_s" \
    "$py" bench/gpu_check.py --out "$out" --started-at "$started_at" "$@"
  rc=$?
  [ "$rc" -eq 124 ] && echo "gpu_check: killed by the hard stop after ${hard_s}s"
  echo "gpu_check: exit status $rc"
  exit "$rc"
} 2>&1 | tee "$out/log.txt"
exit "${PIPESTATUS[0]}"
