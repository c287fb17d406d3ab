"""Timing of a mochac net and its PyTorch peer in one process.

Each measure runs ``repeats`` rounds of ``iters`` iterations after a warm-up
and reports the median, minimum, maximum and spread of the per-iteration
time of the rounds. Rounds of mochac and of its peers alternate, so that
drift in the machine's speed (on a shared 2-core machine, often 30 % within
minutes) affects every framework alike. Measures: forward, backward, a training iteration
(data, then forward, backward and the SGD update in one native call), and
for inference the net without its loss: a forward pass at the batch size
(throughput) and at batch 1 (latency). Backward is timed as forward plus
backward minus forward for both frameworks, since a PyTorch backward needs
a fresh graph each time.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from mochac.bench.blas_share import gemm_shapes, time_gemms
from mochac.errors import ConfigError
from mochac.runtime.backend import CPUBackend
from mochac.runtime.net import Net
from mochac.runtime.solver import SGD
from mochac.version import __version__

logger = logging.getLogger(__name__)


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
    # Kept when negative: a backward shorter than the rounds' noise shows as
    # a spread around 0 instead of a false 0.
    return [a - b for a, b in zip(total, part)]


def measure_compile(
    layers_factory, batch: int, threads: int, opt_level: int, disable=()
) -> dict:
    """Return the seconds to build the train net with an empty and a warm cache.

    The builds repeat that of the timed train net, so their cache hit and
    summary lines go to DEBUG, and the compiler's warnings are not shown
    again (build.show_compiler_output).
    """
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
                    disable=disable,
                    _build_log_level=logging.DEBUG,
                )
                times.append(time.perf_counter() - start)
        finally:
            if saved is None:
                del os.environ["MOCHAC_CACHE_DIR"]
            else:
                os.environ["MOCHAC_CACHE_DIR"] = saved
    return {"cold_s": times[0], "warm_s": times[1]}


def cpu_model() -> str:
    """Return the CPU's model name from /proc/cpuinfo, or platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """Return the versions, CPU and BLAS settings that a report's times depend on.

    OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE change which kernels mochac's
    OpenBLAS runs, so the report records them ("unset" when absent).
    """
    try:
        openblas = importlib.metadata.version("scipy-openblas32")
    except importlib.metadata.PackageNotFoundError:
        openblas = "unknown"
    return {
        "mochac": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy_openblas32": openblas,
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", "unset"),
        "openblas_l2_size": os.environ.get("OPENBLAS_L2_SIZE", "unset"),
    }


def inference_layers(layers_factory, batch: int) -> list:
    """Return the net's layers at ``batch`` without its loss layers."""
    return [layer for layer in layers_factory(batch) if not layer.has_loss]


def interleaved_rounds(
    functions: dict, repeats: int, warmup_calls: int | None = None
) -> dict:
    """Return {key: seconds per call in each round} for ``{key: (function, calls)}``.

    An entry may have a third item, a callable that returns a context
    manager (torch.no_grad, for one). It is entered around the function's
    warm-up calls and around each of its rounds, outside the clock.

    First, untimed, each function is called ``warmup_calls`` times, or
    ``calls`` times when that is None, to warm caches, lazy compilation such
    as torch.compile's and the OpenMP thread pool. Then every round times
    each function in turn, in the order of ``functions``, so a change in the
    machine's speed during the run reaches mochac and its peers alike.
    """
    entries = {}
    for key, entry in functions.items():
        function, calls, *rest = entry
        entries[key] = (function, calls, rest[0] if rest else contextlib.nullcontext)
    for function, calls, context in entries.values():
        with context():
            for _ in range(calls if warmup_calls is None else warmup_calls):
                function()
    samples = {key: [] for key in entries}
    for _ in range(repeats):
        for key, (function, calls, context) in entries.items():
            with context():
                start = time.perf_counter()
                for _ in range(calls):
                    function()
                samples[key].append((time.perf_counter() - start) / calls)
    return samples


