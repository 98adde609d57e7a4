#!/usr/bin/env bash
# The measurements that need a GPU, as one script with a time limit per step (device time is scarce), most
# important first: the Triton tests compiled on CUDA (each failure then rerun alone with CUDA_LAUNCH_BLOCKING=1,
# so its traceback names the kernel that faulted), the probe of the delta rule's 16-bit fault, the recurrences
# (torch chunk vs our Triton, each schedule), the fused mixer-matrix and distillation losses; on request the
# students' throughput beside their teacher and flash-linear-attention's kernels as peers.
# Usage: bash bench/perf/gpu_kernels.sh OUT_DIR. Wheels in .whl/ (fla) are installed to a private folder first.
# Step limits (seconds): TESTS_S, FAILED_S, PROBE_S, RECURRENCE_S (per shape), MIXER_S, DISTILL_S, THROUGHPUT_S,
# FLA_S; a limit of 0 skips its step. The defaults fit one ~8.5-minute call: on a fresh machine Triton compiles
# every kernel variant first (one recurrence case, four backends: no row within 45 s; the throughput of every student:
# minutes, since the models are timed side by side and nothing is written before all have compiled), so
# THROUGHPUT_S and FLA_S default to 0. RECURRENCE_SHAPES: "B H lengths;..." (default one middling shape).
# TESTS_K: the tests' -k expression (default: the Triton tests but fla's peers, which run in the fla steps).
set -uo pipefail
out=${1:?usage: bash bench/perf/gpu_kernels.sh OUT_DIR}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"

step() {  # step NAME LIMIT_S COMMAND...: runs COMMAND under its limit, its output in OUT_DIR/NAME.log
  local name=$1 limit=$2; shift 2
  [ "$limit" = 0 ] && return
  echo "== $name (limit ${limit}s) $(date -u +%FT%TZ)"
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  tail -n 40 "$out/$name.log"
  echo "== $name exit $rc $(date -u +%FT%TZ)"
}

workers=$(python3 -c "import xdist, os; print(min(16, os.cpu_count()))" 2>/dev/null)
step tests "${TESTS_S:-120}" python3 -m pytest tests/test_kernels_triton.py tests/test_kernels_distill_loss.py \
  tests/test_kernels_mixer_loss.py -k "${TESTS_K:-triton and not fla}" -v -p no:cacheprovider -W ignore \
  ${workers:+-n $workers}
# -v: every outcome is on its own line, so a step cut short still says which tests passed
# (xdist writes "PASSED tests/...", a single process "tests/... PASSED")
grep -oE "(PASSED|FAILED|ERROR|SKIPPED) tests/[^ ]+|tests/[^ ]+ (PASSED|FAILED|ERROR|SKIPPED)" "$out/tests.log" 2>/dev/null \
  | awk '{ if ($1 ~ /^tests\//) print $2, $1; else print $1, $2 }' | sort -u >"$out/tests_outcomes.txt"
awk '{print $1}' "$out/tests_outcomes.txt" | sort | uniq -c
grep -E "^(FAILED|ERROR) " "$out/tests_outcomes.txt" | awk '{print $2}' | head -5 >"$out/tests_failed.txt"
if [ -s "$out/tests_failed.txt" ]; then
  # shellcheck disable=SC2046
  CUDA_LAUNCH_BLOCKING=1 step failed "${FAILED_S:-60}" python3 -m pytest $(cat "$out/tests_failed.txt") -q \
    -p no:cacheprovider -W ignore --tb=short
fi

# The delta rule's 16-bit fault (docs/gpus.md): which launch, and which launch settings avoid it
step delta_rule_bf16_probe "${PROBE_S:-150}" python3 results/gpu_runs/delta_rule_bf16_probe.py \
  --json "$out/delta_rule_bf16_probe.json"

backends=chunk,triton,triton_sequential,triton_chunk_parallel
cases=linear_recurrence:head,linear_recurrence:channel,linear_recurrence:bonus,delta_rule:head
IFS=';' read -ra shapes <<<"${RECURRENCE_SHAPES:-4 16 2048,8192}"
for shape in "${shapes[@]}"; do
  read -r B H lengths <<<"$shape"
  step "recurrence_B${B}_H${H}" "${RECURRENCE_S:-120}" python3 -m bench.perf.kernel_bench --backends "$backends" \
    --batch "$B" --heads "$H" --dim 64 --lengths "$lengths" --cases "$cases" --json "$out/recurrence_B${B}_H${H}.json"
done

step mixer_loss "${MIXER_S:-30}" python3 -m bench.perf.mixer_loss_bench --device cuda --json "$out/mixer_loss.json"
step distill_loss "${DISTILL_S:-30}" python3 -m bench.perf.distill_loss_bench --device cuda --json "$out/distill_loss.json"

# Throughput at the shape of the README's GPU teacher (SmolLM2-135M: 30 layers, width 576, 9 heads, 3 KV heads),
# untrained: weights do not matter for speed, and no hub is needed.
step throughput "${THROUGHPUT_S:-0}" python3 -m bench.perf.throughput --student all --device cuda --dtype bfloat16 \
  --teacher-shape smollm2-135m --lengths 1024,4096,16384 --decode-contexts 1024,32768 \
  --json "$out/throughput.json"

# fla's kernels autotune at first use (on an H100 its peer tests did not finish within the tests step, nor its
# timing within 60 s): its peers' tests here, not in the tests step
step fla_tests "${FLA_S:-0}" python3 -m pytest tests/test_kernels_triton.py -k "fla" -v -p no:cacheprovider -W ignore \
  ${workers:+-n $workers}
step fla "${FLA_S:-0}" python3 -m bench.perf.kernel_bench --backends chunk,triton,fla --batch 4 --heads 16 --dim 64 \
  --lengths 2048,8192 --cases "$cases" --json "$out/fla.json"
exit 0
