#!/usr/bin/env bash
# The kernel measurements that need a GPU, as one script with a time limit per step (device time is
# scarce): recurrences (torch chunk vs our Triton), the two fused losses (with their Triton kernels),
# the Triton tests on CUDA, then flash-linear-attention's kernels as peers (their autotuning is slow).
# Usage: bash bench/perf/gpu_kernels.sh OUT_DIR. fla wheels in .whl/ are installed to a private folder first.
set -uo pipefail
out=${1:?usage: bash bench/perf/gpu_kernels.sh OUT_DIR}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
shape=(--lengths 2048,8192 --batch 4 --heads 16 --dim 64)
cases=linear_recurrence:none,linear_recurrence:head,linear_recurrence:channel,linear_recurrence:bonus,delta_rule:head
timeout "${RECURRENCE_S:-110}" python3 -m bench.perf.kernel_bench --backends chunk,triton "${shape[@]}" --cases "$cases" \
  --json "$out/kernels_recurrence.json" 2>&1 | tee "$out/recurrence.log"
timeout "${DISTILL_S:-60}" python3 -m bench.perf.distill_loss_bench --device cuda --json "$out/kernels_distill_loss.json" 2>&1 | tee "$out/distill_loss.log"
timeout "${MIXER_S:-60}" python3 -m bench.perf.mixer_loss_bench --device cuda --json "$out/kernels_mixer_loss.json" 2>&1 | tee "$out/mixer_loss.log"
timeout "${TESTS_S:-60}" python3 -m pytest ${TESTS:-tests/test_kernels_distill_loss.py tests/test_kernels_mixer_loss.py} -k triton -q -x \
  -p no:cacheprovider 2>&1 | tee "$out/tests.log" | tail -15
timeout "${FLA_S:-60}" python3 -m bench.perf.kernel_bench --backends fla "${shape[@]}" --cases "$cases" --json "$out/kernels_fla.json" 2>&1 | tee "$out/fla.log"
exit 0
