"""Timing of a net on the CUDA backend and of its PyTorch peer on the same GPU.

The measures follow mochac.bench.runner: forward, a training iteration
(data, forward, backward, SGD update) and, for inference, the net without
its loss at the batch size and at batch 1. Every timed call waits for the
device before the clock stops. After the untimed calls, the rounds
alternate measure by measure: round k of mochac, then round k of the peer
(runner.interleaved_rounds), so a change in the GPU's clocks during the run
reaches both.

NOTE: no GPU was available where this was written: this runner has only been
run to the point where GPUBackend reports that no device is usable.
"""

from __future__ import annotations

import logging

import numpy as np

from mochac.bench.runner import (
    LATENCY_CALLS,
    check_batch,
    inference_layers,
    interleaved_rounds,
    summary,
)
from mochac.runtime.gpu_backend import GPUBackend
from mochac.runtime.net import Net
from mochac.runtime.solver import SGD

logger = logging.getLogger(__name__)

# Untimed calls of each measure before the rounds. A net's first training
# step runs call by call and its second captures the CUDA graph that later
# steps replay (mochac.runtime.gpu_graphs), and PyTorch's first steps create
# the optimizer's momentum buffers and pick cuDNN's algorithms. None of that
# belongs in the timed rounds.
WARMUP_CALLS = 3

MEASURES = ("forward", "train", "infer", "latency")

# The autograd mode of each of the peer's measures. mochac's forward pass
# builds no autograd graph, because its backward pass is compiled ahead, so
# the peer's forward runs under no_grad. Its inference runs under
# inference_mode, as on the CPU bench.
PEER_GRAD_MODES = {
    "forward": "no_grad",
    "train": "enable_grad",
    "infer": "inference_mode",
    "latency": "inference_mode",
}


def bench_gpu(
    layers_factory, batch=64, iters=20, repeats=5, opt_level=1, peer=True, disable=()
):
    """Time a net built by ``layers_factory(batch)`` on the GPU; return a report.

    Raises DeviceError when CuPy or a CUDA device is missing.
    """
    ours, net = mochac_gpu_measures(layers_factory, batch, iters, opt_level, disable)
    participants = {"mochac": ours}
    peer_details = {}
    if peer:
        peer_measures, peer_details = torch_cuda_measures(net, iters)
        participants.update(peer_measures)
    # Measure by measure, each participant's round in turn.
    functions = {
        (name, measure): participants[name][measure]
        for measure in MEASURES
        for name in participants
    }
    samples = interleaved_rounds(functions, repeats, warmup_calls=WARMUP_CALLS)
    results = {
        name: {measure: summary(samples[(name, measure)]) for measure in MEASURES}
        for name in participants
    }
    report = {
        "backend": "cuda",
        "batch": batch,
        "iters": iters,
        "opt_level": opt_level,
        "disable": list(disable),
        "warmup_calls": WARMUP_CALLS,
        # Round k of mochac and of the peer run one after the other.
        "interleaved_rounds": True,
        "mochac": results.pop("mochac"),
        "peers": results,
        # Whether the timed training steps replayed CUDA graphs.
        "cuda_graphs": bool(net.graphs.enabled and net.graphs.graphs),
    }
    for name, details in peer_details.items():
        report["peers"][name].update(details)
    for measures in report["peers"].values():
        for measure in MEASURES:
            ours_ms = report["mochac"][measure]["median_ms"]
            measures[measure]["speedup_of_mochac"] = (
                measures[measure]["median_ms"] / ours_ms
            )
    return report


