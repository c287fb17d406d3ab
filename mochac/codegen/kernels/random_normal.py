"""Lowering of RandomNormalLayer (templates/c/random_normal.c.j2).

Element i of a call with stream state s hashes s + (2i + 1) * golden and
s + (2i + 2) * golden with splitmix64, golden being its 64-bit increment.
The Box-Muller transform turns those two uniform numbers into one normal
sample. Each call advances s past the counters it used.
"""

from __future__ import annotations

from math import prod

import numpy as np

from mochac.codegen.lowering import register_lowering
from mochac.errors import ConfigError
from mochac.layers.random_normal import RandomNormalLayer


@register_lowering(RandomNormalLayer, "random_normal")
def lower_random_normal(info, ir, slots):
    layer: RandomNormalLayer = info.layer
    if np.dtype(layer.eltype) != ir.dtype:
        raise ConfigError(
            f"{layer.title}: eltype={np.dtype(layer.eltype).name} differs from the "
            f"backend's dtype {ir.dtype.name}; every blob of a net has the backend's "
            f"dtype, so set eltype=np.{ir.dtype.name}"
        )
    stream = slots.add("rng", info.name, "stream", np.uint64, (1,))
    tops = []
    offset = 0
    for top, shape in zip(layer.tops, info.top_shapes):
        tops.append(
            {"y": slots.get("data", top).index, "size": prod(shape), "offset": offset}
        )
        offset += prod(shape)
    return {"rng": stream.index, "tops": tops, "total": offset}
