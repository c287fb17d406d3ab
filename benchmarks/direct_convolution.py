"""Time a net's convolutions as direct code and as im2col + GEMM.

    python benchmarks/direct_convolution.py [--net cifar10|lenet] [--batch 64]
        [--force] [--threads 1] [--iters 10] [--repeats 7]

Builds the train net of `mochac bench NET` twice in one process, once with
direct convolutions (the default) and once with every convolution lowered
to im2col and OpenBLAS GEMMs. Then it times each convolution's compiled
forward and backward pass alone, alternating the two nets round by round,
and prints the median milliseconds and GFLOP/s (the multiply-adds of the
convolution, counted twice) of both and their ratio. ``--force`` lowers the
useful-share and output-position bounds of direct_convolution_fits to 0,
so every stride-1 convolution runs direct: it shows what the bounds avoid.
"""

from __future__ import annotations

import argparse
import statistics
import time

from mochac import CPUBackend, Net
from mochac.bench.nets import BUILTIN
from mochac.codegen import lowering


def build(net_name: str, direct: bool, force: bool, threads: int, batch: int) -> Net:
    saved = (
        lowering.DIRECT_CONVOLUTION,
        lowering.DIRECT_MIN_FILL,
        lowering.DIRECT_MIN_POSITIONS,
    )
    lowering.DIRECT_CONVOLUTION = direct
    if force:
        lowering.DIRECT_MIN_FILL = lowering.DIRECT_MIN_POSITIONS = 0
    try:
        net = Net(
            f"{net_name}-{'direct' if direct else 'im2col'}",
            CPUBackend(threads=threads, seed=0),
            BUILTIN[net_name](batch),
        )
    finally:
        (
            lowering.DIRECT_CONVOLUTION,
            lowering.DIRECT_MIN_FILL,
            lowering.DIRECT_MIN_POSITIONS,
        ) = saved
    net.forward()
    net.backward()
    return net


def conv_flops(kernel, phase: str) -> float:
    """Return the FLOPs of one pass: 2 per multiply-add, backward counting
    the filter gradient and, when computed, the bottom diff."""
    k = kernel.context
    product = 2.0 * k["F"] * k["K"] * k["NP"]
    if phase == "forward":
        return product
    has_dx = any(pair["dx"] is not None for pair in k["pairs"])
    return product * (2 if has_dx else 1)


def time_ms(function, iters: int) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        function()
    return 1e3 * (time.perf_counter() - start) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", choices=sorted(BUILTIN), default="cifar10")
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()

    nets = {
        name: build(args.net, name == "direct", args.force, args.threads, args.batch)
        for name in ("direct", "im2col")
    }
    kernels = {
        name: {k.fn: k for k in net.kernels if k.family == "convolution"}
        for name, net in nets.items()
    }
    print(
        f"{args.net} train net, batch {args.batch}, {args.threads} thread(s), "
        f"median of {args.repeats} rounds of {args.iters} calls"
        + (", every stride-1 convolution direct" if args.force else "")
    )
    print(
        f"{'layer':8} {'pass':9} {'direct ms':>10} {'GFLOP/s':>8} "
        f"{'im2col ms':>10} {'GFLOP/s':>8} {'speed-up':>9}"
    )
    for layer in kernels["direct"]:
        if kernels["direct"][layer].template != "c/convolution_direct.c.j2":
            print(f"{layer:8} runs im2col in both nets; use --force to compare")
            continue
        assert kernels["im2col"][layer].template == "c/convolution.c.j2"
        for phase in ("forward", "backward"):
            samples = {name: [] for name in nets}
            for _ in range(args.repeats):
                for name, net in nets.items():
                    run = (
                        net.forward_layer if phase == "forward" else net.backward_layer
                    )
                    run(layer)
                    samples[name].append(
                        time_ms(lambda run=run, layer=layer: run(layer), args.iters)
                    )
            ms = {name: statistics.median(values) for name, values in samples.items()}
            flops = conv_flops(kernels["direct"][layer], phase)
            print(
                f"{layer:8} {phase:9} {ms['direct']:10.3f} "
                f"{flops / ms['direct'] / 1e6:8.1f} {ms['im2col']:10.3f} "
                f"{flops / ms['im2col'] / 1e6:8.1f} "
                f"{ms['im2col'] / ms['direct']:8.2f}x"
            )


if __name__ == "__main__":
    main()
