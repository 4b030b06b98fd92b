#!/usr/bin/env bash
# One device-machine call: install carried wheels, record the environment, then run the named phases.
# Run (on the GPU machine, from the repo root): bash bench/gpu_call.sh PHASE... ; results land in $OUT.
# HF_TOKENS=4096: the baseline at its best setting of every earlier call only (bench/RESULTS.md), to save time.
set -u
OUT=${OUT:-/tmp/bench-out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
# NVLink multicast off in every process (it can take a shared host's GPUs out of service)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
log() { echo "== $(date +%T) $*"; }
run() {  # run LIMIT_S NAME CMD...: time-boxed, output kept in $OUT/NAME.log
  local limit=$1 name=$2; shift 2
  log "$name"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  echo "rc=$?" >>"$OUT/$name.log"
  grep -E '^\{"(run|ratio|date)"|rc=|Error|error' "$OUT/$name.log" | cut -c1-600 | tail -8
}
B="python3 bench/train_throughput.py --out $OUT"
C="python3 bench/consumer.py"
CP="--out $OUT --data /tmp/chat.jsonl --warmup 3 --steps 5 --timeout 150"
for phase in "$@"; do
  case $phase in
    env)
      nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
      python3 -c "import torch, transformers, peft, accelerate, triton; print(torch.__version__, torch.version.cuda, transformers.__version__, peft.__version__, accelerate.__version__, triton.__version__)"
      python3 -c "import inspect; from torch.nn.attention.varlen import varlen_attn; print(inspect.signature(varlen_attn))" ;;
    # the compiled layers' gradient tests alone (about 30 s)
    gpucompiled) run 200 gpucompiled python3 -m pytest -q tests/train/test_gpu.py -k compiled -p no:cacheprovider -p no:provisioning -p no:hosts.plugin -rs --tb=short; grep -E "passed|failed|^E " $OUT/gpucompiled.log | cut -c1-300 ;;
    # the GPU tests, and the compiled-checkpoint tests with this machine's torch (inductor on its CPU)
    gputests) run 420 gputests python3 -m pytest -q tests/train/test_gpu.py tests/train/test_compiled_checkpointing.py -p no:cacheprovider -p no:provisioning -p no:hosts.plugin -rs -x --tb=short; tail -40 $OUT/gputests.log | cut -c1-300 ;;
    cmp1b) run 240 cmp1b $B --models 1b ;;
    cmp) run 540 cmp $B --models 1b,8b ;;
    cmp8b) run 300 cmp8b $B --models 8b ;;
    seed8b) run 150 seed8b $B --one seed --model 8b ;;
    ours8b) run 240 ours8b $B --one ours --model 8b ;;
    ours8b-nocompile) run 200 ours8b-nocompile $B --one ours --model 8b --set compile=false ;;
    ours8b-noliger) run 240 ours8b-noliger $B --one ours --model 8b --set liger=false ;;
    mem8b) run 240 mem8b $B --one ours --model 8b --memory-gib 24 --set max_seq_len=4096 ;;
    qlora24b) run 300 qlora24b $B --one ours --model 24b --qlora --memory-gib 24 --set max_seq_len=2048 ;;
    multigpu) run 400 multigpu python3 bench/multi_gpu.py --out $OUT --phases ddp,fsdp,auto --deadline 390 ;;  # 2+ GPUs
    # Consumer cards through the real path (issue 13): folders on /tmp, one shape at a time (a 24B folder is 48 GB)
    c-env) python3 bench/consumer.py env --out $OUT; df -h /tmp | tail -1 ;;
    c-build8b) rm -rf /tmp/m24b; [ -f /tmp/m8b/config.json ] || run 200 c-build8b $C build --shape 8b --dir /tmp/m8b
      run 60 c-data8b $C data --model /tmp/m8b --out /tmp/chat.jsonl --count 1200 --max-len 2048; df -h /tmp | tail -1 ;;
    c-build24b) rm -rf /tmp/m8b; [ -f /tmp/m24b/config.json ] || run 260 c-build24b $C build --shape 24b --dir /tmp/m24b
      run 60 c-data24b $C data --model /tmp/m24b --out /tmp/chat.jsonl --count 1200 --max-len 2048; df -h /tmp | tail -1 ;;
    # the baseline at each --hf-tokens budget; the ratio is against its best
    c-8b-qlora-24) run 330 c-8b-qlora-24 $C pair $CP --model /tmp/m8b --method qlora --memory-gib 24 --row 8b-qlora-24 --hf-tokens ${HF_TOKENS:-4096,2048:plain} ;;
    c-8b-lora-24) run 330 c-8b-lora-24 $C pair $CP --model /tmp/m8b --method lora --memory-gib 24 --row 8b-lora-24 --hf-tokens ${HF_TOKENS:-4096,1024:plain} ;;
    c-8b-qlora-16) run 330 c-8b-qlora-16 $C pair $CP --model /tmp/m8b --method qlora --memory-gib 16 --row 8b-qlora-16 --hf-tokens ${HF_TOKENS:-4096,1024:plain} ;;
    # ours only, QLoRA with compiled layers instead of Liger (auto picks Liger for QLoRA)
    c-8b-qlora-compile) run 200 c-8b-qlora-compile $C pair $CP --model /tmp/m8b --method qlora --memory-gib 24 --row 8b-qlora-24-compiled --recipes ours --ours-set '{"compile": true, "liger": false}' ;;
    c-24b-qlora-24-compiled) run 330 c-24b-qlora-24-compiled $C pair $CP --model /tmp/m24b --method qlora --memory-gib 24 --row 24b-qlora-24 --hf-tokens 4096,8192 --timeout 150 --warmup 1 --steps 4 --ours-set '{"compile": true, "liger": false}' ;;
    c-8b-long) run 330 c-8b-long $C longest $CP --model /tmp/m8b --method qlora --memory-gib 24 --row 8b-qlora-long-24 --lengths 57344,65536 --hf-lengths 32768,36864,40960 --timeout 160 ;;
    c-8b-long-ours) run 300 c-8b-long-ours $C longest $CP --model /tmp/m8b --method qlora --memory-gib 24 --row 8b-qlora-long-24 --lengths 65536 --recipes ours --timeout 280 ;;
    # past what offloading alone holds (about 100k tokens on 24 GiB): the MLP in sequence chunks
    c-8b-long-chunks) run 420 c-8b-long-chunks $C longest $CP --model /tmp/m8b --method qlora --memory-gib 24 --row 8b-qlora-long-24 --lengths 131072 --recipes ours --timeout 400 ;;
    c-8b-long32) run 200 c-8b-long32 $C longest $CP --model /tmp/m8b --method qlora --memory-gib 24 --row 8b-qlora-long-24 --lengths 32768 --recipes ours --timeout 160 ;;
    c-24b-qlora-24) run 420 c-24b-qlora-24 $C pair $CP --model /tmp/m24b --method qlora --memory-gib 24 --row 24b-qlora-24 --hf-tokens ${HF_TOKENS:-4096,8192} --timeout 200 --warmup 1 --steps 4 ;;
    # the products-only ceiling of a checkpointed step (bench/roofline.py): 8B at 16,384 tokens, 24B at the
    # trainer's 3 x 2048; the ratio to the baseline is taken from its figures in the same call
    c-roof) run 90 c-roof8b python3 bench/roofline.py --shape 8b --tokens 16384 --out $OUT; run 90 c-roof24b python3 bench/roofline.py --shape 24b --tokens 6144 --out $OUT
      cut -c1-900 $OUT/c-roof8b.log $OUT/c-roof24b.log ;;
    # one profiled step of ours, 8B QLoRA under the 24 GiB cap (bench/profile_step.py)
    c-profile8b) mkdir -p /tmp/prof && python3 -c "import json; json.dump({'model': '/tmp/m8b', 'dataset': '/tmp/chat.jsonl', 'output_dir': '/tmp/prof/out', 'metrics_path': '/tmp/prof/metrics.jsonl', 'format': 'chat', 'method': 'qlora', 'lora': {'rank': 16, 'alpha': 32, 'dropout': 0.05, 'target_modules': 'all-linear'}, 'train': {'max_steps': 5, 'max_seq_len': 2048, 'save_steps': 10000}, 'resume': False}, open('/tmp/prof/config.json', 'w'))"
      run 200 c-profile8b env PYTHONPATH=$PWD/bench/capped:$PYTHONPATH BENCH_MEMORY_GIB=24 BENCH_PEAK_FILE=/tmp/prof/peak.jsonl \
        ACCELERATE_MIXED_PRECISION=bf16 python3 bench/profile_step.py /tmp/prof/config.json; grep -A60 'PROFILED STEP' $OUT/c-profile8b.log | cut -c1-230 ;;
    *) echo "unknown phase $phase" ;;
  esac
done
