"""Time a batch-1 LeNet forward pass, whole and layer by layer.

python benchmarks/latency_breakdown.py --threads 1
"""

from __future__ import annotations

import argparse
import time

from mochac.bench.nets import lenet
from mochac.bench.runner import inference_layers
from mochac.runtime.backend import CPUBackend
from mochac.runtime.net import Net


def best_microseconds(call, calls=1000, rounds=5) -> float:
    call()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        best = min(best, (time.perf_counter() - start) / calls)
    return 1e6 * best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    net = Net(
        "latency", CPUBackend(threads=args.threads, seed=0), inference_layers(lenet, 1)
    )
    print(f"net.forward(): {best_microseconds(net.forward):.1f} us")
    print(
        "compiled forward alone: "
        f"{best_microseconds(lambda: net.lib.mochac_forward(net.pointers, net.status, 1)):.1f} us"
    )
    for kernel in net.kernels:
        index = kernel.layer_index

        def layer(index=index):
            net.lib.mochac_layer_forward(index, net.pointers, net.status, 1)

        print(f"  {net.ir.layers[index].name:6} {best_microseconds(layer):8.1f} us")


if __name__ == "__main__":
    main()
