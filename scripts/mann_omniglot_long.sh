#!/usr/bin/env bash
# MANN (one read head) and its LSTM baseline on the Omniglot "minimal" background sets
# (small1+small2: 164 training characters x 4 rotations, 15 validation, 63 held-out test
# characters), the paper's episodes (5 classes x 10 presentations, 20x20, 16 per batch), Adam
# 3e-3, each training image shifted by up to 2 pixels, for 50,000 batches = 800,000 episodes
# (the paper's reproductions run 100,000 batches). One sweep of 20,000 batches, then both jobs
# resumed to 50,000: the same runs as one 50,000-batch sweep, in pieces that fit a session.
# One job per core: about 2 hours for MANN, 50 minutes for the LSTM on a 2-core CPU.
# Usage: scripts/mann_omniglot_long.sh [OMNIGLOT_ROOT] [STEPS]
set -euo pipefail
root=$(cd "${1:-../shared/data/omniglot}" && pwd)
steps=${2:-50000}
out=outputs/mann_omniglot_long
# The preset carries the recipe (one head, Adam 3e-3, shift 2, 50,000 batches).
common=(experiment=mann_omniglot_5way dataset.root="$root" dataset.background=small1+small2
  dataset.download=false)
if [ ! -d "$out/sweep/1/checkpoints" ]; then
  OMP_NUM_THREADS=1 metarun -m algo=mann,lstm "${common[@]}" train.steps=20000 \
    hydra/launcher=joblib hydra.launcher.n_jobs=2 hydra.sweep.dir="$out/sweep"
fi
# Job 0 is MANN, job 1 the LSTM (the sweep's order); both continue from checkpoints/last.pt.
OMP_NUM_THREADS=1 metarun resume=true resume_dir="$out/sweep/0" algo=mann "${common[@]}" \
  train.steps="$steps" &
OMP_NUM_THREADS=1 metarun resume=true resume_dir="$out/sweep/1" algo=lstm "${common[@]}" \
  train.steps="$steps" &
wait
metarun-report "$out/sweep" --out "$out"
