"""Lowering of ConcatLayer: each bottom is a run of rows copied into the top."""

from __future__ import annotations

from math import prod

from mochac.codegen.lowering import accumulates, blob_slots, register_lowering
from mochac.layers.concat import ConcatLayer


@register_lowering(ConcatLayer, "concat")
def lower_concat(info, ir, slots):
    # Seen as (outer, length along dim, inner), every bottom contributes a
    # chunk of length * inner contiguous elements to each of the top's outer
    # rows, at an offset that grows with the bottoms before it.
    layer: ConcatLayer = info.layer
    top_shape = info.top_shapes[0]
    axis = layer.axis(len(top_shape))
    outer = prod(top_shape[:axis])
    inner = prod(top_shape[axis + 1 :])
    y, dy = blob_slots(slots, layer.tops[0])
    bottoms, offset = [], 0
    for position, (bottom, shape) in enumerate(zip(layer.bottoms, info.bottom_shapes)):
        x, dx = blob_slots(slots, bottom)
        chunk = shape[axis] * inner
        bottoms.append(
            {
                "x": x,
                "dx": dx if info.propagate_down[position] else None,
                "acc": accumulates(info, position),
                "chunk": chunk,
                "offset": offset,
            }
        )
        offset += chunk
    return {"outer": outer, "row": offset, "y": y, "dy": dy, "bottoms": bottoms}
