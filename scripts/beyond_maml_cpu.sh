#!/usr/bin/env bash
# MAML, ANIL, Meta-SGD, Reptile and MAML++ side by side, 5-way 1-shot, under one 2-CPU-core budget (the
# MAML row of scripts/omniglot_cpu_budget.sh): 600 meta-iterations, meta-batch 4 (Reptile: 5, as
# in its paper), strided Conv4-64, rotations as extra classes, 600 fixed test episodes; first on
# glyphs, then on the real Omniglot "minimal" background sets (small1+small2, 164/15/63
# characters). MAML-family runs train and test with 5 queries per class; Reptile trains on 10
# examples per class (5 + 5) and fine-tunes 50 Adam steps at test. About 35 minutes in all.
# Usage: scripts/beyond_maml_cpu.sh [OMNIGLOT_ROOT] [extra overrides...]
set -euo pipefail
root=${1:-../shared/data/omniglot}
shift || true
omniglot=(dataset=omniglot dataset.root="$(cd "$root" && pwd)" dataset.background=small1+small2
          dataset.split=random dataset.download=false dataset.rotations=true)
glyphs=(dataset=glyphs dataset.rotations=true)
common=(logger=none backbone=conv4 backbone.pool=stride task.way=5 task.shot=1 train.steps=600
        val.every=200 test.episodes=600 "$@")
for data in glyphs omniglot; do
  if [ "$data" = glyphs ]; then set_=("${glyphs[@]}"); else set_=("${omniglot[@]}"); fi
  for algo in maml anil metasgd; do
    metarun algo=$algo "${set_[@]}" task.meta_batch=4 task.query=5 "${common[@]}"
  done
  metarun algo=reptile "${set_[@]}" task.meta_batch=5 task.train_shot=5 task.query=5 "${common[@]}"
  # MAML++ with its paper's 5 inner steps of lr 0.1 (5x MAML's inner work per iteration here),
  # its annealing schedules scaled to 600 iterations as the paper's to 150 epochs: multi-step
  # loss over the first 40, first order for the first 200.
  metarun algo=mamlpp "${set_[@]}" task.meta_batch=4 task.query=5 algo.inner_lr=0.1 \
    algo.multi_step_loss=40 algo.first_order_until=200 "${common[@]}"
done
