#!/usr/bin/env bash
# Issue 22 on one H100 (validation/h100-shapes): install the offline wheel bundle (vLLM 0.26.0,
# its 93 extra wheels and polars: the seven tar parts /tmp/chunks/w.tar.0..6, carried one per
# call as .wheels/p0..p6), then run_cells.py. Run detached from the repository root:
#   setsid nohup bash validation/h100-shapes/run.sh DEADLINE_S [run_cells.py options] > /tmp/run.log 2>&1 &
# Leaves /tmp/m/{cells,logs}.tar.gz and /tmp/m/run_cells.log. Changes no GPU setting.
set -u
cd "$(dirname "$0")/../.."
echo "[run] start $(date -u +%T)"
nvidia-smi --query-gpu=index,name,pci.bus_id,driver_version,power.limit,power.default_limit,clocks.sm,clocks.max.sm,temperature.gpu,power.draw,memory.used --format=csv
mkdir -p /tmp/wheels /tmp/m
cat /tmp/chunks/w.tar.? | tar -x -C /tmp/wheels || { echo "[run] untar failed"; exit 1; }
(cd /tmp/wheels && sha256sum --quiet -c SHA256SUMS) || { echo "[run] checksums differ"; exit 1; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/wheels/*.whl \
  || { echo "[run] pip install failed"; exit 1; }
python3 -m compileall -q -j 0 /tmp/site > /dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
python3 -c "import importlib.metadata as m; print({p: m.version(p) for p in \
  ['vllm', 'polars', 'pydantic', 'transformers', 'torch', 'numpy', 'nvidia-ml-py']})"
echo "[run] installed $(date -u +%T)"
OUT=/tmp/m PYTHONUNBUFFERED=1 python3 validation/h100-shapes/run_cells.py --deadline "${1:-1200}" "${@:2}" \
  > /tmp/m/run_cells.log 2>&1
echo "[run] run_cells.py exited $? at $(date -u +%T)"
