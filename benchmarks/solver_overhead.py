"""Time the solver's Python work per iteration on a net small enough to show it.

    python benchmarks/solver_overhead.py [--iters 3000] [--rounds 3]
        [--hidden 16] [--threads 1]

Builds a 20-input MLP (one ReLU hidden layer of ``--hidden`` units, 3
classes, softmax loss) over 6,400 random samples in batches of 64. Each
round times ``--iters`` bare ``Net.train_step`` calls, then a Solver (SGD,
momentum 0.9, fixed rate) training a fresh net for as many iterations
with no coffee breaks. Both run the same native work per iteration, so the
difference is the solver loop's own cost: policies, the resume point, the
epoch count and the constraint check. Prints microseconds per iteration
for both, per round.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from mochac import (
    SGD,
    CPUBackend,
    InnerProductLayer,
    LRPolicy,
    MemoryDataLayer,
    Net,
    Neurons,
    SoftmaxLossLayer,
    Solver,
    make_solver_parameters,
)


def make_net(hidden: int, threads: int) -> Net:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6400, 20)).astype(np.float32)
    y = rng.integers(0, 3, size=(6400, 1)).astype(np.float32)
    layers = [
        MemoryDataLayer(name="data", batch_size=64, data=[x, y]),
        InnerProductLayer(
            name="ip1",
            output_dim=hidden,
            neuron=Neurons.ReLU(),
            bottoms=["data"],
            tops=["ip1"],
        ),
        InnerProductLayer(name="ip2", output_dim=3, bottoms=["ip1"], tops=["ip2"]),
        SoftmaxLossLayer(name="loss", bottoms=["ip2", "label"]),
    ]
    return Net("overhead", CPUBackend(threads=threads, seed=1), layers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=3000, help="iterations per run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of both runs")
    parser.add_argument("--hidden", type=int, default=16, help="hidden units")
    parser.add_argument("--threads", type=int, default=1, help="OpenMP threads")
    args = parser.parse_args()
    for round_index in range(args.rounds):
        net, method = make_net(args.hidden, args.threads), SGD()
        start = time.perf_counter()
        for iteration in range(args.iters):
            net.train_step(method, 0.01, 0.9, 0.0005, iteration)
        bare = (time.perf_counter() - start) / args.iters
        net.destroy()

        net = make_net(args.hidden, args.threads)
        params = make_solver_parameters(
            SGD(), max_iter=args.iters, momentum=0.9, lr_policy=LRPolicy.Fixed(0.01)
        )
        solver = Solver(SGD(), params, progress=False)
        start = time.perf_counter()
        solver.solve(net)
        solved = (time.perf_counter() - start) / args.iters
        net.destroy()
        print(
            f"round {round_index + 1}: train_step {bare * 1e6:.1f} us, "
            f"solver {solved * 1e6:.1f} us per iteration "
            f"({(solved - bare) * 1e6:.1f} us of solver loop)"
        )


if __name__ == "__main__":
    main()
