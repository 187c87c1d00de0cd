#!/usr/bin/env bash
# Active-learning rounds with Label Studio as the labeling tool:
#   push the pending images -> people answer in Label Studio -> pull --wait -> fine-tune -> query
#
#   examples/al_rounds_labelstudio.sh PROJECT ROUNDS BUDGET [finetune options...]
#
# Needs a running Label Studio that can see the archive (README, "Label Studio") and
# LABEL_STUDIO_API_KEY. LABEL_STUDIO_URL (default http://localhost:8080) names the server;
# the first push creates a Label Studio project titled LS_TITLE (default: the project
# folder's name), later rounds go into the same project. First it pushes what is already
# pending (init-pool's initial list), then runs ROUNDS rounds of finetune -> query -> push ->
# pull. `pull --wait` returns once every pushed image is answered or skipped (at most WAIT
# seconds, default one day); if images are still pending then (skipped, or not answered in
# time) the script stops with exit code 75: answer them and run it again, it carries on.
#
# LS_LABELER, if set, is a command started in the background after each push as
# `LS_LABELER PROJECT`; the demo passes a stand-in that answers from gold labels
# (examples/ls_answer_from_gold.py). In real use people answer in the browser.
set -euo pipefail
project=$1; rounds=$2; budget=$3; shift 3
finetune_opts=("$@")
url=${LABEL_STUDIO_URL:-http://localhost:8080}
title=${LS_TITLE:-$(basename "$project")}

pending() {
  alft status -p "$project" --json | python3 -c \
    'import json,sys; print(len(json.load(sys.stdin)["pending"]))'
}

label_pending() {
  [[ $(pending) -eq 0 ]] && return 0
  # The first push creates the Label Studio project; later ones reuse the linked one.
  if alft labelstudio status -p "$project" > /dev/null 2>&1; then
    alft labelstudio push -p "$project"
  else
    alft labelstudio push -p "$project" --url "$url" --create "$title"
  fi
  [[ -n "${LS_LABELER:-}" ]] && $LS_LABELER "$project" &
  alft labelstudio pull -p "$project" --wait --timeout "${WAIT:-86400}" \
    --interval "${INTERVAL:-30}"
  wait  # for the stand-in labeler, if any
  local left
  left=$(pending)
  if (( left > 0 )); then
    echo "$left images are still pending (skipped or not answered yet): answer them in" \
      "Label Studio, then run this script again" >&2
    exit 75
  fi
}

label_pending  # the initial list, or a round an earlier run left pending
for ((i = 1; i <= rounds; i++)); do
  echo "== round $i: fine-tune, then query $budget images"
  alft finetune -p "$project" "${finetune_opts[@]}"
  alft query -p "$project" --budget "$budget" --strategy "${STRATEGY:-auto}"
  label_pending
done
