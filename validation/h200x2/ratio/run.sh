#!/usr/bin/env bash
# gpu=2 against gpu=1 on a warm two-GPU host (issue 11.4), as run on 2026-11-28 (README.md).
# Run detached from the repository root after `bash .wheels/install.sh DIR`:
#   setsid nohup bash validation/h200x2/ratio/run.sh "$PWD" > /tmp/drv.log 2>&1 < /dev/null &
# 1. validation/gpu/e2e.sh warm: a one-cell grid on GPU 0 pays the host's cold vLLM start;
# 2. par4: the 4-cell grid below (2 server groups) with --resources gpu=2;
# 3. ser4: the same grid with --resources gpu=1 on GPU 0.
# Leaves /tmp/e2e/out/{warm,par4,ser4}.tar.gz, driver.log (warm) and driver2.log (the rest).
cd "$1"
bash validation/gpu/e2e.sh warm
cd /tmp/wf && export PYTHONPATH=/tmp/site:/tmp/wf PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
G="--grid workload=interactive --grid mode=naive"
for s in par4:2 ser4:1; do
  n=${s%:*}; g=${s#*:}; env=(); [ "$g" = 1 ] && env=(--env CUDA_VISIBLE_DEVICES=0)
  echo "== $n $(date -u +%FT%TZ)" >> /tmp/e2e/out/driver2.log
  python3 validation/gpu/e2e.py run $n --gpus $g --results results/gpu-$n --timeout 500 $G "${env[@]}" >> /tmp/e2e/out/driver2.log 2>&1
  python3 validation/gpu/e2e.py pack /tmp/e2e/out/$n.tar.gz --step $n --results results/gpu-$n >> /tmp/e2e/out/driver2.log 2>&1
  touch /tmp/e2e/out/$n.done
done
echo "== end $(date -u +%FT%TZ)" >> /tmp/e2e/out/driver2.log
