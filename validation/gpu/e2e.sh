#!/usr/bin/env bash
# Issue 11's runs on a GPU host, one after the other, each packed as soon as it ends
# (validation/gpu/e2e.py says what each collects). Run from the repository root after
# `bash .wheels/install.sh .wheels` (validation/gpu/wheels.md); it works on a copy in /tmp/wf
# and leaves /tmp/e2e/out/STEP.tar.gz and STEP.done as each step ends. Started detached
# (setsid) so that it outlives the call that starts it; later calls collect the tarballs.
#   bash validation/gpu/e2e.sh [STEP...]   # steps: par ser incr (default: all three, in order)
# par needs two GPUs; on a host with more than one, ser and incr use GPU 0 only, as a user of
# a bigger host would pick it (CUDA_VISIBLE_DEVICES=0); on a one-GPU host they use it as is.
# `warm` runs a one-cell grid on GPU 0: it pays the host's cold vLLM start (torch.compile and
# kernel caches), so that the runs after it time warm starts (validation/h200x2/ratio/run.sh).
set -u
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(par ser incr)
rm -rf /tmp/wf /tmp/e2e && mkdir -p /tmp/wf /tmp/e2e/out
tar -cf - --exclude=./.wheels --exclude=./.venv --exclude=./results --exclude=./.snakemake . \
  | tar -xf - -C /tmp/wf
export PYTHONPATH=/tmp/site:/tmp/wf${E2E_EXTRA_PATH:+:$E2E_EXTRA_PATH} PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
cd /tmp/wf
step() {  # NAME RESULTS e2e.py-ARGS...
  local name=$1 results=$2
  shift 2
  echo "== $name $(date -u +%FT%TZ)"
  python3 validation/gpu/e2e.py "$@"
  python3 validation/gpu/e2e.py pack "/tmp/e2e/out/$name.tar.gz" --step "$name" --results "$results"
  touch "/tmp/e2e/out/$name.done"
}
{
  nvidia-smi
  python3 -c 'import vllm, snakemake, polars, torch; print("vllm", vllm.__version__, "torch", torch.__version__)'
  one=()
  [ "$(nvidia-smi -L | wc -l)" -gt 1 ] && one=(--env CUDA_VISIBLE_DEVICES=0)
  for s in "${steps[@]}"; do
    case $s in
      warm) step warm results/gpu-warm run warm --gpus 1 --results results/gpu-warm --timeout 900 \
        --grid workload=interactive --grid mode=naive --grid max_num_seqs=16 \
        --grid max_output_tokens=32 "${one[@]}" ;;
      par) step par results/gpu-par run par --gpus 2 --results results/gpu-par --timeout 1200 ;;
      ser) step ser results/gpu-ser run ser --gpus 1 --results results/gpu-ser --timeout 1200 "${one[@]}" ;;
      incr) step incr results/gpu-ser interrupt incr --results results/gpu-ser --timeout 1200 "${one[@]}" ;;
      *) echo "unknown step: $s (warm, par, ser or incr)" ;;
    esac
  done
  echo "== end $(date -u +%FT%TZ)"
} > /tmp/e2e/out/driver.log 2>&1
touch /tmp/e2e/out/all.done
