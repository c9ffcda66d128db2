#!/usr/bin/env bash
# Every GPU measurement of issues 12 and 13 in one call, for a lent GPU machine whose Python
# already has torch (CUDA), h5py, tqdm, scipy and JAX (see benchmarks/gpu/README.md):
#   bash benchmarks/gpu/run.sh OUTDIR [WHEELS]
# GPU_STEPS: the steps to run (default: check peers corinfomax ensemble; peers_cold
# times fresh simulations, graphs recorded in the timed run). WHEELS: a folder of BrainPy's
# wheels (pure Python; installed into /tmp/site for the BrainPy side alone). Each step has its own time limit, so one that hangs costs only its share.
set -u
out="${1:?usage: run.sh OUTDIR [WHEELS]}"
wheels="${2:-}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false      # JAX takes GPU memory as it needs it
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c "import torch, h5py, tqdm, scipy; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  lscpu | grep -E "Model name|^CPU\(s\)"
} 2>&1 | tee "$out/info.txt"
if [ -d .gpudata/mnist ]; then      # MNIST's four files, gzipped (never committed)
  mkdir -p ~/.cache/neurosim/data/mnist
  for f in .gpudata/mnist/*.gz; do gunzip -c "$f" > ~/.cache/neurosim/data/mnist/"$(basename "$f" .gz)"; done
fi
peers_python=python3
if [ -n "$wheels" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site "$wheels"/*.whl 2>&1 | tail -3 | tee -a "$out/info.txt"
  printf '#!/bin/sh\nPYTHONPATH=/tmp/site exec python3 "$@"\n' > /tmp/peers_python
  chmod +x /tmp/peers_python
  peers_python=/tmp/peers_python
  /tmp/peers_python -c "import brainpy, jax; print('brainpy', brainpy.__version__, 'jax', jax.__version__, jax.devices())" 2>&1 | tail -2 | tee -a "$out/info.txt"
fi
steps="${GPU_STEPS:-check peers corinfomax ensemble}"   # which steps to run
step() {       # step NAME SECONDS COMMAND...
  local name="$1" limit="$2"; shift 2
  case " $steps " in *" $name "*) ;; *) return ;; esac
  echo "=== $name ($(date -u +%T), limit ${limit} s): $*" | tee -a "$out/info.txt"
  timeout "$limit" "$@" > "$out/$name.txt" 2>&1
  echo "=== $name: exit $? at $(date -u +%T)" | tee -a "$out/info.txt"
  tail -40 "$out/$name.txt"
}
step check 100 python3 benchmarks/gpu/check.py --device cuda
step peers 200 python3 benchmarks/peers/run.py --device cuda --warm --sizes 1000 4000 \
    --repeats 5 --paths ${PEER_PATHS:-fused eager} --peers brainpy --peers-python "$peers_python"
step peers_cold 120 python3 benchmarks/peers/run.py --device cuda --sizes 1000 4000 \
    --repeats 3 --paths fused --skip-peers
step corinfomax 120 python3 benchmarks/corinfomax_speed.py --device cuda \
    --variants model model-eager model-every-step --train-samples 2000 --test-samples 5000 \
    --reference-samples 200 --repeats 3 --json "$out/corinfomax.json"
step ensemble 150 python3 benchmarks/ensemble_speed.py --device cuda --members 10 \
    --rows 2000 --test-rows 1000 --repeats 4
