#!/usr/bin/env bash
# The CUDA backend's checks on a GPU machine, as one prepared command.
#
# The device image has CuPy, PyTorch, numpy, h5py, networkx and jinja2 but
# not cffi or scipy-openblas32, which the CPU reference nets need. Fetch
# them as wheels for its Python 3.12 first, from the repository root:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 -d .whl cffi pycparser scipy-openblas32
#
# then run `bash benchmarks/cuda_device_check.sh` there with `.whl` carried.
# Results land in $OUT: gpu.txt, tests.log, bench.log, lenet-cuda.json,
# memcheck.log and racecheck.log. The time limits of the tests, the bench
# and compute-sanitizer add up to 560 s, where each compute-sanitizer run
# gets 5 s more to stop after its 80 s. That leaves 40 s of one 600 s call
# for the wheel install and the version checks.
set -uo pipefail
OUT=${OUT:-/tmp/mochac-device-out}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target /tmp/mochac-site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/mochac-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 MOCHAC_CACHE_DIR=/tmp/mochac-cache
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import cupy, torch; print('cupy', cupy.__version__, 'torch', torch.__version__)" \
    2>&1 | tee -a "$OUT/gpu.txt"
# Which libcublas the nets call directly (None: GEMMs go through CuPy, and
# steps with GEMMs run without CUDA graphs).
python3 -c "import cupy; from mochac.runtime.cublas_direct import find_cublas; \
print('direct libcublas:', find_cublas(cupy))" 2>&1 | tee -a "$OUT/gpu.txt"
# Equivalence with the CPU backend (float64), graphs, update, snapshots;
# NVRTC compiles every family where CuPy brings its library.
timeout 240 python3 -m pytest -q -rs tests/test_cuda_device.py tests/test_cuda_compile.py \
    2>&1 | tee "$OUT/tests.log"
# Speed against PyTorch eager on the same GPU, training steps as CUDA graphs,
# then each layer's device time, to show where a step's time goes.
timeout 150 python3 -m mochac.cli bench lenet --backend cuda --batch 64 --iters 200 \
    --repeats 5 --profile --json "$OUT/lenet-cuda.json" 2>&1 | tee "$OUT/bench.log"
# Out-of-bounds accesses and shared-memory races of the generated kernels,
# on a short run of every layer family. compute-sanitizer refuses the device
# on some machine runtimes, and its log then shows the refusal.
for tool in memcheck racecheck; do
    timeout -k 5 80 compute-sanitizer --tool "$tool" --error-exitcode 1 \
        python3 benchmarks/cuda_sanitizer_run.py > "$OUT/$tool.log" 2>&1
    echo "compute-sanitizer --tool $tool: exit status $?" | tee -a "$OUT/$tool.log"
done
