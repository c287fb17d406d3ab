"""Timing of a mochac net and its PyTorch peer in one process.

Each measure runs ``repeats`` rounds of ``iters`` iterations after a warm-up
and reports the median, minimum, maximum and spread of the per-iteration
time of the rounds. Measures: forward, backward, and a training iteration
(data, forward, backward, SGD update). Backward is timed as forward plus
backward minus forward for both frameworks, since a PyTorch backward needs
a fresh graph each time.
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time

from mochac.bench.blas_share import gemm_shapes, time_gemms
from mochac.runtime.backend import CPUBackend
from mochac.runtime.net import Net
from mochac.runtime.solver import SGD

logger = logging.getLogger(__name__)


def rounds(function, iters: int, repeats: int) -> list[float]:
    """Return the seconds per call of ``function`` for each of ``repeats`` rounds."""
    function()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            function()
        samples.append((time.perf_counter() - start) / iters)
    return samples


def summary(samples: list[float]) -> dict:
    """Return the median, minimum, maximum and spread of samples, in milliseconds."""
    values = [1e3 * sample for sample in samples]
    return {
        "median_ms": statistics.median(values),
        "min_ms": min(values),
        "max_ms": max(values),
        "spread_ms": max(values) - min(values),
        "rounds": len(values),
    }


def _difference(total: list[float], part: list[float]) -> list[float]:
    return [max(a - b, 0.0) for a, b in zip(total, part)]


def measure_compile(layers_factory, batch: int, threads: int, opt_level: int) -> dict:
    """Return the seconds to build the train net with an empty and a warm cache."""
    saved = os.environ.get("MOCHAC_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="mochac-bench-cache-") as folder:
        os.environ["MOCHAC_CACHE_DIR"] = folder
        try:
            times = []
            for _ in range(2):
                start = time.perf_counter()
                Net(
                    "bench",
                    CPUBackend(threads=threads, seed=0),
                    layers_factory(batch),
                    opt_level=opt_level,
                )
                times.append(time.perf_counter() - start)
        finally:
            if saved is None:
                del os.environ["MOCHAC_CACHE_DIR"]
            else:
                os.environ["MOCHAC_CACHE_DIR"] = saved
    return {"cold_s": times[0], "warm_s": times[1]}


def bench(
    layers_factory,
    batch=64,
    threads=1,
    iters=20,
    repeats=5,
    opt_level=1,
    peer=True,
    torch_compile=True,
) -> dict:
    """Time a net built by ``layers_factory(batch)`` and its peers; return a report."""
    net = Net(
        "bench",
        CPUBackend(threads=threads, seed=0),
        layers_factory(batch),
        opt_level=opt_level,
    )
    method = SGD()

    def train():
        net.forward()
        net.backward()
        method.update(net, 0.01, 0.9, 0.0005)

    def forward_backward():
        net.forward()
        net.backward()

    forward = rounds(net.forward, iters, repeats)
    both = rounds(forward_backward, iters, repeats)
    report = {
        "batch": batch,
        "threads": threads,
        "iters": iters,
        "opt_level": opt_level,
        "mochac": {
            "forward": summary(forward),
            "backward": summary(_difference(both, forward)),
            "train": summary(rounds(train, iters, repeats)),
        },
        "compile": measure_compile(layers_factory, batch, threads, opt_level),
        "peers": {},
    }
    shapes = gemm_shapes(net)
    blas_ms = 1e3 * time_gemms(shapes, threads, net.backend.dtype)
    net.lib.mochac_set_num_threads(threads)
    report["blas"] = {
        "gemms_per_iteration": len(shapes),
        "gemm_ms": blas_ms,
        "share_of_train": blas_ms / report["mochac"]["train"]["median_ms"],
    }
    if peer:
        report["peers"] = bench_torch(net, threads, iters, repeats, torch_compile)
    for name, measures in report["peers"].items():
        for measure, values in measures.items():
            if isinstance(values, dict) and measure in report["mochac"]:
                ours = report["mochac"][measure]["median_ms"]
                values["speedup_of_mochac"] = (
                    values["median_ms"] / ours if ours else None
                )
    return report


def bench_torch(net, threads, iters, repeats, torch_compile) -> dict:
    """Time PyTorch eager (and torch.compile) on the same net; {} without torch."""
    try:
        import torch
    except ImportError:
        logger.warning(
            "PyTorch is not installed, so no peer is timed; pip install torch"
        )
        return {}
    from mochac.bench.torch_peer import TorchNet

    torch.set_num_threads(threads)
    peers = {}
    variants = [("torch_eager", None)]
    if torch_compile:
        variants.append(("torch_compile", "compile"))
    for name, mode in variants:
        peer = TorchNet(net)
        loss = peer.loss
        if mode == "compile":
            loss = torch.compile(peer.loss)
            start = time.perf_counter()
            peer.train_step(loss)
            compile_s = time.perf_counter() - start
        forward = rounds(lambda: loss(peer.x, peer.y), iters, repeats)
        both = rounds(lambda: loss(peer.x, peer.y).backward(), iters, repeats)
        peers[name] = {
            "forward": summary(forward),
            "backward": summary(_difference(both, forward)),
            "train": summary(rounds(lambda: peer.train_step(loss), iters, repeats)),
            "version": torch.__version__,
        }
        if mode == "compile":
            peers[name]["compile_s"] = compile_s
    return peers


def format_bench(report: dict) -> str:
    """Return the report as a table: one line per framework and measure."""
    lines = [
        f"batch {report['batch']}, {report['threads']} thread(s), median of "
        f"{report['mochac']['train']['rounds']} rounds of {report['iters']} iterations",
        f"{'':14} {'forward ms':>11} {'backward ms':>12} {'train ms':>9} {'train it/s':>11}",
    ]
    rows = [("mochac", report["mochac"])] + list(report["peers"].items())
    for name, measures in rows:
        train = measures["train"]["median_ms"]
        lines.append(
            f"{name:14} {measures['forward']['median_ms']:11.2f} "
            f"{measures['backward']['median_ms']:12.2f} {train:9.2f} {1e3 / train:11.1f}"
        )
    for name, measures in report["peers"].items():
        lines.append(
            f"mochac speed-up over {name}: forward "
            f"{measures['forward']['speedup_of_mochac']:.2f}x, train "
            f"{measures['train']['speedup_of_mochac']:.2f}x"
        )
    blas = report["blas"]
    lines.append(
        f"BLAS alone on the {blas['gemms_per_iteration']} GEMMs of an iteration: "
        f"{blas['gemm_ms']:.2f} ms, {100 * blas['share_of_train']:.0f}% of mochac's "
        "training iteration"
    )
    compile_times = report["compile"]
    lines.append(
        f"compile: {compile_times['cold_s']:.2f} s cold, {compile_times['warm_s']:.2f} s warm"
    )
    return "\n".join(lines)
