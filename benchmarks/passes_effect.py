"""Measure what the passes do to the MNIST tutorial's LeNet at batch 64.

    python benchmarks/passes_effect.py [--iters 200] [--threads N]

Builds the train net at -O0 and -O1 from the same layers, then times
training iterations (data, forward, backward, SGD update) of both in
alternating rounds of one process, and prints kernels per iteration, memory
and the median time per iteration of each level with their ratio.
"""

import argparse
import importlib.util
import statistics
import time
from pathlib import Path

import numpy as np

from mochac import (
    SGD,
    AccuracyLayer,
    CPUBackend,
    MemoryDataLayer,
    Net,
    SoftmaxLossLayer,
)

ROOT = Path(__file__).resolve().parents[1]


def common_layers():
    spec = importlib.util.spec_from_file_location(
        "lenet", ROOT / "examples/mnist/lenet.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.common_layers()


def build(opt_level, threads, batch):
    rng = np.random.default_rng(0)
    x = rng.random((batch * 4, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, (batch * 4, 1)).astype(np.float32)
    backend = CPUBackend(threads=threads, seed=0)
    common = common_layers()
    data = MemoryDataLayer(name="data", batch_size=batch, data=[x, y])
    loss = SoftmaxLossLayer(name="loss", bottoms=["ip2", "label"])
    accuracy = AccuracyLayer(name="accuracy", bottoms=["ip2", "label"])
    train = Net(
        f"lenet-train-O{opt_level}", backend, [data, *common, loss], opt_level=opt_level
    )
    test = Net(
        f"lenet-test-O{opt_level}",
        backend,
        [data, *common, accuracy],
        opt_level=opt_level,
    )
    return train, test


def time_iterations(net, iters):
    method = SGD()
    start = time.perf_counter()
    for _ in range(iters):
        net.forward()
        net.backward()
        method.update(net, 0.01, 0.9, 0.0005)
    return (time.perf_counter() - start) / iters


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=200, help="iterations per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads")
    parser.add_argument("--batch", type=int, default=64, help="batch size")
    args = parser.parse_args()

    nets = {level: build(level, args.threads, args.batch) for level in (0, 1)}
    for level, (train, test) in nets.items():
        for net in (train, test):
            memory = net.memory
            arena = net.plan.arena_bytes if net.plan else memory.unplanned_bytes
            print(
                f"-O{level} {net.name}: kernels/iteration {net.counts_after['kernels']}, "
                f"unplanned {memory.unplanned_bytes} B, arena {arena} B, "
                f"peak live {memory.peak_live_bytes} B"
            )
    for level in (0, 1):
        time_iterations(nets[level][0], 20)
    times = {0: [], 1: []}
    for _ in range(args.rounds):
        for level in (0, 1):
            times[level].append(time_iterations(nets[level][0], args.iters))
    medians = {level: statistics.median(values) for level, values in times.items()}
    threads = nets[0][0].backend.threads
    for level in (0, 1):
        spread = max(times[level]) - min(times[level])
        print(
            f"-O{level}: {1e3 * medians[level]:.2f} ms per training iteration "
            f"(spread {1e3 * spread:.2f} ms over {args.rounds} rounds of {args.iters}, "
            f"{threads} threads)"
        )
    print(f"time ratio -O1 / -O0: {medians[1] / medians[0]:.3f}")


if __name__ == "__main__":
    main()
