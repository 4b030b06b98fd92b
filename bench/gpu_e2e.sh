#!/usr/bin/env bash
# `runner train` end to end on a real GPU (issue 16), in one device call, against localhost, offline.
#
# Run on the GPU machine from the repository root, as root, with the wheels this machine's Python lacks in
# WHEELS (the control side's: ansible-core, ansible-runner, pydantic, ...; the training side's: peft,
# nvidia-ml-py, bitsandbytes):
#   bash bench/gpu_e2e.sh [WHEELS]    (default .whl-e2e, made by bench/gpu_e2e_wheels.sh; results land in $OUT)
# Phases: install the control side from WHEELS (pip, no index); `runner setup` provisions localhost with the
# training venv from a wheelhouse built out of WHEELS (train_venv_system_torch: the image's CUDA torch) and
# power in read-back-only mode; build a Llama-3.2-1B-shaped model folder; a LoRA session stopped mid-run by
# `runner stop` and finished by `runner train --resume`; a QLoRA session; checks on each run folder. Every
# check prints PASS or FAIL; the exit code is the number of failures. It never sets a power limit, clock or
# any other device setting: the sessions only read power back. E2E_SHAPE=tiny rehearses on a CPU (with the
# simulated NVML of tests/gpu_sim), E2E_QLORA=0 skips the QLoRA session (it needs CUDA).
# Time on one H200 (2026-12-02): setup 33 s, model 16 s, 'runner train' to the first step 82 s, the stopped try
# about 2 min, the resumed one and the QLoRA session each about 1.5-2 min: give the call 480 s or more.
set -u -o pipefail
REPO=$(pwd)
WHEELS=$(readlink -f "${1:-.whl-e2e}")
OUT=${OUT:-/tmp/gpu-e2e-out}
WORK=${E2E_WORK:-/srv/gpu-e2e}  # outside homes: the trainer user (systemd hosts) must read model and data
ROOT=${E2E_ROOT:-/var/lib/gpu-runner}  # training root on the host: sessions, lock, wheelhouse
PY=$(command -v "${E2E_PYTHON:-python3}")  # as named: a venv's python is a link to the base one
SHAPE=${E2E_SHAPE:-1b}
QLORA=${E2E_QLORA:-1}
STEPS=${E2E_STEPS:-400}
STOP_AT=${E2E_STOP_AT:-100}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# NVLink multicast off in every process (it can take a shared host's GPUs out of service)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export RUNNER_RUNS_DIR=$WORK/runs RUNNER_DATA_DIR=$WORK/runner-data
mkdir -p "$OUT"
FAILS=0
T0=$(date +%s)
log() { echo "== +$(( $(date +%s) - T0 )) s $*"; }
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1${2:+: $2}"; FAILS=$((FAILS + 1)); }
check() {  # check NAME CMD...: PASS when CMD exits 0, else FAIL with its last output line
  local name=$1; shift
  local said
  if said=$("$@" 2>&1); then pass "$name${said:+ ($(tail -1 <<<"$said"))}"; else fail "$name" "$(tail -1 <<<"$said")"; fi
}
finish() {
  log "done: $FAILS failed check(s), wall $(( $(date +%s) - T0 )) s"
  exit "$FAILS"
}

log "environment"
echo "pid 1: $(ps -p 1 -o comm=); python: $PY; $(uname -r)"
nvidia-smi --query-gpu=name,uuid,memory.total,driver_version,power.limit,power.min_limit,power.max_limit \
  --format=csv,noheader 2>&1 | head -4
"$PY" -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'available', torch.cuda.is_available(), 'transformers', transformers.__version__, 'accelerate', accelerate.__version__)"
limits_before=$(nvidia-smi --query-gpu=uuid,power.limit --format=csv,noheader 2>/dev/null)