def mochac_gpu_measures(layers_factory, batch, iters, opt_level, disable=()):
    """Return {measure: (function, calls)} for mochac on the GPU, and the train net."""
    backend = GPUBackend(seed=0)
    net = Net(
        "bench-gpu",
        backend,
        layers_factory(batch),
        opt_level=opt_level,
        disable=disable,
    )
    check_batch(net, batch)
    method = SGD()
    # The forward measure runs on a net of its own: a forward pass drops the
    # train net's read-ahead batch, so the train rounds interleaved with it
    # would each start with a batch read that no step overlaps.
    forward_net = Net(
        "bench-gpu-forward",
        GPUBackend(seed=0),
        layers_factory(batch),
        opt_level=opt_level,
        disable=disable,
    )

    def forward():
        forward_net.forward()

    def train():
        net.train_step(method, 0.01, 0.9, 0.0005, 0)
        net.synchronize()

    infer_net = Net(
        "bench-gpu-infer",
        GPUBackend(seed=0),
        inference_layers(layers_factory, batch),
        opt_level=opt_level,
        disable=disable,
    )
    single_net = Net(
        "bench-gpu-latency",
        GPUBackend(seed=0),
        inference_layers(layers_factory, 1),
        opt_level=opt_level,
        disable=disable,
    )

    def infer(target):
        def run():
            target.forward()
            target.synchronize()

        return run

    measures = {
        "forward": (forward, iters),
        "train": (train, iters),
        "infer": (infer(infer_net), iters),
        "latency": (infer(single_net), LATENCY_CALLS * iters),
    }
    return measures, net


def torch_cuda_measures(net, iters) -> tuple[dict, dict]:
    """Return the measures and the details of PyTorch eager on the GPU.

    The measures are {"torch_cuda": {measure: (function, calls, context)}}
    and the details {"torch_cuda": {...}}: version, device and settings.
    Both are {} without torch or without CUDA in it.
    """
    try:
        import torch
    except ImportError:
        logger.warning(
            "PyTorch is not installed, so no peer is timed; install a CUDA build "
            "of PyTorch (on Linux x86-64, `pip install torch` installs one), or "
            "pass --no-peer to time mochac alone"
        )
        return {}, {}
    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            logger.warning(
                "PyTorch %s is a CPU build, so no peer is timed on the GPU; "
                "install a CUDA build (on Linux x86-64, `pip install torch` from "
                "PyPI), or pass --no-peer to time mochac alone",
                torch.__version__,
            )
        else:
            logger.warning(
                "PyTorch %s (CUDA %s) finds no CUDA device, so no peer is timed; "
                "check the NVIDIA driver and CUDA_VISIBLE_DEVICES, or pass "
                "--no-peer to time mochac alone",
                torch.__version__,
                torch.version.cuda,
            )
        return {}, {}
    from mochac.bench.torch_peer import ZERO_GRAD_SET_TO_NONE, TorchNet

    peer = TorchNet(net)
    peer.model.cuda()
    peer.x, peer.y = peer.x.cuda(), peer.y.cuda()
    single = peer.x[:1].clone()
    feed = HostBatches(torch, net, peer.x, peer.y, single)

    def timed(function):
        def run():
            function()
            torch.cuda.synchronize()

        return run

    def forward():
        feed.next_batch()
        peer.loss(peer.x, peer.y)

    def train():
        feed.next_batch()
        peer.train_step(peer.loss)

    def infer():
        feed.next_batch()
        peer.outputs(peer.x)

    def latency():
        feed.next_sample()
        peer.outputs(single)

    contexts = {
        "no_grad": torch.no_grad,
        "enable_grad": torch.enable_grad,
        "inference_mode": torch.inference_mode,
    }
    functions = {
        "forward": (forward, iters),
        "train": (train, iters),
        "infer": (infer, iters),
        "latency": (latency, LATENCY_CALLS * iters),
    }
    measures = {
        measure: (timed(function), calls, contexts[PEER_GRAD_MODES[measure]])
        for measure, (function, calls) in functions.items()
    }
    details = {
        "version": torch.__version__,
        "device": torch.cuda.get_device_name(),
        "settings": torch_cuda_settings(torch),
        "grad_modes": dict(PEER_GRAD_MODES),
        "zero_grad_set_to_none": ZERO_GRAD_SET_TO_NONE,
        "batches_from_pinned_host_memory": True,
    }
    return {"torch_cuda": measures}, {"torch_cuda": details}


