"""Lowering of ArgmaxLayer: a scan over the classes of every position."""

from __future__ import annotations

from mochac.codegen.lowering import class_split, pair_slots, register_lowering
from mochac.layers.argmax import ArgmaxLayer


@register_lowering(ArgmaxLayer, "argmax")
def lower_argmax(info, ir, slots):
    pairs = pair_slots(info, slots)
    for pair, shape in zip(pairs, info.bottom_shapes):
        pair["outer"], pair["C"], pair["inner"] = class_split(info.layer, shape)
    return {"pairs": pairs}
