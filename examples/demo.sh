#!/usr/bin/env bash
# The whole alft loop on the built-in synthetic archive, small enough for a laptop CPU
# (about 5 minutes on 2 cores). Every step is a plain `alft` command; read this file as the
# recipe for your own archive (swap the synthetic data for your folder and labels).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${DEMO_OUT:-demo-out}
rm -rf "$out"
mkdir -p "$out"
proj="$out/project"
gold="$out/archive/labels.csv"
# Stand-in for the people who label: answers each query from the gold labels.
labeler="python3 $here/label_from_gold.py $gold"
# Small, CPU-friendly settings (the paper's defaults are DenseNet121, 256 px, 1000 epochs).
finetune=(--epochs 12 --lr-step 9 --batch-size 10)

echo "== 1. a synthetic multi-label archive (400 aerial-like scenes, 10 classes)"
alft demo-data "$out/archive" --n-images 400 --image-size 48 --imbalance 2

echo "== 2. index it: pool/val/test split, decode cache, random initial to-label list"
alft init-pool "$out/archive/images" -p "$proj" --labels "$gold" --image-size 32 --initial 40

echo "== 3. BYOL self-supervised pretraining on all images (no labels)"
alft pretrain -p "$proj" --backbone resnet18 --epochs 12 --batch-size 64 \
  --hidden-dim 512 --proj-dim 128 --checkpoint-every 5

echo "== 4. label the initial set, import it, fine-tune round 0"
$labeler "$proj/rounds/round_000/query.csv" "$out/initial-answers.csv"
alft import-labels "$out/initial-answers.csv" -p "$proj"
alft finetune -p "$proj" "${finetune[@]}"

echo "== 5. active-learning rounds: query (auto: MGE+Clustering and random draws, split by whose labels helped more) -> label -> import -> fine-tune"
bash "$here/al_rounds.sh" "$proj" 3 20 "$labeler" "${finetune[@]}"

echo "== 6. where things stand (rounds, labels, val/test F1), and a consistency check"
alft status -p "$proj"
alft doctor -p "$proj"

echo "== 7. export the last round's classifier to ONNX (parity-checked against torch)"
alft export -p "$proj" --out "$out/model.onnx"

echo "== 8. tag the whole archive with onnxruntime (no project needed; CUDA when present)"
alft tag "$out/model.onnx" "$out/archive/images" --out "$out/tags.csv"
head -n 4 "$out/tags.csv"

echo "== 9. will AL pay off? an oracle simulation (gold labels answer the queries), then its report"
# Tiny on purpose (no BYOL, 4 epochs, 2 seeds): the shape of the experiment, not its numbers.
alft simulate "$out/archive/images" --labels "$gold" -o "$out/sim" --seeds 2 --initial 20 \
  --budget 10 --max-labels 40 --image-size 32 --backbone resnet18 --pretrain-epochs 0 \
  --finetune-epochs 4 --lr-step 0
alft report "$out/sim"
head -n 8 "$out/sim/report/curves.md"

cat <<EOT

Demo finished. Outputs:
  project folder      $proj   (alft.db, config.json, rounds/round_NNN/{query.csv,model.pt,metrics.json})
  labels per round    alft status -p $proj --json
  ONNX model          $out/model.onnx   (classes, thresholds, preprocessing in its metadata)
  archive tags        $out/tags.csv
  simulation report   $out/sim/report/curves.md  (+ curves_s1.png, paired_s1.png)
On your own archive:
  alft init-pool /path/to/images -p myproj --labels gold.csv   # or --classes a,b,c
  alft pretrain -p myproj --backbone densenet121               # paper setting; use a GPU
  # label myproj/rounds/round_000/query.csv, then:
  alft import-labels answers.csv -p myproj && alft finetune -p myproj
  alft query -p myproj --budget 20                             # and repeat
  alft export -p myproj --out model.onnx && alft tag model.onnx /path/to/archive --out tags.csv
Will AL pay off on your data? With gold labels for part of it:  alft simulate --help
EOT
# make runs this script with the virtual environment's bin/ on the PATH; a new shell has not.
alft_bin=$(dirname "$(command -v alft)")
if [ -f "$alft_bin/activate" ]; then
  echo "alft is in $alft_bin: in a new shell, first run  source $alft_bin/activate"
fi