class HostBatches:
    """The net's data in pinned host memory, copied into the peer's input
    tensors one batch per call.

    mochac's nets read every batch from their data layer on the host and
    copy it to the device, so each timed call of the peer copies its batch
    too, as a PyTorch loader with pin_memory=True feeds a GPU model.
    """

    def __init__(self, torch, net, images, labels, single):
        source = next(iter(net.sources.values()))
        self.images = torch.from_numpy(np.ascontiguousarray(source.arrays[0]))
        self.images = self.images.pin_memory()
        labels_host = source.arrays[1].reshape(-1).astype(np.int64)
        self.labels = torch.from_numpy(labels_host).pin_memory()
        self.batch = len(images)
        # With fewer samples than one batch, every call copies them all.
        self.batch_count = max(1, len(self.images) // self.batch)
        self.position = 0
        self.targets = (images, labels, single)

    def _start(self) -> int:
        start = self.position * self.batch
        self.position = (self.position + 1) % self.batch_count
        return start

    def next_batch(self) -> None:
        """Enqueue copying the next batch into the images and labels."""
        images, labels, _ = self.targets
        start = self._start()
        images.copy_(self.images[start : start + self.batch], non_blocking=True)
        labels.copy_(self.labels[start : start + self.batch], non_blocking=True)

    def next_sample(self) -> None:
        """Enqueue copying the first image of the next batch into ``single``."""
        start = self._start()
        self.targets[2].copy_(self.images[start : start + 1], non_blocking=True)


def torch_cuda_settings(torch) -> dict:
    """Return the PyTorch settings that change its float32 speed on the GPU.

    The bench leaves them as the process found them. PyTorch's defaults
    (read in 2.13) let cuDNN run float32 convolutions in TF32 on Ampere and
    newer GPUs, keep matrix products in full float32 and leave
    cudnn.benchmark off. mochac's GEMMs stay full float32, because they call
    cublasSgemm in cuBLAS's default math mode.
    """
    backends = torch.backends
    return {
        "cudnn_allow_tf32": bool(backends.cudnn.allow_tf32),
        "matmul_allow_tf32": bool(backends.cuda.matmul.allow_tf32),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_benchmark": bool(backends.cudnn.benchmark),
        "cudnn_deterministic": bool(backends.cudnn.deterministic),
    }


def format_torch_settings(name: str, measures: dict) -> list[str]:
    """Return the lines naming a GPU peer's version, device, TF32 settings,
    autograd modes and gradient clearing."""
    settings = measures["settings"]
    modes = measures["grad_modes"]

    def on_off(flag):
        return "on" if flag else "off"

    clearing = "set_to_none=True" if measures["zero_grad_set_to_none"] else "in place"
    return [
        (
            f"{name}: PyTorch {measures['version']} on {measures['device']}, TF32 "
            f"convolutions {on_off(settings['cudnn_allow_tf32'])}, TF32 matmuls "
            f"{on_off(settings['matmul_allow_tf32'])}, cudnn.benchmark "
            f"{on_off(settings['cudnn_benchmark'])}"
        ),
        (
            f"{name}: forward under torch.{modes['forward']}(), train under "
            f"torch.{modes['train']}() with zero_grad({clearing}), infer and batch-1 "
            f"under torch.{modes['infer']}(), batches copied from pinned host memory"
        ),
    ]


def format_gpu_bench(report: dict) -> str:
    """Return the GPU report as a table, one line per framework."""
    graphs = "with" if report.get("cuda_graphs") else "without"
    lines = [
        (
            f"CUDA backend, batch {report['batch']}, median of "
            f"{report['mochac']['train']['rounds']} interleaved rounds of "
            f"{report['iters']} iterations after {report['warmup_calls']} untimed "
            f"calls, training steps {graphs} CUDA graphs"
        ),
        (
            f"{'':12} {'forward ms':>11} {'train ms':>9} {'train it/s':>11} "
            f"{'infer ms':>9} {'batch-1 ms':>11}"
        ),
    ]
    rows = [("mochac", report["mochac"])] + list(report["peers"].items())
    for name, measures in rows:
        train = measures["train"]["median_ms"]
        lines.append(
            f"{name:12} {measures['forward']['median_ms']:11.3f} {train:9.3f} "
            f"{1e3 / train:11.1f} {measures['infer']['median_ms']:9.3f} "
            f"{measures['latency']['median_ms']:11.4f}"
        )
    for name, measures in report["peers"].items():
        lines.extend(format_torch_settings(name, measures))
        lines.append(
            f"mochac speed-up over {name}: train "
            f"{measures['train']['speedup_of_mochac']:.2f}x, inference "
            f"{measures['infer']['speedup_of_mochac']:.2f}x"
        )
    return "\n".join(lines)
