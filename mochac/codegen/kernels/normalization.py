"""Lowering of LRNLayer (templates/c/lrn.c.j2)."""

from __future__ import annotations

from math import prod

from mochac.codegen.lowering import accumulates, blob_slots, register_lowering
from mochac.layers.normalization import LRNLayer, WithinChannelLRN


def inverse_power(power: float, name: str) -> str:
    """Return C for ``name`` ** (-power) in double, without pow() for common powers."""
    if power == 0.75:
        return f"(1.0 / sqrt({name} * sqrt({name})))"
    if power == 0.5:
        return f"(1.0 / sqrt({name}))"
    if power == 1.0:
        return f"(1.0 / {name})"
    return f"pow({name}, {-power!r})"


@register_lowering(LRNLayer, "lrn")
def lower_lrn(info, ir, slots):
    layer: LRNLayer = info.layer
    shape = info.bottom_shapes[0]
    x, dx = blob_slots(slots, layer.bottoms[0])
    y, dy = blob_slots(slots, layer.tops[0])
    # The window around position i is [i - before, i + after]; backward sums
    # over the mirrored window [j - after, j + before].
    before = (layer.kernel - 1) // 2
    after = layer.kernel - 1 - before
    ratio = denominator = scale = None
    if info.in_backward:
        # Forward keeps d and d**(-p) for backward, which then needs no pow().
        denominator = slots.add("work", info.name, "denominator", ir.dtype, shape)
        scale = slots.add("work", info.name, "scale", ir.dtype, shape)
        ratio = slots.add("work", info.name, "ratio", ir.dtype, shape, ("backward",))
    within = isinstance(layer.mode, WithinChannelLRN)
    return {
        "within": within,
        "N": shape[0],
        "C": shape[1],
        # Across channels: positions per channel. Within: planes and their size.
        "inner": prod(shape[2:]),
        "planes": shape[0] * shape[1],
        "H": shape[2] if within else 1,
        "W": shape[3] if within else 1,
        "size": prod(shape),
        "before": before,
        "after": after,
        "shift": repr(float(layer.shift)),
        "scale_over_n": repr(float(layer.scale) / layer.window_size),
        "power": repr(float(layer.power)),
        # d/dx_j of the denominator**(-power) terms: -2 * power * scale / n.
        "gradient_factor": repr(
            2.0 * float(layer.power) * layer.scale / layer.window_size
        ),
        "x": x,
        "y": y,
        "dy": dy,
        "dx": dx if info.propagate_down[0] else None,
        "acc": accumulates(info, 0),
        "denominator": denominator.index if denominator else None,
        "scale": scale.index if scale else None,
        "ratio": ratio.index if ratio else None,
        "inverse_power": inverse_power(float(layer.power), "d"),
    }
