#!/usr/bin/env bash
# Issues 13.4 and 9.4 in one run on one H100: validation/h100/parrot.yaml and calibration.yaml
# through measure.py (wattflow.cell.run and the server pool), their cells grouped by server
# across both configs (same engine block: the max_num_seqs=256 fcfs server serves both), the
# Parrot comparison's groups first, then calibration's extra batch sizes; closed-loop cells
# whose concurrency cannot reach their max_num_seqs are skipped where the same workload runs
# at 256 (--skip-unbound). Runs in the background, so it outlives one device call:
#   setsid nohup bash validation/h100/measure_both.sh 1400 > /tmp/pair.log 2>&1 &
# Argument: the deadline in seconds. Afterwards /tmp/m/ holds cells.tar.gz, logs.tar.gz and
# measure.log.
set -u
cd "$(dirname "$0")/../.."
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH WATTFLOW_PARROT_PYTHON=current
echo "[pair] start $(date -u +%T)"
nvidia-smi --query-gpu=index,name,pci.bus_id,power.limit,clocks.sm --format=csv
mkdir -p /tmp/m
OUT=/tmp/m python3 validation/h100/measure.py --config validation/h100/parrot.yaml \
  --config validation/h100/calibration.yaml --mns 256,64,8,128,32 --skip-unbound \
  --deadline "${1:-1400}" --state /tmp/wattflow-state --results /tmp/wattflow-results \
  > /tmp/m/measure.log 2>&1
echo "[pair] measure.py exited $? at $(date -u +%T)"
nvidia-smi --query-gpu=index,name,memory.used,power.limit --format=csv
echo "[pair] done $(date -u +%T)"