log "control side: its own venv over the image's packages, runner installed from $WHEELS (no index)"
rm -rf "$WORK" && mkdir -p "$WORK" && chmod 755 "$WORK"
# Its own venv, so that setup's runner wheel in the training venv cannot replace it. It sees the image's
# packages (matplotlib, rich, pip, ...) through a .pth file read after runner's own (editable, compat mode:
# runner finds its playbooks, roles and templates in this checkout, as 'make venv' installs it).
CONTROL=$WORK/control
"$PY" -m venv --without-pip "$CONTROL"
"$PY" -c 'import site; print("\n".join(site.getsitepackages()))' \
  >"$("$CONTROL/bin/python" -c 'import site; print(site.getsitepackages()[0])')/zz-image-site.pth"
if ! "$CONTROL/bin/python" -m pip install -q --no-index --find-links "$WHEELS" --no-build-isolation \
    --disable-pip-version-check --config-settings editable_mode=compat -e "$REPO" >"$WORK/pip.log" 2>&1; then
  tail -5 "$WORK/pip.log"; fail "control side installs offline"; finish
fi
PREFIX=$("$PY" -c 'import sys; print(sys.prefix)')
RUNNER=$CONTROL/bin/runner
check "control side installs offline, runs this checkout's runner" "$CONTROL/bin/python" -c \
  "import os, runner; assert runner.__file__.startswith('$REPO/'), runner.__file__
assert os.path.exists('$CONTROL/bin/ansible-playbook'), 'ansible came from the image: its scripts are not in $CONTROL'
print(runner.__file__)"

log "inventory: localhost, training venv from the wheelhouse over the image's torch, power read-back only"
pin() { local w; w=$(basename "$(ls "$WHEELS"/"$1"-*.whl | head -1)"); echo "$2==$(cut -d- -f2 <<<"$w")"; }
# What the image's own packages require but lack (pip check), where WHEELS has it: the training venv needs it too
missing=$("$PY" -m pip check 2>/dev/null | grep -v '^gpu-runner ' | sed -nE 's/.* requires ([^,]+), which is not installed\./\1/p' | sort -u)
extra=""
for name in $missing; do
  file=$(ls "$WHEELS"/"$(tr '-' '_' <<<"$name")"-*.whl 2>/dev/null | head -1)
  [ -n "$file" ] && extra="$extra, \"$(pin "$(tr '-' '_' <<<"$name")" "$name")\""
done
echo "the image lacks: ${missing:-nothing}"
if "$PY" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then
  venv_vars="\"train_venv_path\": \"$PREFIX\""  # the image's own venv holds torch: it is the training venv
  VENV_PY=$PREFIX/bin/python
else
  venv_vars="\"train_venv_system_python\": \"$PY\""  # a system Python holds torch: a venv that sees it
  VENV_PY=$ROOT/venv/bin/python
fi
mkdir -p "$WORK/inventory/group_vars"
echo "localhost ansible_connection=local ansible_python_interpreter=$PY" >"$WORK/inventory/hosts.ini"
cat >"$WORK/inventory/group_vars/all.yml" <<EOF
{"train_venv_source": "wheelhouse", "train_venv_system_torch": true, $venv_vars,
 "train_venv_packages": ["$(pin peft peft)", "$(pin nvidia_ml_py nvidia-ml-py)"$extra],
 "train_venv_cuda_packages": ["$(pin bitsandbytes bitsandbytes)"],
 "train_venv_pip_args": ["--no-index", "--find-links", "$WHEELS"],
 "train_venv_wheelhouse_cache": "$WORK/wheelhouse-cache",
 "train_session_root": "$ROOT", "train_session_python": "$VENV_PY",
 "gpu_power_readonly": true, "gpu_power_persist": false, "gpu_power_persistence_mode": false,
 "session_unit_nftables": false, "inference_server_mode": "none"}
EOF
cat "$WORK/inventory/group_vars/all.yml"
INV=$WORK/inventory/hosts.ini

