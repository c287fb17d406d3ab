"""Per-layer device times of a net on the CUDA backend.

Each layer's forward and backward steps (kernel launches, cuBLAS GEMMs,
memsets and copies) run on the blobs the last full pass left. They are
enqueued ``iters`` times between two CUDA events on the net's stream, and
the time between the events, divided by ``iters``, is one sample. Launch costs on
the host overlap the device's work unless the layer's kernels are shorter
than their launches, so small layers show the launch rate rather than the
kernels' speed. The median of ``repeats`` samples is reported.

NOTE: no GPU was available where this was written: it has run only on the
host stand-in of CuPy (tests/host_cupy.py).
"""

from __future__ import annotations

import statistics


def profile_gpu(net, iters: int, repeats: int) -> dict[str, dict]:
    """Return {layer: {"forward_ms", "backward_ms"}} for a GPUNet's layers
    with steps, in forward order."""
    cupy = net.cupy
    net.forward()
    net.backward()
    net.synchronize()
    n_valid = net._batch_size()

    def median_ms(calls) -> float:
        samples = []
        with cupy.cuda.Device(net.backend.device):
            # An untimed round first, as the CPU profile does.
            net._enqueue(calls, n_valid)
            for _ in range(repeats):
                start, end = cupy.cuda.Event(), cupy.cuda.Event()
                start.record(net.stream)
                for _ in range(iters):
                    net._enqueue(calls, n_valid)
                end.record(net.stream)
                end.synchronize()
                samples.append(cupy.cuda.get_elapsed_time(start, end) / iters)
        return statistics.median(samples)

    times = {}
    for kernel in net.kernels:
        info = net.ir.layers[kernel.layer_index]
        steps = net.program.layers.get(kernel.layer_index)
        if steps is None or not steps.forward:
            continue
        with cupy.cuda.Device(net.backend.device):
            forward = [net._bind(step) for step in steps.forward]
            backward = [net._bind(step) for step in steps.backward]
        entry = {"forward_ms": median_ms(forward)}
        if info.in_backward and backward:
            entry["backward_ms"] = median_ms(backward)
        times[info.name] = entry
    net.synchronize()
    return times
