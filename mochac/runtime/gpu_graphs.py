"""CUDA graphs of a GPU net's training step.

A LeNet training step is about thirty kernel launches and GEMMs, each
costing microseconds of Python and driver time. GPUNet captures the whole
step (status reset, forward, loss check, backward, and the update before
or after them) once into a CUDA graph with CuPy's stream capture, then replays it with one launch per
iteration. What changes between iterations stays out of the graph: the
batch arrives by copies into the same device buffers, and the learning
rate and momentum are written to the step block before each replay.

A graph fixes the arguments of every launch, so there is one graph per
kind of step (train_step, solver_step, forward_backward), per number of
valid samples in the batch (the last batch of an epoch may have fewer)
and per set of update tables. The first step of each kind runs
without a graph, so cuBLAS and CuPy allocate what they need outside the
capture. If capturing fails (an older CuPy without stream capture, or a
call that cannot be captured), the net logs the error once and launches
step by step from then on.

NOTE: unverified on a GPU. The capture and replay have run only against
the host stand-in of tests/host_cupy.py, which records the captured calls
and replays them in order.

CuPy's cuBLAS wrapper (cupy_backends/cuda/libs/cublas.pyx) raises
NotImplementedError for a call on a capturing stream, so GPUNet calls
libcublas directly (mochac.runtime.cublas_direct). Where it cannot, the
capture of a step with a GEMM (any InnerProduct, TiedInnerProduct or
Convolution layer) fails at its first GEMM, and the net logs the warning
and trains step by step.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


class StepGraphs:
    """The captured steps of one GPUNet, keyed by (kind, tables, n_valid)."""

    def __init__(self, net, enabled: bool):
        self.net = net
        self.enabled = enabled
        self.graphs: dict[tuple[str, int, int], object] = {}
        self.tables = None
        self.warm: set[tuple[str, int, int]] = set()

    def run(self, tables, calls, n_valid: int, kind: str = "train") -> None:
        """Enqueue one step of ``kind`` (GPUNet._step_calls): a graph replay
        when one is captured or can be, else the calls one by one."""
        net = self.net
        if tables is not self.tables:
            # New tables point at other arrays: the old graphs are stale.
            self.graphs.clear()
            self.warm.clear()
            self.tables = tables
        key = (kind, id(tables), n_valid)
        graph = self.graphs.get(key)
        if graph is None and self.enabled and key in self.warm:
            graph = self._capture(calls, n_valid)
            if graph is not None:
                self.graphs[key] = graph
        if graph is None:
            net._enqueue(calls, n_valid)
            self.warm.add(key)
            return
        with net.cupy.cuda.Device(net.backend.device):
            graph.launch(stream=net.stream)

    def _capture(self, calls, n_valid: int):
        """Return the graph of ``calls``, or None (graphs then stay off).

        The capture runs on the net's non-blocking capture stream, with the
        cuBLAS handle bound to it meanwhile, so that work other threads put
        on CuPy's default stream neither fails nor invalidates the capture.
        """
        net = self.net
        stream = net.capture_stream
        begin = getattr(stream, "begin_capture", None)
        if begin is None:
            self._disable("this CuPy has no stream capture")
            return None
        try:
            with net.cupy.cuda.Device(net.backend.device):
                if net.cublas is not None:
                    net.cublas.set_stream(stream.ptr)
                try:
                    begin()
                    try:
                        net._enqueue(calls, n_valid, stream)
                    finally:
                        graph = stream.end_capture()
                finally:
                    if net.cublas is not None:
                        net.cublas.set_stream(net.stream.ptr)
        except Exception as error:  # noqa: BLE001 - any failure means no graph
            self._disable(f"capture failed: {type(error).__name__}: {error}")
            return None
        return graph

    def _disable(self, reason: str) -> None:
        self.enabled = False
        logger.warning(
            "net '%s': training steps run without CUDA graphs (%s)",
            self.net.name,
            reason,
        )
