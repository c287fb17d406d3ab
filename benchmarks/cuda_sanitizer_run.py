"""A short GPU run of every layer family, for NVIDIA's compute-sanitizer.

    compute-sanitizer --tool memcheck --error-exitcode 1 \\
        python3 benchmarks/cuda_sanitizer_run.py
    compute-sanitizer --tool racecheck --error-exitcode 1 \\
        python3 benchmarks/cuda_sanitizer_run.py

Builds the test nets of tests/cuda_nets.py, which together use every layer
family, and LeNet at batch 8 on the GPU backend, in float32 and float64.
Each runs a forward pass, a backward pass and three training steps, the
third replayed from a CUDA graph. memcheck reports any out-of-bounds
or misaligned access of the generated kernels, racecheck any shared-memory
race. Prints one line per net. The sanitizer's exit status is nonzero when
it found an error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from cuda_nets import NETS

from mochac.bench.nets import lenet
from mochac.runtime.gpu_backend import GPUBackend
from mochac.runtime.gpu_net import GPUNet
from mochac.runtime.solver import SGD


def main():
    cases = {name: (factory, level) for name, (factory, level) in NETS.items()}
    cases["lenet"] = (lambda dtype: lenet(8), 1)
    for dtype in (np.float32, np.float64):
        for name, (factory, opt_level) in sorted(cases.items()):
            net = GPUNet(
                f"{name}-{np.dtype(dtype).name}",
                GPUBackend(dtype=dtype, seed=0),
                factory(dtype),
                opt_level=opt_level,
            )
            objective = net.forward()
            net.backward()
            method = SGD()
            for iteration in range(3):
                net.train_step(method, 0.01, 0.9, 0.0005, iteration)
            net.synchronize()
            print(
                f"{net.name}: forward objective {objective:.6g}, "
                f"3 training steps, CUDA graphs {bool(net.graphs.graphs)}",
                flush=True,
            )
            net.destroy()


if __name__ == "__main__":
    # Takes no options; --help shows the first line of the docstring.
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    main()
