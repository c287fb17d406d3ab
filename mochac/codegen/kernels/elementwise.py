"""Lowering of ElementWiseLayer: one loop over the elements of every bottom."""

from __future__ import annotations

from math import prod

from mochac.codegen.lowering import accumulates, blob_slots, register_lowering
from mochac.layers.elementwise import (
    ElementWiseAdd,
    ElementWiseDivide,
    ElementWiseLayer,
    ElementWiseMultiply,
    ElementWiseSubtract,
)

OPERATION_NAMES = {
    ElementWiseAdd: "add",
    ElementWiseSubtract: "subtract",
    ElementWiseMultiply: "multiply",
    ElementWiseDivide: "divide",
}


def gradient_expression(operation, position: int, count: int) -> str:
    """Return the C expression of d y / d x<position> times g, the top diff."""
    if isinstance(operation, ElementWiseAdd):
        return "g"
    if isinstance(operation, ElementWiseSubtract):
        return "g" if position == 0 else "-g"
    if isinstance(operation, ElementWiseMultiply):
        others = [f"x{other}[i]" for other in range(count) if other != position]
        return " * ".join(["g", *others])
    # Divide: y = x0 / x1.
    if position == 0:
        return "g / x1[i]"
    return "-g * x0[i] / (x1[i] * x1[i])"


@register_lowering(ElementWiseLayer, "elementwise")
def lower_elementwise(info, ir, slots):
    layer: ElementWiseLayer = info.layer
    y, dy = blob_slots(slots, layer.tops[0])
    bottoms = []
    for position, bottom in enumerate(layer.bottoms):
        x, dx = blob_slots(slots, bottom)
        bottoms.append(
            {
                "position": position,
                "x": x,
                "dx": dx if info.propagate_down[position] else None,
                "acc": accumulates(info, position),
                "grad": gradient_expression(
                    layer.operation, position, len(layer.bottoms)
                ),
            }
        )
    return {
        "operation": OPERATION_NAMES[type(layer.operation)],
        "value": f" {layer.operation.symbol} ".join(
            f"x{position}[i]" for position in range(len(layer.bottoms))
        ),
        "reads_bottoms": layer.backward_reads_bottom_data(),
        "size": prod(info.top_shapes[0]),
        "y": y,
        "dy": dy,
        "bottoms": bottoms,
    }
