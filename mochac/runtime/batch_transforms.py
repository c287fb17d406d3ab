"""Applying a data layer's transformers (mochac.transformers) to its batches."""

from __future__ import annotations

import numpy as np


def prepare_transformers(layer, shapes, dtype) -> list[list]:
    """Return, per top, the functions that apply the layer's transformers in place.

    ``shapes`` are the batch shapes of the tops. Raises DataError when a
    transformer does not fit its top (a mean of the wrong shape).
    """
    per_top = [[] for _ in layer.tops]
    for top, transformer in getattr(layer, "transformers", ()):
        index = layer.tops.index(top)
        where = f"{layer.title}: top '{top}'"
        per_top[index].append(transformer.prepare(shapes[index][1:], dtype, where))
    return per_top


def apply_transformers(transforms: list[list], batches: list[np.ndarray]):
    for functions, batch in zip(transforms, batches):
        for function in functions:
            function(batch)
