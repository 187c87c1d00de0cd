#!/usr/bin/env bash
# Run active-learning rounds the way a team does: query -> label -> import -> fine-tune.
#
#   examples/al_rounds.sh PROJECT ROUNDS BUDGET LABELER [finetune options...]
#
# LABELER is a command called as `LABELER QUERY.csv ANSWERS.csv`; it must write the labels
# of the queried images to ANSWERS.csv (one-hot or list CSV). In real use it is where people
# label (e.g. a script that waits for the spreadsheet or the Label Studio export); here the
# demo passes a stand-in that answers from the gold labels. Every step is a plain `alft` call,
# so a round can be re-run or resumed by hand.
set -euo pipefail
project=$1; rounds=$2; budget=$3; labeler=$4; shift 4
finetune_opts=("$@")

for ((i = 1; i <= rounds; i++)); do
  echo "== round $i: query $budget images"
  alft query -p "$project" --budget "$budget" --strategy "${STRATEGY:-auto}"
  query=$(alft status -p "$project" --json | python3 -c \
    'import json,sys; print(json.load(sys.stdin)["rounds"][-1]["query_file"])')
  [[ "$query" = /* ]] || query="$project/$query"
  answers="${query%.csv}.answers.csv"
  $labeler "$query" "$answers"
  alft import-labels "$answers" -p "$project"
  alft finetune -p "$project" "${finetune_opts[@]}"
done
