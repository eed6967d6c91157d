#!/usr/bin/env bash
# ProtoNet, MAML and first-order MAML, 5-way 1-shot and 5-shot, on the real Omniglot "minimal"
# background sets (small1+small2: 242 characters, split 164/15/63 by character, rotations as
# extra classes), then 5-way 1-shot on glyphs, under a 2-CPU-core budget (about 25 minutes in
# all). The paper presets, scaled down: ProtoNet trains 20-way (not 60) for 1,000 episodes; MAML
# uses meta-batch 4 (not 32) and 5 queries (not 15) for 600 meta-iterations. Each run tests on
# 600 fixed episodes. Usage: scripts/omniglot_cpu_budget.sh [OMNIGLOT_ROOT] [extra overrides...]
set -euo pipefail
root=${1:-../shared/data/omniglot}
shift || true
omniglot=(dataset.root="$(cd "$root" && pwd)" dataset.background=small1+small2
          dataset.split=random dataset.download=false)
common=(logger=none val.every=200 test.episodes=600 "$@")
protonet=(train.steps=1000 task.train_way=20)
maml=(train.steps=600 task.meta_batch=4 task.query=5)

for shot in 1 5; do
  metarun experiment=protonet_omniglot_5w${shot}s "${omniglot[@]}" "${protonet[@]}" "${common[@]}"
  metarun experiment=maml_omniglot_5w${shot}s "${omniglot[@]}" "${maml[@]}" "${common[@]}"
  metarun experiment=fomaml_omniglot_5w${shot}s "${omniglot[@]}" "${maml[@]}" "${common[@]}"
done
# glyphs: the same budgets; MAML with the Omniglot presets' strided Conv4 (its inner loop comes
# from algo_dataset/maml_glyphs.yaml).
metarun experiment=quickstart "${protonet[@]}" "${common[@]}"
for algo in maml fomaml; do
  metarun algo=$algo dataset=glyphs backbone.pool=stride "${maml[@]}" "${common[@]}"
done
