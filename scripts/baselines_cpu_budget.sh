#!/usr/bin/env bash
# The transfer baselines next to ProtoNet and MAML under scripts/omniglot_cpu_budget.sh's 2-core
# CPU budgets, on the real Omniglot "minimal" background sets (small1+small2, split 164/15/63 by
# character, rotations as extra classes) and on glyphs. Trains, into OUT (default
# outputs/baselines), one run per folder (a folder with a finished run is kept):
#   protonet_*, maml_*   the budget runs of scripts/omniglot_cpu_budget.sh (ProtoNet 20-way for
#                        1,000 episodes; MAML meta-batch 4, 5 queries, 600 iterations)
#   pretrain_*           algo=pretrain (Omniglot: experiment=pretrain_omniglot_5w1s): RFS's
#                        optimizer (SGD 0.05, momentum 0.9, weight decay 5e-4) cosine-annealed
#                        over 2,000 steps of 64 images (128,000 images, the ProtoNet 1-shot
#                        budget's 120,000), validated with the prototype head
#   baselinepp_*         the same with Baseline++'s cosine classifier
#   pmf_*                P>M>F: ProtoNet's budget run started from pretrain_*'s weights
# then scripts/baselines_table.py scores every run on the same 600 test episodes per setting.
# Usage: scripts/baselines_cpu_budget.sh [omniglot|glyphs|all] [OMNIGLOT_ROOT]; about 25 minutes
# per data set on one core (two data sets side by side on 2 cores: `... omniglot & ... glyphs`).
set -euo pipefail
which=${1:-all}
root=${2:-../shared/data/omniglot}
out=${OUT:-outputs/baselines}
export OMP_NUM_THREADS=1
omniglot=(dataset.root="$(cd "$root" && pwd)" dataset.background=small1+small2
          dataset.split=random dataset.download=false)
common=(logger=none val.every=200 test.episodes=600 device.threads=1)
protonet=(train.steps=1000 task.train_way=20)
maml=(train.steps=600 task.meta_batch=4 task.query=5)
budget=(train.steps=2000 val.every=500 algo.head=prototype)
# Omniglot: the pretrain_omniglot_5w1s preset (rotations, RFS's optimizer, cosine) at this budget;
# glyphs: the same optimizer and schedule on the command line
pretrain_omniglot=(experiment=pretrain_omniglot_5w1s "${omniglot[@]}" "${budget[@]}")
pretrain_glyphs=(algo=pretrain dataset=glyphs "${budget[@]}"
  algo.optimizer._target_=torch.optim.SGD algo.optimizer.lr=0.05
  +algo.optimizer.momentum=0.9 +algo.optimizer.weight_decay=5e-4
  "+algo.scheduler={_target_:torch.optim.lr_scheduler.CosineAnnealingLR,_partial_:true,T_max:2000}")

run() {  # run FOLDER overrides...: one run, unless FOLDER already holds a finished one
  local dir=$out/$1
  shift
  if grep -qs '"status": "finished"' "$dir/summary.json"; then echo "kept $dir"; return; fi
  if [ -e "$dir" ]; then echo "$dir holds an unfinished run: remove it to run it again"; return; fi
  metarun hydra.run.dir="$dir" "$@" "${common[@]}" | grep -E "test/acc|error" || true
}

if [ "$which" != glyphs ]; then
  run pretrain_omniglot "${pretrain_omniglot[@]}"
  run baselinepp_omniglot "${pretrain_omniglot[@]}" algo.classifier=cosine
  for shot in 1 5; do
    o=(experiment=protonet_omniglot_5w${shot}s "${omniglot[@]}" "${protonet[@]}")
    run protonet_omniglot_${shot}s "${o[@]}"
    run pmf_omniglot_${shot}s "${o[@]}" train.init_from="$out/pretrain_omniglot"
    run maml_omniglot_${shot}s experiment=maml_omniglot_5w${shot}s "${omniglot[@]}" "${maml[@]}"
  done
fi
if [ "$which" != omniglot ]; then
  run pretrain_glyphs "${pretrain_glyphs[@]}"
  run baselinepp_glyphs "${pretrain_glyphs[@]}" algo.classifier=cosine
  run protonet_glyphs_1s experiment=quickstart "${protonet[@]}"
  run pmf_glyphs_1s experiment=quickstart "${protonet[@]}" train.init_from="$out/pretrain_glyphs"
  run maml_glyphs_1s algo=maml dataset=glyphs backbone.pool=stride "${maml[@]}"
fi