def check_batch(net, batch: int) -> None:
    """Raise ConfigError unless every data layer of ``net`` serves ``batch`` samples.

    A report states ``batch``, so a factory that ignores it must fail
    instead of timing a net of another batch size.
    """
    served = {shape[0] for source in net.sources.values() for shape in source.shapes}
    if served - {batch}:
        raise ConfigError(
            f"net '{net.name}': the layers factory was called for batch {batch}, but "
            f"the data layers serve batches of {', '.join(map(str, sorted(served)))}; "
            "make the factory set the data layers' batch_size to its argument"
        )


def mochac_measures(
    layers_factory, batch, threads, iters, opt_level, inference, disable=()
):
    """Return {measure: (function, calls)} for mochac, and the train net."""
    net = Net(
        "bench",
        CPUBackend(threads=threads, seed=0),
        layers_factory(batch),
        opt_level=opt_level,
        disable=disable,
    )
    check_batch(net, batch)
    method = SGD()

    def train():
        # One native call: forward, backward and the SGD update.
        net.train_step(method, 0.01, 0.9, 0.0005, 0)

    def forward_backward():
        net.forward()
        net.backward()

    measures = {
        "forward": (net.forward, iters),
        "forward_backward": (forward_backward, iters),
        "train": (train, iters),
    }
    if inference:
        infer_net = Net(
            "bench-infer",
            CPUBackend(threads=threads, seed=0),
            inference_layers(layers_factory, batch),
            opt_level=opt_level,
            disable=disable,
        )
        single_net = Net(
            "bench-latency",
            CPUBackend(threads=threads, seed=0),
            inference_layers(layers_factory, 1),
            opt_level=opt_level,
            disable=disable,
        )
        measures["infer"] = (infer_net.forward, iters)
        measures["latency"] = (single_net.forward, LATENCY_CALLS * iters)
    return measures, net


def bench(
    layers_factory,
    batch=64,
    threads=1,
    iters=20,
    repeats=5,
    opt_level=1,
    peer=True,
    torch_compile=True,
    inference=True,
    disable=(),
) -> dict:
    """Time a net built by ``layers_factory(batch)`` and its peers; return a report.

    With ``inference``, also times the net without its loss: a forward pass
    at ``batch`` (throughput) and at batch 1 (latency). The rounds of
    mochac and of its peers alternate (interleaved_rounds). ``opt_level``
    and ``disable`` are the passes of every mochac net, as for Net.
    """
    ours, net = mochac_measures(
        layers_factory, batch, threads, iters, opt_level, inference, disable
    )
    participants = {"mochac": ours}
    versions, compile_seconds, peer_threads = {}, {}, {}
    if peer:
        from mochac.bench.torch_peer import ZERO_GRAD_SET_TO_NONE

        participants.update(
            torch_measures(
                net,
                threads,
                iters,
                torch_compile,
                inference,
                versions,
                compile_seconds,
                peer_threads,
            )
        )
    net.lib.mochac_set_num_threads(threads)
    functions = {
        (name, measure): entry
        for name, measures in participants.items()
        for measure, entry in measures.items()
    }
    samples = interleaved_rounds(functions, repeats)
    results = {}
    for name, measures in participants.items():
        times = {measure: samples[(name, measure)] for measure in measures}
        both = times.pop("forward_backward")
        times["backward"] = _difference(both, times["forward"])
        results[name] = {measure: summary(values) for measure, values in times.items()}
    report = {
        "batch": batch,
        "threads": threads,
        # Read by every OpenMP runtime in the process, PyTorch's too.
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "iters": iters,
        "opt_level": opt_level,
        "disable": list(disable),
        "environment": environment(),
        "mochac": results.pop("mochac"),
        "peers": results,
    }
    for name, peer_report in report["peers"].items():
        peer_report["version"] = versions[name]
        peer_report["threads"] = peer_threads[name]
        peer_report["zero_grad_set_to_none"] = ZERO_GRAD_SET_TO_NONE
        if name in compile_seconds:
            peer_report["compile_s"] = compile_seconds[name]
    report["compile"] = measure_compile(
        layers_factory, batch, threads, opt_level, disable
    )
    shapes = gemm_shapes(net)
    blas_ms = 1e3 * time_gemms(shapes, threads, net.backend.dtype)
    net.lib.mochac_set_num_threads(threads)
    report["blas"] = {
        "gemms_per_iteration": len(shapes),
        "direct_convolution_gemms": len(gemm_shapes(net, direct=True)),
        "gemm_ms": blas_ms,
        "share_of_train": blas_ms / report["mochac"]["train"]["median_ms"],
    }
    for measures in report["peers"].values():
        for measure, values in measures.items():
            if isinstance(values, dict) and measure in report["mochac"]:
                values["speedup_of_mochac"] = speedup(
                    values["median_ms"], report["mochac"][measure]["median_ms"]
                )
    return report