log "runner setup"
s=$(date +%s)
"$RUNNER" setup -i "$INV" >"$WORK/setup.log" 2>&1
rc=$?
tail -4 "$WORK/setup.log"
if [ $rc -ne 0 ]; then  # what the failed task said, from ansible-runner's events
  cat "$WORK"/runner-data/ansible/*setup*/artifacts/*/job_events/*.json 2>/dev/null | "$PY" -c "
import json, sys
for line in sys.stdin.read().replace('}{', '}\\n{').splitlines():
    e = json.loads(line) if line.strip().startswith('{') else {}
    if e.get('event') == 'runner_on_failed':
        res = e['event_data'].get('res', {})
        print(e['event_data'].get('task'), {k: str(res.get(k))[-600:] for k in ('cmd', 'msg', 'stderr', 'stdout')})"
  fail "runner setup" "exit $rc"; finish
fi
pass "runner setup (exit 0, $(( $(date +%s) - s )) s)"
check "training venv sees the image's CUDA torch and peft" "$VENV_PY" -c \
  "import torch, peft, runner.host; print('torch', torch.__version__, 'peft', peft.__version__)"

log "model folder ($SHAPE) and dataset"
check "model built" "$PY" bench/e2e_model.py "$WORK/model" "$WORK/data.jsonl" --shape "$SHAPE"
chmod -R a+rX "$WORK"

uuid=$(nvidia-smi --query-gpu=uuid --format=csv,noheader | head -1)
limit_w=$(nvidia-smi --query-gpu=power.limit --format=csv,noheader,nounits | head -1)
job() {  # job NAME METHOD MAX_STEPS: a job file whose power plan is the limit the GPU has now (read back only)
  cat >"$WORK/$1.yaml" <<EOF
model: $WORK/model
dataset: $WORK/data.jsonl
format: chat
method: $2
lora: {rank: 16, alpha: 32, dropout: 0.0}
train: {max_steps: $3, batch_size: 8, max_seq_len: 512, learning_rate: 1.0e-4, save_steps: 1000}
power: {limit_w: {"$uuid": $limit_w}}
output: {fetch: adapter}
EOF
}
host_status() { cat "$ROOT/sessions/$1/status.json" 2>/dev/null; }
json_get() { "$PY" -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1" 2>/dev/null; }
wait_for() {  # wait_for SECONDS CMD...: poll every 0.5 s until CMD succeeds
  local deadline=$(( $(date +%s) + $1 )); shift
  until "$@"; do [ "$(date +%s)" -ge $deadline ] && return 1; sleep 0.5; done
}
session_id() { grep -oE 'session [0-9]{8}-[0-9]{6}-[0-9a-f]+' "$1" 2>/dev/null | head -1 | cut -d' ' -f2; }
step_at_least() { [ "$(host_status "$1" | json_get "d.get('step') or 0")" -ge "$2" ] 2>/dev/null; }

log "LoRA session: $STEPS steps, 'runner stop' after step $STOP_AT, then 'runner train --resume'"
job lora lora "$STEPS"
start=$(date +%s.%N)
"$RUNNER" train "$WORK/lora.yaml" -i "$INV" >"$WORK/lora.out" 2>"$WORK/lora.err" &
train_pid=$!
has_id() { [ -n "$(session_id "$WORK/lora.err")" ]; }
wait_for 120 has_id
LORA=$(session_id "$WORK/lora.err")
echo "session $LORA"
if [ -z "$LORA" ]; then
  tail -20 "$WORK/lora.err"; fail "LoRA session started"; kill "$train_pid"; finish
fi
running() { kill -0 "$train_pid" 2>/dev/null; }
first_step() { step_at_least "$LORA" 1 || ! running; }
wait_for 300 first_step
if step_at_least "$LORA" 1; then
  pass "LoRA training (first step $("$PY" -c "print(round($(date +%s.%N) - $start))") s after 'runner train')"
else
  fail "LoRA training" "$(host_status "$LORA" | json_get "d.get('phase'), d.get('error')")"
fi
check "runner status (running)" bash -c "'$RUNNER' status $LORA | tee $WORK/status-running.txt | grep -E 'running in train'"
# the stop: at step STOP_AT, or 20 s after the first step on a slow GPU
stop_due=$(( $(date +%s) + 20 ))
stop_point() { step_at_least "$LORA" "$STOP_AT" || [ "$(date +%s)" -ge $stop_due ] || ! running; }
wait_for 300 stop_point
"$RUNNER" stop "$LORA" >"$WORK/stop.out" 2>"$WORK/stop.err"
echo "runner stop exit $? ($(grep -E 'interrupted|stop' "$WORK/stop.err" | tail -1))"
wait "$train_pid"
echo "the first runner train exit $?"
check "runner logs (the training log)" bash -c "'$RUNNER' logs $LORA | tee $WORK/logs.txt | grep -E 'step [0-9]+/$STEPS' | tail -1"
check "runner status --json lists the session" bash -c "'$RUNNER' status --json | grep -q $LORA"
stopped=$(host_status "$LORA" | json_get "d['step']")
stopped_ok() { host_status "$LORA" | "$PY" -c "
import json, sys
d = json.load(sys.stdin); s = d.get('trainer_stopped') or {}
assert d['outcome'] == 'interrupted' and s.get('checkpoint') and d['step'] < $STEPS, (d['outcome'], s, d['step'])
print('interrupted at step', d['step'], s['checkpoint'].rsplit('/', 1)[-1], 'restore ok:', d['restore'].get('ok'))"; }
check "stopped mid-run with a checkpoint, restored" stopped_ok
# the stopped try's results now, so that a call cut short still brings its telemetry and plot back
tar -czf "$OUT/e2e-files.tar.gz" -C "$WORK" --exclude='adapter' setup.log lora.out lora.err stop.out stop.err \
  logs.txt status-running.txt inventory runs 2>/dev/null
"$RUNNER" train --resume "$LORA" >"$WORK/resume.out" 2>"$WORK/resume.err"
rc=$?
tail -n 6 "$WORK/resume.out" "$WORK/resume.err"
check "resumed session succeeds (exit 0)" test $rc -eq 0
end=$(date +%s.%N)
echo "LoRA stop+resume sessions: $("$PY" -c "print(round($end - $start))") s"
"$PY" bench/gpu_e2e_check.py --runs "$WORK/runs" --lora "$LORA" --stopped-at "${stopped:-0}" --steps "$STEPS" \
  --start "$start" --out "$OUT" || FAILS=$((FAILS + $?))

log "QLoRA session"
if [ "$QLORA" = 1 ]; then
  job qlora qlora 40
  "$RUNNER" train "$WORK/qlora.yaml" -i "$INV" >"$WORK/qlora.out" 2>"$WORK/qlora.err"
  rc=$?
  tail -n 6 "$WORK/qlora.out" "$WORK/qlora.err"
  QLORA_ID=$(session_id "$WORK/qlora.err")
  check "QLoRA session succeeds (exit 0)" test $rc -eq 0
  "$PY" bench/gpu_e2e_check.py --runs "$WORK/runs" --qlora "$QLORA_ID" --steps 40 --start 0 --out "$OUT" \
    || FAILS=$((FAILS + $?))
else
  QLORA_ID=
  echo "skipped (E2E_QLORA=0)"
fi

log "power and files"
limits_after=$(nvidia-smi --query-gpu=uuid,power.limit --format=csv,noheader 2>/dev/null)
check "power limits unchanged" test "$limits_before" = "$limits_after"
tar -czf "$OUT/e2e-files.tar.gz" -C "$WORK" --exclude='adapter' --exclude='*.safetensors' \
  setup.log pip.log lora.out lora.err stop.out stop.err resume.out resume.err logs.txt status-running.txt \
  inventory runs $( [ -n "$QLORA_ID" ] && echo qlora.out qlora.err) 2>/dev/null
finish
