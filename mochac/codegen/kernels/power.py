"""Lowering of PowerLayer: the power as a C expression of v = shift + scale * x."""

from __future__ import annotations

from math import prod

from mochac.codegen.lowering import pair_slots, register_lowering
from mochac.layers.power import PowerLayer


def power_expressions(power: float) -> tuple[str, str]:
    """Return C expressions of v ^ power and of v ^ (power - 1).

    Small integer powers become products, which are faster than pow and
    exact for negative v.
    """
    products = {0: "1", 1: "v", 2: "v * v", 3: "v * v * v"}
    if power in products and power - 1 in products:
        return products[power], products[power - 1]
    if power == 0:
        return "1", "0"
    return f"pow(v, {power!r})", f"pow(v, {power - 1!r})"


@register_lowering(PowerLayer, "power")
def lower_power(info, ir, slots):
    layer: PowerLayer = info.layer
    pairs = pair_slots(info, slots)
    for pair, shape in zip(pairs, info.bottom_shapes):
        pair["size"] = prod(shape)
    value, derivative = power_expressions(float(layer.power))
    return {
        "pairs": pairs,
        "power": float(layer.power),
        "scale": float(layer.scale),
        "shift": float(layer.shift),
        "value": value,
        "derivative": derivative,
        # dx = dy * power * scale * v ^ (power - 1), which is 0 when power is 0.
        "factor": float(layer.power * layer.scale),
        "constant_derivative": not layer.backward_reads_bottom_data(),
    }
