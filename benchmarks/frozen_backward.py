"""Time a layer-wise pre-training step with and without its frozen backward passes.

    python benchmarks/frozen_backward.py [--layer 3] [--threads 1]
        [--iters 20] [--repeats 7]

Builds the denoising auto-encoder of hidden layer ``--layer`` from
examples/autoencoder (batch 100, 784 inputs, hidden layers of 1000 sigmoid
units) on random data. As the example does, it freezes every layer but the
encoder and decoder. Then it times training steps two ways in one process,
alternating round by round: as mochac runs them, skipping the backward
passes of the frozen hidden layers below (mochac.runtime.freeze.
skipped_backward), and with every backward pass run. Prints the median
milliseconds per step of both and their ratio, and checks that both ways
give the same parameters.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from mochac import (
    SGD,
    CPUBackend,
    InnerProductLayer,
    MemoryDataLayer,
    Net,
    Neurons,
    RandomMaskLayer,
    SplitLayer,
    SquareLossLayer,
    TiedInnerProductLayer,
)
from mochac.mocha_api import freeze_all, unfreeze
from mochac.runtime import native_update


def autoencoder(layer: int, backend, batch: int = 100, units: int = 1000) -> Net:
    rng = np.random.default_rng(0)
    images = rng.random((batch * 4, 784), dtype=np.float32)
    hidden = [
        InnerProductLayer(
            name=f"ip-{i}",
            output_dim=units,
            neuron=Neurons.Sigmoid(),
            bottoms=[f"ip{i - 1}"],
            tops=[f"ip{i}"],
        )
        for i in range(1, layer + 1)
    ]
    layers = [
        MemoryDataLayer(name="data", batch_size=batch, data=[images], tops=["ip0"]),
        *hidden[: layer - 1],
        SplitLayer(name="split", bottoms=[f"ip{layer - 1}"], tops=["orig", "corrupt"]),
        RandomMaskLayer(name="mask", ratio=0.3, bottoms=["corrupt"], tops=["masked"]),
        hidden[layer - 1].replace(bottoms=["masked"]),
        TiedInnerProductLayer(
            name="tied",
            tied_param_key=f"ip-{layer}",
            bottoms=[f"ip{layer}"],
            tops=["recon"],
        ),
        SquareLossLayer(name="loss", bottoms=["recon", "orig"]),
    ]
    net = Net(f"autoencoder-{layer}", backend, layers)
    freeze_all(net)
    unfreeze(net, f"ip-{layer}", "tied")
    return net


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    nets = {
        way: autoencoder(args.layer, CPUBackend(threads=args.threads, seed=0))
        for way in ("skipping", "full")
    }
    methods = {way: SGD() for way in nets}
    # The full way: the same tables with an empty skip mask.
    full_tables = native_update.tables_for(nets["full"], methods["full"], 0.0)
    full_tables.skip = nets["full"].ffi.NULL
    skipped = native_update.tables_for(nets["skipping"], methods["skipping"], 0.0)
    assert skipped.skip != nets["skipping"].ffi.NULL, "nothing is skipped"

    times = {way: [] for way in nets}
    iteration = 0
    for _ in range(args.repeats):
        for way, net in nets.items():
            start = time.perf_counter()
            for step in range(args.iters):
                net.train_step(methods[way], 0.001, 0.0, 0.0, iteration + step)
            times[way].append((time.perf_counter() - start) / args.iters * 1e3)
        iteration += args.iters
    for name, array in nets["full"].params[f"ip-{args.layer}"].items():
        np.testing.assert_array_equal(
            nets["skipping"].params[f"ip-{args.layer}"][name], array
        )
    medians = {way: statistics.median(values) for way, values in times.items()}
    print(
        f"auto-encoder {args.layer}, batch 100, {args.threads} thread(s), median of "
        f"{args.repeats} rounds of {args.iters} steps: skipping frozen backward "
        f"{medians['skipping']:.2f} ms, every backward {medians['full']:.2f} ms, "
        f"{medians['full'] / medians['skipping']:.2f}x"
    )


if __name__ == "__main__":
    main()
