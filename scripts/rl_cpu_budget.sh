#!/usr/bin/env bash
# docs/rl.md's results: MAML-TRPO against the pretrained and random baselines on the same fixed
# test tasks, on 2 CPU cores (two runs side by side, one thread each; about 1 h 15 min in all):
# 2D navigation with the paper's preset cut to 200 meta-iterations, and HalfCheetah goal
# velocity on a CPU budget (100-step episodes, 20 tasks x 10 trajectories, 250 iterations).
# Runs land in outputs/rl/; scripts/rl_table.py prints the table from their summaries.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=${OUT:-outputs/rl}
NAV="experiment=maml_rl_navigation2d train.steps=200 device.threads=1 logger=none"
VEL="experiment=maml_rl_halfcheetah_vel dataset.horizon=100 task.meta_batch=20"
VEL="$VEL task.train_shot=10 task.train_query=10 train.steps=250 val.episodes=20"
VEL="$VEL device.threads=1 logger=none"
pair() {  # two runs side by side
  "$BIN/metarun" $1 hydra.run.dir="$OUT/$2" > "$OUT/$2.log" 2>&1 &
  "$BIN/metarun" $3 hydra.run.dir="$OUT/$4" > "$OUT/$4.log" 2>&1
  wait
}
mkdir -p "$OUT"
pair "$NAV" nav_maml "$NAV algo=pretrained_rl" nav_pretrained
pair "$VEL" vel_maml "$VEL algo=pretrained_rl" vel_pretrained
pair "$NAV algo=pretrained_rl train.steps=0" nav_random "$VEL algo=pretrained_rl train.steps=0" vel_random
"$BIN/python" scripts/rl_table.py "$OUT"
