"""Lowering of ChannelPoolingLayer: windows along one axis of (outer, C, inner)."""

from __future__ import annotations

from math import prod

import numpy as np

from mochac.codegen.lowering import pair_slots, register_lowering
from mochac.layers.channel_pooling import ChannelPoolingLayer
from mochac.layers.pooling import MaxPooling


@register_lowering(ChannelPoolingLayer, "channel_pooling")
def lower_channel_pooling(info, ir, slots):
    layer: ChannelPoolingLayer = info.layer
    is_max = isinstance(layer.pooling, MaxPooling)
    front, back = layer.pad_pair
    pairs = pair_slots(info, slots)
    for position, (pair, bottom, top) in enumerate(
        zip(pairs, info.bottom_shapes, info.top_shapes)
    ):
        axis = layer.axis(len(bottom))
        pair.update(
            outer=prod(bottom[:axis]),
            C=bottom[axis],
            OC=top[axis],
            inner=prod(bottom[axis + 1 :]),
        )
        if is_max and info.in_backward:
            # The index along the axis of each window's maximum, for backward.
            mask = slots.add("work", info.name, f"argmax{position}", np.int32, top)
            pair["mask"] = mask.index
        else:
            pair["mask"] = None
    return {
        "K": layer.kernel,
        "S": layer.stride,
        "PF": front,
        "PB": back,
        "is_max": is_max,
        "pairs": pairs,
    }
