#!/usr/bin/env bash
# Predicted vs measured step time of a single-GPU pipeline of several stages (issue #6).
#   bash benchmarks/gpu_pipeline.sh plan              # here: plans with the analytic H100 model
#   OUT=out/gpu bash benchmarks/gpu_pipeline.sh run   # on the GPU machine: runs them
# `plan` writes benchmarks/gpu_plans/plan_{v,loop}.json: a bf16 gpt on one H100
# (benchmarks/h100x1.yaml) with two stages on the one rank, V and loop placements. Planning
# needs OR-Tools, which the GPU image lacks, so the plans travel as files. `run` trains 6
# steps of each plan on the local GPU with parplan's torchrun runtime, checks loss and
# gradients against one process, and keeps outputs and measured Chrome traces under $OUT.
set -euo pipefail
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
MODEL="gpt:hidden=2048,heads=16,layers=8,vocab=32768,max_positions=2048,tie_embeddings=false"
PLANS=benchmarks/gpu_plans
case "${1:-}" in
  plan)
    mkdir -p "$PLANS"
    for PLACEMENT in v loop; do
      python -m parplan.cli plan "$MODEL" --cluster benchmarks/h100x1.yaml --pp 1 --placement "$PLACEMENT" \
          --batch 4 --seq 1024 -m 8 --time-limit 20 --no-mip -o "$PLANS/plan_$PLACEMENT.json" \
          | tee "$PLANS/plan_$PLACEMENT.txt"
    done ;;
  run)
    OUT=${OUT:-out/gpu_pipeline}
    mkdir -p "$OUT"
    for PLACEMENT in v loop; do
      python -m parplan.cli run "$PLANS/plan_$PLACEMENT.json" --nproc 1 --steps 6 --check --timeout 300 \
          --trace "$OUT/measured_$PLACEMENT.json" 2>&1 | tee "$OUT/run_$PLACEMENT.txt"
    done ;;
  *) echo "usage: bash benchmarks/gpu_pipeline.sh plan|run" >&2; exit 2 ;;
esac
