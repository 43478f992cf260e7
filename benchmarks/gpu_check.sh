#!/usr/bin/env bash
# The prepared GPU check: one short script for a session that is lent a CUDA machine.
#   bash benchmarks/gpu_check.sh            # writes its logs to $OUT (or ./gpu-check) and prints a summary
# 1. the CUDA tests (tests/test_cuda.py: dissection, attribution and chance baselines on cuda = cpu,
#    training with mixed precision);
# 2. the GPU table (benchmarks/bench_gpu.py): densenet121 denseblock4 dissection of 2,000 phantom
#    images at 224 px (bare forward vs the whole call, scaled to 10,000 images against the 60 s
#    goal), attribution images/s, one training epoch;
# 3. the threshold error of --precision bf16/fp16 on cuda (benchmarks/bench_precision.py);
# 4. the quickstart on cuda (the whole pipeline);
# 5. GPU figures of the chance baselines (benchmarks/bench_nulls.py --device cuda, 500 images).
# Each step has its own time limit so that one hang cannot eat the device budget; all of them
# together stay under 8 minutes.
set -u
out="${OUT:-gpu-check}"
mkdir -p "$out"
# The project's venv when it exists; else the machine's python3 with this checkout importable
# (a device machine may reach no package index: nothing is installed here).
py="${PYTHON:-.venv/bin/python}"
if [ ! -x "$py" ]; then
  py=python3
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())" \
  >> "$out/gpu.txt" 2>&1
step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc in $((SECONDS - start)) s" | tee -a "$out/summary.txt"
}
step cuda-tests 120 "$py" -m pytest -q -p no:cacheprovider tests/test_cuda.py
step bench-gpu 150 "$py" benchmarks/bench_gpu.py --device cuda --json "$out/bench-gpu.json"
step bench-precision 60 "$py" benchmarks/bench_precision.py --device cuda --random-init densenet121 --image-size 224 --images 512 --seg-size 112
step quickstart-cuda 90 "$py" -m cxrsem quickstart --device cuda --out "$out/quickstart" --overwrite
step bench-nulls-cuda 60 "$py" benchmarks/bench_nulls.py --device cuda --images 500
cat "$out/gpu.txt" "$out/summary.txt"
tail -n 3 "$out/cuda-tests.log"
tail -n 9 "$out/bench-gpu.log"
tail -n 12 "$out/bench-precision.log"
tail -n 5 "$out/bench-nulls-cuda.log"
