"""Time the host's share of a GPU training step, with a device that does nothing.

    python benchmarks/gpu_host_overhead.py [--net lenet] [--batch 64]
        [--steps 2000] [--repeats 5] [--profile]

Runs GPUNet.train_step against tests/host_cupy.py, the host stand-in of
CuPy, with every kernel launch and GEMM replaced by a call that returns at
once. What remains is mochac's Python work per step (reading the next batch,
binding the step block, replaying the graph, reading back the status and
accumulators) plus the stand-in's calls, which cost less than CuPy's real
ones. It bounds how many steps a second the host can issue, and does not
measure the device at all. ``--profile`` prints the functions that
take the most time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"


def install_null_device():
    """Put the host stand-in of CuPy in place, with kernels and GEMMs that do nothing."""
    sys.path.insert(0, str(TESTS))
    import host_cupy

    cupy = host_cupy.module()

    class NullModule:
        def __init__(self, code):
            self.code = code

        def get_function(self, name):
            return lambda grid, block, args: None

    cupy.RawModule = NullModule
    cupy.cublas.gemm = lambda *args, **kwargs: None
    sys.modules["cupy"] = cupy
    sys.modules["cupyx"] = host_cupy.cupyx_module()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="lenet")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    install_null_device()
    from mochac.bench.nets import BUILTIN
    from mochac.runtime.gpu_backend import GPUBackend
    from mochac.runtime.gpu_net import GPUNet
    from mochac.runtime.solver import SGD

    net = GPUNet(args.net, GPUBackend(seed=0), BUILTIN[args.net](args.batch))
    method = SGD()

    def steps():
        for iteration in range(args.steps):
            net.train_step(method, 0.01, 0.9, 0.0005, iteration)

    steps()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        steps()
        times.append((time.perf_counter() - start) / args.steps)
    median = statistics.median(times)
    print(
        f"{args.net}, batch {args.batch}, CUDA graphs {net.graphs.enabled}: "
        f"host time per train_step {median * 1e6:.1f} us (median of "
        f"{args.repeats} rounds of {args.steps} steps), "
        f"{1 / median:,.0f} steps/s from the host alone"
    )
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(steps)
        pstats.Stats(profile).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