def speedup(peer_ms: float, ours_ms: float) -> float | None:
    """Return the peer's time over mochac's, or None unless both are positive.

    A backward median is a difference of two timings and can be zero or
    negative on busy cores, and a ratio of such a time means nothing.
    """
    if peer_ms <= 0 or ours_ms <= 0:
        return None
    return peer_ms / ours_ms


# The pip command of PyTorch's CPU build, which is all the CPU peers need.
# PyTorch publishes it on its own index, not on PyPI.
TORCH_CPU_INSTALL = "pip install torch --index-url https://download.pytorch.org/whl/cpu"

# Batch-1 forward passes are short, so each round runs this many times more.
LATENCY_CALLS = 10


def torch_measures(
    net,
    threads,
    iters,
    torch_compile,
    inference,
    versions,
    compile_seconds,
    peer_threads,
) -> dict:
    """Return {peer: {measure: (function, calls)}} for PyTorch eager (and
    torch.compile), or {} without torch. Fills ``versions``, ``peer_threads``
    (the intra-op thread count torch reports after set_num_threads) and, for
    torch.compile, ``compile_seconds`` (the first training step).

    Inference (the net's batch and batch 1) is timed for eager only, under
    torch.inference_mode().
    """
    try:
        import torch
    except ImportError:
        logger.warning(
            "PyTorch is not installed, so no peer is timed; install its CPU build "
            "with `%s` (a plain `pip install torch` on Linux x86-64 also installs "
            "the CUDA libraries, several GB), or pass --no-peer to time mochac "
            "alone",
            TORCH_CPU_INSTALL,
        )
        return {}
    from mochac.bench.torch_peer import ZERO_GRAD_SET_TO_NONE, TorchNet

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
            compile_seconds[name] = time.perf_counter() - start
        versions[name] = torch.__version__
        peer_threads[name] = torch.get_num_threads()

        # This forward keeps autograd on, unlike the GPU bench's. The
        # backward measure is forward_backward minus forward, so a forward
        # under no_grad would move building autograd's graph into backward.
        def forward(loss=loss, peer=peer):
            loss(peer.x, peer.y)

        # Gradients are cleared as in the training step, so backward writes
        # them afresh, as mochac's backward pass does, instead of adding.
        def both(loss=loss, peer=peer):
            peer.optimizer.zero_grad(set_to_none=ZERO_GRAD_SET_TO_NONE)
            loss(peer.x, peer.y).backward()

        def train(loss=loss, peer=peer):
            peer.train_step(loss)

        measures = {
            "forward": (forward, iters),
            "forward_backward": (both, iters),
            "train": (train, iters),
        }
        if inference and mode is None:
            single = peer.x[:1].clone()

            def infer(peer=peer):
                with torch.inference_mode():
                    peer.outputs(peer.x)

            def latency(peer=peer, single=single):
                with torch.inference_mode():
                    peer.outputs(single)

            measures["infer"] = (infer, iters)
            measures["latency"] = (latency, LATENCY_CALLS * iters)
        peers[name] = measures
    return peers


