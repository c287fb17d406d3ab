"""Time a small net's forward pass on threads and on one thread, hot and after idling.

    python benchmarks/parallel_threshold.py [--net lenet] [--batch 1]
        [--threads 2] [--idle-ms 10]

A net whose forward GEMMs and convolutions come to at most
PARALLEL_MIN_FLOPS (mochac/codegen/c_source.py) runs on the calling thread
alone. This builds the net's inference form twice in one process: once
with that rule, and once with the bound at 0, so that its loops run on
threads. Each is timed two ways. Back to back: the best of 7 rounds of 500
calls, per call. After idling: the median of 200 single calls, each after
``--idle-ms`` of sleep, when OpenMP's threads have gone to sleep and must
be woken.
"""

from __future__ import annotations

import argparse
import statistics
import time

from mochac.bench.nets import BUILTIN
from mochac.bench.runner import inference_layers
from mochac.codegen import c_source
from mochac.runtime.backend import CPUBackend
from mochac.runtime.net import Net


def back_to_back_us(net, calls=500, rounds=7) -> float:
    net.forward()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            net.forward()
        best = min(best, (time.perf_counter() - start) / calls * 1e6)
    return best


def after_idle_us(net, idle_ms: float, calls=200) -> float:
    net.forward()
    times = []
    for _ in range(calls):
        time.sleep(idle_ms / 1e3)
        start = time.perf_counter()
        net.forward()
        times.append((time.perf_counter() - start) * 1e6)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="lenet", choices=sorted(BUILTIN))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--idle-ms", type=float, default=10.0)
    args = parser.parse_args()

    saved = c_source.PARALLEL_MIN_FLOPS
    for label, bound in (("rule", saved), ("threads", 0.0)):
        c_source.PARALLEL_MIN_FLOPS = bound
        try:
            net = Net(
                f"{args.net}-{label}",
                CPUBackend(threads=args.threads, seed=0),
                inference_layers(BUILTIN[args.net], args.batch),
            )
        finally:
            c_source.PARALLEL_MIN_FLOPS = saved
        parallel = "mochac_parallel = 1;" in net.source
        print(
            f"{args.net}, batch {args.batch}, {args.threads} thread(s), "
            f"{'on threads' if parallel else 'one thread'} ({label}): "
            f"back to back {back_to_back_us(net):.1f} us, after "
            f"{args.idle_ms:g} ms idle {after_idle_us(net, args.idle_ms):.1f} us"
        )


if __name__ == "__main__":
    main()
