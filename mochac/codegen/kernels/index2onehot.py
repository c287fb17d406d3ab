"""Lowering of Index2OnehotLayer (templates/c/index2onehot.c.j2)."""

from __future__ import annotations

from math import prod

from mochac.codegen.lowering import register_lowering
from mochac.layers.index2onehot import Index2OnehotLayer


@register_lowering(Index2OnehotLayer, "index2onehot")
def lower_index2onehot(info, ir, slots):
    layer: Index2OnehotLayer = info.layer
    pairs = []
    offset = 0
    for bottom, top, shape in zip(layer.bottoms, layer.tops, info.bottom_shapes):
        axis = layer.expanded_axis(shape)
        size = prod(shape)
        pairs.append(
            {
                "x": slots.get("data", bottom).index,
                "y": slots.get("data", top).index,
                "outer": prod(shape[:axis]),
                "inner": prod(shape[axis + 1 :]),
                "size": size,
                # A rejected index is reported by its position counted across
                # all bottoms, so the runtime can name the blob.
                "offset": offset,
            }
        )
        offset += size
    # What Net needs to describe a rejected index: where each bottom starts in
    # that count and how many of its elements make one sample.
    checked = [
        {
            "start": pair["offset"],
            "position": position,
            "per_sample": pair["size"] // shape[0],
        }
        for position, (pair, shape) in enumerate(zip(pairs, info.bottom_shapes))
    ]
    return {
        "C": layer.n_class,
        "layer_index": info.index,
        "pairs": pairs,
        "checked_bottoms": checked,
        "checked_role": "class index",
        "checked_role_plural": "class indices",
        "valid_values": f"integers in 0..{layer.n_class - 1}",
    }
