#!/usr/bin/env bash
# The third H100 session (2026-11-28): issue 9.4's four max_num_seqs 32 cells of
# validation/h100/calibration.yaml (the first vLLM start pays the host's cold start), then
# issue 11's one-GPU steps on the H100 through the README's own command (validation/gpu/e2e.sh
# ser incr). Run detached from the repository root after `bash .wheels/install.sh DIR`:
#   setsid nohup bash validation/h100x1/run.sh 420 > /tmp/run.log 2>&1 &
# Argument: measure.py's deadline in seconds. Leaves /tmp/m/{cells,logs}.tar.gz, measure.log
# and /tmp/e2e/out/{ser,incr}.tar.gz, driver.log.
set -u
cd "$(dirname "$0")/../.."
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
echo "[run] start $(date -u +%T)"
nvidia-smi --query-gpu=index,name,pci.bus_id,power.limit,power.default_limit,clocks.sm --format=csv
mkdir -p /tmp/m
OUT=/tmp/m python3 validation/h100/measure.py --config validation/h100/calibration.yaml \
  --mns 32 --skip-unbound --deadline "${1:-420}" --state /tmp/wattflow-state \
  --results /tmp/wattflow-results > /tmp/m/measure.log 2>&1
echo "[run] measure.py exited $? at $(date -u +%T)"
nvidia-smi --query-gpu=index,memory.used --format=csv
bash validation/gpu/e2e.sh ser incr
echo "[run] e2e.sh exited $? at $(date -u +%T)"