def noisy_timings(rows: list[tuple[str, dict]]) -> list[str]:
    """Return the timings whose median is not positive or is below their spread."""
    noisy = []
    for name, measures in rows:
        for measure in ("forward", "backward", "train", "infer", "latency"):
            values = measures.get(measure)
            if values is None:
                continue
            if values["median_ms"] <= 0 or values["spread_ms"] > values["median_ms"]:
                noisy.append(f"{name} {measure}")
    return noisy


def format_bench(report: dict) -> str:
    """Return the report as a table: one line per framework and measure."""
    settings = report["environment"]
    line = f"mochac {settings['mochac']}"
    for name, measures in report["peers"].items():
        line += f", {name} {measures['version']} on {measures['threads']} thread(s)"
    lines = [
        (
            f"batch {report['batch']}, {report['threads']} thread(s), median of "
            f"{report['mochac']['train']['rounds']} rounds of {report['iters']} "
            "iterations"
        ),
        (
            f"{line}; CPU {settings['cpu']}, OPENBLAS_CORETYPE "
            f"{settings['openblas_coretype']}"
        ),
        f"{'':14} {'forward ms':>11} {'backward ms':>12} {'train ms':>9} {'train it/s':>11}",
    ]
    rows = [("mochac", report["mochac"])] + list(report["peers"].items())
    for name, measures in rows:
        train = measures["train"]["median_ms"]
        lines.append(
            f"{name:14} {measures['forward']['median_ms']:11.2f} "
            f"{measures['backward']['median_ms']:12.2f} {train:9.2f} {1e3 / train:11.1f}"
        )
    noisy = noisy_timings(rows)
    if noisy:
        lines.append(
            f"note: the rounds of {', '.join(noisy)} vary by more than their median, "
            "so these times are mostly noise (a negative backward time is such "
            "noise); rerun with more --iters and --repeats on cores that no other "
            "program uses"
        )
    for name, measures in report["peers"].items():
        lines.append(
            f"mochac speed-up over {name}: forward "
            f"{measures['forward']['speedup_of_mochac']:.2f}x, train "
            f"{measures['train']['speedup_of_mochac']:.2f}x"
        )
    mochac = report["mochac"]
    if "infer" in mochac:
        eager = report["peers"].get("torch_eager", {})
        infer_ms, latency_ms = (
            mochac["infer"]["median_ms"],
            mochac["latency"]["median_ms"],
        )
        line = (
            f"inference, batch {report['batch']}: mochac {infer_ms:.2f} ms "
            f"({1e3 * report['batch'] / infer_ms:,.0f} images/s)"
        )
        if "infer" in eager:
            line += (
                f", torch_eager {eager['infer']['median_ms']:.2f} ms: "
                f"{eager['infer']['speedup_of_mochac']:.2f}x"
            )
        lines.append(line)
        line = f"latency, batch 1: mochac {latency_ms:.3f} ms"
        if "latency" in eager:
            eager_ms = eager["latency"]["median_ms"]
            line += (
                f", torch_eager {eager_ms:.3f} ms: mochac takes "
                f"{latency_ms / eager_ms:.2f} of eager's time"
            )
        lines.append(line)
    blas = report["blas"]
    line = (
        f"BLAS alone on the {blas['gemms_per_iteration']} GEMMs of an iteration: "
        f"{blas['gemm_ms']:.2f} ms, {100 * blas['share_of_train']:.0f}% of mochac's "
        "training iteration"
    )
    if blas.get("direct_convolution_gemms"):
        line += (
            f" (mochac runs {blas['direct_convolution_gemms']} of them as direct "
            "convolution code)"
        )
    lines.append(line)
    compile_times = report["compile"]
    lines.append(
        f"compile: {compile_times['cold_s']:.2f} s cold, {compile_times['warm_s']:.2f} s warm"
    )
    return "\n".join(lines)
