#!/usr/bin/env bash
# The whole GPU check of issue 16 in one run, for a machine with an NVIDIA GPU:
#   1. CuPy: installed by the GPU extra where it is missing (cupy-cuda12x[ctk] brings NVRTC,
#      cuBLAS and the CUDA runtime headers; the machine needs only the NVIDIA driver)
#   2. the probe's verdict (what is missing, and the fix, if anything is)
#   3. the gpu tests: they FAIL, not skip, where CuPy is installed but broken
#   4. bench_vgg on the GPU: VGG-11-CIFAR training at batch 256 against PyTorch + cuDNN,
#      TF32 off on both sides and TF32 on on both sides, results into benchmarks/results/
# Usage: bash benchmarks/gpu_check.sh [python]      (default: python3 on PATH)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
export NUMBA_THREADING_LAYER=workqueue MPLBACKEND=Agg
"$PY" -c "import cupy" 2>/dev/null || "$PY" -m pip install -q -e ".[dev,gpu]"
"$PY" -c "from minivgg.backend import cupy_problem as p; print('probe:', p() or 'CuPy runs')"
"$PY" -m pytest -q -m gpu tests 2>&1 | tail -25
# --max-load: the tests above just loaded the host's cores; the GPU's speed is not the host's
"$PY" benchmarks/bench_vgg.py --batch 256 --rounds 3 --tag gpu-b256 --max-load 100 --variants \
    minivgg:cupy torch:nchw torch:channels_last \
    minivgg:cupy+tf32 torch:nchw+tf32 torch:channels_last+tf32
