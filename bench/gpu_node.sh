#!/usr/bin/env bash
# Every GPU-side benchmark and the core tests on one CUDA node, each step time-boxed, logs to $OUT
# (default ./gpu_node_logs). Run from the repository root with a Python that has torch,
# torchvision, scikit-learn and PyYAML (the package itself need not be installed).
#   bash bench/gpu_node.sh
set -u
OUT=${OUT:-gpu_node_logs}; mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
step() { local name=$1 limit=$2; shift 2; echo "=== $name (limit ${limit}s): $*"
  local t0=$SECONDS; timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  echo "=== $name: rc ${PIPESTATUS[0]} in $((SECONDS - t0)) s"; }
nvidia-smi -L; nproc
$PY -c "import torch, torchvision, sklearn, yaml; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"
step epoch32 90 $PY bench/gpu_epoch.py --repeats 5
step core_tests 100 $PY -m pytest tests/core -q -x -p no:cacheprovider
step epoch224 90 $PY bench/gpu_epoch.py --side 224 --images 10240 --repeats 3
step pipeline224 90 $PY bench/data_pipeline.py --size 224 --side 384 --images 1200 --workers 0 8 --repeats 2
step compile32 120 $PY bench/gpu_epoch.py --compile --repeats 3
