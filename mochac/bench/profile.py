"""Per-layer times of a compiled net and of its PyTorch peer, side by side.

mochac's times come from running one layer's compiled forward or backward
pass on the blobs the last full pass left; PyTorch's from running that
layer's module on a stored input, forward alone and forward with backward
(backward is the difference).
"""

from __future__ import annotations

import statistics
import time


def _median_ms(function, iters: int, repeats: int) -> float:
    function()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            function()
        samples.append(1e3 * (time.perf_counter() - start) / iters)
    return statistics.median(samples)


def profile_mochac(net, iters: int, repeats: int) -> dict[str, dict]:
    """Return {layer: {"forward_ms", "backward_ms"}} for the layers with kernels."""
    net.forward()
    net.backward()
    times = {}
    for kernel in net.kernels:
        info = net.ir.layers[kernel.layer_index]
        entry = {
            "forward_ms": _median_ms(
                lambda name=info.name: net.forward_layer(name), iters, repeats
            )
        }
        if info.in_backward:
            entry["backward_ms"] = _median_ms(
                lambda name=info.name: net.backward_layer(name), iters, repeats
            )
        times[info.name] = entry
    return times


def profile_torch(peer, iters: int, repeats: int) -> dict[str, dict]:
    """Return {layer: {"forward_ms", "backward_ms"}} for the peer's modules."""
    torch = peer.torch
    inputs = {"data": peer.x}
    times = {}
    with torch.no_grad():
        for name, layer, bottom, top, activation in peer.steps:
            if top is None:
                break
            value = inputs[bottom]
            if type(layer).__name__ in ("InnerProductLayer",):
                value = value.flatten(1)
            inputs[(name, "in")] = value
            out = peer.model[name](value)
            if activation is not None:
                out = activation(out)
            inputs[top] = out
    for name, layer, bottom, top, activation in peer.steps:
        if top is None:
            break
        module = peer.model[name]
        source = inputs[(name, "in")]

        def forward(module=module, source=source, activation=activation):
            out = module(source)
            return activation(out) if activation is not None else out

        def forward_backward(forward=forward, source=source):
            x = source.detach().requires_grad_(True)
            out = forward(source=x)
            out.backward(torch.ones_like(out))

        forward_ms = _median_ms(forward, iters, repeats)
        both_ms = _median_ms(forward_backward, iters, repeats)
        times[name] = {
            "forward_ms": forward_ms,
            "backward_ms": max(both_ms - forward_ms, 0.0),
        }
    return times


def format_profile(ours: dict, theirs: dict) -> str:
    """Return a table of per-layer times, mochac beside the peer.

    Without peer times (``--no-peer``, or no PyTorch) the peer columns are
    left out.
    """

    def cell(value, width):
        return f"{value:{width}.3f}" if value is not None else " " * (width - 1) + "-"

    with_peer = bool(theirs)
    header = f"{'layer':12} {'mochac fwd':>11} "
    header += f"{'torch fwd':>10} {'mochac bwd':>11} " if with_peer else "mochac bwd"
    lines = [header + (f"{'torch bwd':>10}" if with_peer else "")]
    for name, entry in ours.items():
        peer = theirs.get(name.replace(".", "_"), {})
        row = f"{name:12} {cell(entry['forward_ms'], 11)} "
        if with_peer:
            row += f"{cell(peer.get('forward_ms'), 10)} "
        row += cell(entry.get("backward_ms"), 11 if with_peer else 10)
        if with_peer:
            row += f" {cell(peer.get('backward_ms'), 10)}"
        lines.append(row)
    return "\n".join(lines)
