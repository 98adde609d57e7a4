#!/usr/bin/env bash
# The measurements that need a GPU, as one script with a time limit per step (device time is scarce), most
# important first: the Triton tests compiled on CUDA, the recurrences (torch chunk vs our Triton, each schedule,
# at a small, a middling and a large batch·heads), the students' throughput beside their teacher, the fused
# mixer-matrix and distillation losses, then flash-linear-attention's kernels as peers (slow autotuning).
# Usage: bash bench/perf/gpu_kernels.sh OUT_DIR. Wheels in .whl/ (fla) are installed to a private folder first.
# Step limits (seconds): TESTS_S, RECURRENCE_S (per batch·heads), MIXER_S, DISTILL_S, THROUGHPUT_S, FLA_S;
# a limit of 0 skips its step. TESTS_K: the tests' -k expression (default: the Triton tests, fla's left out).
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

xdist=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8")
step tests "${TESTS_S:-120}" python3 -m pytest tests/test_kernels_triton.py tests/test_kernels_distill_loss.py \
  tests/test_kernels_mixer_loss.py -k "${TESTS_K:-triton and not fla}" -q -p no:cacheprovider $xdist

backends=chunk,triton,triton_sequential,triton_chunk_parallel
cases=linear_recurrence:head,linear_recurrence:channel,linear_recurrence:bonus,delta_rule:head
for shape in "1 4 2048,8192,32768" "4 16 2048,8192" "16 32 2048,8192"; do
  read -r B H lengths <<<"$shape"
  step "recurrence_B${B}_H${H}" "${RECURRENCE_S:-50}" python3 -m bench.perf.kernel_bench --backends "$backends" \
    --batch "$B" --heads "$H" --dim 64 --lengths "$lengths" --cases "$cases" --json "$out/recurrence_B${B}_H${H}.json"
done

# Throughput at the shape of the README's GPU teacher (SmolLM2-135M: 30 layers, width 576, 9 heads, 3 KV heads),
# untrained: weights do not matter for speed, and no hub is needed. Written beside the code (a relative path, so
# no machine's path lands in the results) and removed after.
if [ "${THROUGHPUT_S:-160}" != 0 ]; then
  python3 - ./smollm2_135m_shape <<'EOF'
import sys
import torch
from transformers import LlamaConfig, LlamaForCausalLM
config = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                     num_key_value_heads=3, head_dim=64, vocab_size=49152, max_position_embeddings=8192,
                     rope_theta=100000.0, tie_word_embeddings=True, rms_norm_eps=1e-5)
torch.manual_seed(0)
LlamaForCausalLM(config).save_pretrained(sys.argv[1])
EOF
fi
step throughput "${THROUGHPUT_S:-160}" python3 -m bench.perf.throughput --student all --device cuda --dtype bfloat16 \
  --teacher ./smollm2_135m_shape --lengths 1024,4096,16384 --decode-contexts 1024,32768 \
  --json "$out/throughput.json"
rm -rf smollm2_135m_shape

step mixer_loss "${MIXER_S:-40}" python3 -m bench.perf.mixer_loss_bench --device cuda --json "$out/mixer_loss.json"
step distill_loss "${DISTILL_S:-60}" python3 -m bench.perf.distill_loss_bench --device cuda --json "$out/distill_loss.json"

step fla "${FLA_S:-40}" python3 -m bench.perf.kernel_bench --backends chunk,triton,fla --batch 4 --heads 16 --dim 64 \
  --lengths 2048,8192 --cases "$cases" --json "$out/fla.json"
exit 0
