"""Compare the memory plans of random split nets with eliminate_splits on and off.

``python tests/split_memory_fuzz.py COUNT [--first-seed N] [--wide] [--show]``
builds COUNT random nets (seeds N to N + COUNT - 1) of inner products,
softmaxes, powers, dropouts, additions and splits, written and inserted. It
counts the nets whose plan with the pass has a higher peak, or a larger
arena at an equal or lower peak, than the plan without it. ``--wide`` draws
batch sizes up to 16 and widths that are not powers of two; ``--show``
prints each such net's numbers.

Each net is built up to its memory plan only, without a C compiler: the
patched plan_memory records every plan and the patched build_extension
stops the Net constructor, so the last plan recorded is the net's own.
"""

import argparse
import logging
import sys

import numpy as np

import mochac.runtime.net as net_module
from mochac import (
    CPUBackend,
    DropoutLayer,
    ElementWiseLayer,
    InnerProductLayer,
    MemoryDataLayer,
    Net,
    Neurons,
    PowerLayer,
    SoftmaxLayer,
    SplitLayer,
    SquareLossLayer,
)

original_plan_memory = net_module.plan_memory


recorded = []


class PlanCaptured(Exception):
    """Raised in place of compiling the net, once its plan is recorded."""


def recording_plan_memory(slots, kernels, pinned):
    recorded.append(original_plan_memory(slots, kernels, pinned))
    return recorded[-1]


def stop_build(source, name, **options):
    raise PlanCaptured


net_module.plan_memory = recording_plan_memory
net_module.build_extension = stop_build


WIDE = "--wide" in sys.argv[1:]
DIMS = [3, 5, 12, 24, 40, 100, 130] if WIDE else [2, 4, 8, 16, 32, 64, 128]


def random_layers(seed):
    rng = np.random.default_rng(seed)
    batch = int(rng.integers(1, 17 if WIDE else 5))
    width = int(rng.choice(DIMS[1:6]))
    out = 3
    layers = [
        MemoryDataLayer(
            name="data",
            batch_size=batch,
            tops=["x", "t"],
            data=[
                rng.normal(size=(batch * 2, width)).astype(np.float32),
                rng.normal(size=(batch * 2, out)).astype(np.float32),
            ],
        )
    ]
    # The blobs later layers may read, and their widths.
    blobs = {"x": width}
    counter = 0

    def fresh(prefix):
        nonlocal counter
        counter += 1
        return f"{prefix}{counter}"

    n_ops = int(rng.integers(3, 14))
    for _ in range(n_ops):
        names = list(blobs)
        # Recent blobs are likelier, so the nets grow deep as well as wide.
        weights = np.arange(1, len(names) + 1, dtype=float) ** 2
        pick = names[rng.choice(len(names), p=weights / weights.sum())]
        kind = rng.choice(
            ["ip", "ip", "split", "split", "soft", "power", "drop", "add", "reuse"]
        )
        if kind == "ip":
            top = fresh("ip")
            dim = int(rng.choice(DIMS))
            neuron = Neurons.ReLU() if rng.random() < 0.5 else Neurons.Identity()
            layers.append(
                InnerProductLayer(
                    name=top, output_dim=dim, neuron=neuron, bottoms=[pick], tops=[top]
                )
            )
            blobs[top] = dim
        elif kind == "split":
            k = int(rng.integers(2, 4))
            name = fresh("split")
            tops = [f"{name}_{i}" for i in range(k)]
            layers.append(SplitLayer(name=name, bottoms=[pick], tops=tops))
            for top in tops:
                blobs[top] = blobs[pick]
            del blobs[pick]
        elif kind == "soft":
            top = fresh("soft")
            layers.append(SoftmaxLayer(name=top, bottoms=[pick], tops=[top]))
            blobs[top] = blobs[pick]
        elif kind == "power":
            top = fresh("pow")
            power = float(rng.choice([1.0, 2.0]))
            layers.append(
                PowerLayer(name=top, power=power, scale=0.5, bottoms=[pick], tops=[top])
            )
            blobs[top] = blobs[pick]
        elif kind == "drop":
            top = fresh("drop")
            layers.append(DropoutLayer(name=top, bottoms=[pick], tops=[top]))
            blobs[top] = blobs[pick]
        elif kind == "add":
            same = [n for n in names if blobs[n] == blobs[pick] and n != pick]
            if not same:
                continue
            other = same[int(rng.integers(len(same)))]
            top = fresh("add")
            layers.append(ElementWiseLayer(name=top, bottoms=[pick, other], tops=[top]))
            blobs[top] = blobs[pick]
        elif kind == "reuse":
            # A second reader of the same blob makes mochac insert a split.
            top = fresh("ip")
            dim = int(rng.choice([4, 16, 64]))
            layers.append(
                InnerProductLayer(name=top, output_dim=dim, bottoms=[pick], tops=[top])
            )
            blobs[top] = dim
    # Every blob that no layer reads ends in a loss.
    read = {b for layer in layers for b in layer.bottoms}
    produced = [t for layer in layers[1:] for t in layer.tops]
    for blob in produced:
        if blob in read:
            continue
        head = fresh("head")
        layers.append(
            InnerProductLayer(name=head, output_dim=out, bottoms=[blob], tops=[head])
        )
        layers.append(SquareLossLayer(name=fresh("loss"), bottoms=[head, "t"]))
    return layers


def plan(seed, disable):
    layers = random_layers(seed)
    try:
        Net(
            f"fuzz{seed}", CPUBackend(dtype=np.float32, seed=1), layers, disable=disable
        )
    except PlanCaptured:
        return recorded[-1]
    raise AssertionError(f"seed {seed}: the net compiled without a memory plan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("count", type=int, help="number of random nets")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument(
        "--wide", action="store_true", help="draw larger batches and uneven widths"
    )
    parser.add_argument(
        "--show", action="store_true", help="print the plans of each such net"
    )
    options = parser.parse_args()

    logging.disable(logging.WARNING)
    first, count = options.first_seed, options.count
    higher_peak, larger_arena, ratios = [], [], []

    for seed in range(first, first + count):
        with_pass = plan(seed, ())
        without_pass = plan(seed, ("eliminate_splits",))
        if with_pass.peak_live_bytes > without_pass.peak_live_bytes:
            higher_peak.append(seed)
        elif with_pass.arena_bytes > without_pass.arena_bytes:
            larger_arena.append(seed)
            ratios.append(with_pass.arena_bytes / without_pass.arena_bytes)
        else:
            continue
        if options.show:
            print(
                f"seed {seed}: peak {with_pass.peak_live_bytes} with the pass, "
                f"{without_pass.peak_live_bytes} without; arena "
                f"{with_pass.arena_bytes} with, {without_pass.arena_bytes} without"
            )

    print(f"seeds {first} to {first + count - 1}: {count} nets")
    print(f"higher peak with the pass: {len(higher_peak)} {higher_peak[:20]}")
    print(
        f"larger arena at an equal or lower peak: {len(larger_arena)}, max ratio "
        f"{max(ratios, default=1.0):.3f} {larger_arena[:20]}"
    )


if __name__ == "__main__":
    main()
