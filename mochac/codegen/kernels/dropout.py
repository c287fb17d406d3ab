"""Lowering of DropoutLayer and RandomMaskLayer: one counter-based mask.

Element i of the call with stream state s is kept when the splitmix64 hash
of s + (i + 1) * 0x9E3779B97F4A7C15 (the 64-bit golden ratio), taken as a
uniform number in [0, 1), exceeds the ratio.
Each forward call advances s by the number of elements, so the masks do not
depend on the number of threads, and a snapshot of s repeats them.
"""

from __future__ import annotations

from math import floor, prod

import numpy as np

from mochac.codegen.lowering import pair_slots, register_lowering
from mochac.layers.dropout import DropoutLayer, RandomMaskLayer


def lower_masking(info, ir, slots):
    layer = info.layer
    train = ir.phase == "train"
    pairs = pair_slots(info, slots)
    offset = 0
    for position, (pair, shape) in enumerate(zip(pairs, info.bottom_shapes)):
        pair["size"] = prod(shape)
        pair["offset"] = offset
        offset += pair["size"]
        # A pair whose top is stored over its bottom needs no copy in test.
        pair["in_place"] = pair["x"] == pair["y"]
        pair["diff_in_place"] = pair["dx"] is not None and pair["dx"] == pair["dy"]
        if train:
            mask = slots.add("work", info.name, f"mask{position}", np.uint8, shape)
            pair["mask"] = mask.index
    context = {"pairs": pairs, "train": train, "total": offset}
    if train:
        stream = slots.add("rng", info.name, "stream", np.uint64, (1,))
        context.update(
            rng=stream.index,
            ratio=float(layer.ratio),
            scale=float(layer.scale),
            # An element is kept when the top 53 bits of its hash exceed this.
            threshold=floor(layer.ratio * 2**53),
        )
    return context


register_lowering(DropoutLayer, "dropout")(lower_masking)
register_lowering(RandomMaskLayer, "dropout")(lower_masking)
