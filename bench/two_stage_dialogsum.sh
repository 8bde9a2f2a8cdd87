#!/bin/bash
# Issue 18's two-stage recipe, measured: stage 1 (continued pre-training of smollm2 on DialogSum's dialogues),
# then stage 2 (summarisation, 100 dialogues) from stage 1 and from the pretrained model, with three training
# seeds each, one run after another (two arms at once would share the cores). Each run prints its card; the
# figures BENCHMARKS.md quotes are in the cards' "Test results" and "Forgetting" tables.
#   bash bench/two_stage_dialogsum.sh [OUTPUT_DIR]      (run from the repository root, ../shared beside it)
set -euo pipefail
out=${1:-runs/two-stage}
tunelab train configs/cpt-dialogsum-smollm2.yaml output_dir="$out"
stage_one=$(ls -d "$out"/cpt-dialogsum-smollm2-* | tail -1)
for seed in 42 1 2; do
  tunelab train configs/summarise-dialogsum-smollm2.yaml model.name="$stage_one" output_dir="$out" \
    name=after-cpt-seed$seed training.seed=$seed data.max_eval_examples=100
  tunelab train configs/summarise-dialogsum-smollm2.yaml output_dir="$out" \
    name=alone-seed$seed training.seed=$seed data.max_eval_examples=100
done
