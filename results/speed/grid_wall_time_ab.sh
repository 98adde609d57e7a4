#!/bin/bash
# Paired A/B of whole grid runs: the paper grid's seed-0 configuration (init qkv_copy, or INIT) at HEAD and at an
# older commit (e262c35, the grid's, unless OLD_TREE is another), alternating.
# Run from the repository root: HEAD_TREE=<worktree at the new commit> OLD_TREE=<worktree at e262c35> OUT=<empty folder>
#   [INIT=qkv_copy+matrix_mixing] bash results/speed/grid_wall_time_ab.sh mamba rwkv gla gated_deltanet
# Each side builds kernels/native into its own folder under OUT during its first run: start with a throw-away pair,
# or build both first (TORCH_EXTENSIONS_DIR=OUT/extensions-head|old python -c "import kernels.native as n; n.module()"
# in each worktree).
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
for s in "$@"; do
  for side in head old; do
    dir=${HEAD_TREE:?worktree of the new commit}; [ $side = old ] && dir=${OLD_TREE:?worktree of e262c35}
    cd $dir
    start=$(date +%s.%N)
    # one torch extensions folder per side: with one, each switch of sources rebuilds kernels/native inside the run
    TORCH_EXTENSIONS_DIR=${OUT:?output folder}/extensions-$side python -m bench.run --student $s --init ${INIT:-qkv_copy} --seed 0 --preset grid --threads 2 --no-progress \
      --results-dir ${OUT:?output folder}/$side/results --output-dir ${OUT:?output folder}/$side/runs > ${OUT:?output folder}/$side-$s.log 2>&1
    rc=$?
    end=$(date +%s.%N)
    echo "$side $s rc=$rc wall=$(echo "$end - $start" | bc) commit=$(git rev-parse --short HEAD)"
  done
done
