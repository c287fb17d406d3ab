"""ArgmaxLayer: the index of the largest value along one dimension."""

from __future__ import annotations

from dataclasses import dataclass

from mochac.layers._checks import check_int
from mochac.layers.base import Layer, channel_axis


@dataclass(frozen=True, kw_only=True, eq=False)
class ArgmaxLayer(Layer):
    """Writes the index (0-based, as a real number) of each maximum along ``dim``.

    Fields (Mocha's defaults):
        dim: Mocha's dimension, counted in column-major order; the default -2
            is the channel axis (NumPy axis 1).

    Each top has its bottom's shape with ``dim`` reduced to 1; ties go to the
    first index. Bottoms may have different shapes. The layer cannot
    back-propagate, so it belongs in test nets that output predicted classes.
    """

    dim: int = -2

    def validate(self):
        check_int(self, "dim", minimum=None)

    def infer_shapes(self, bottom_shapes):
        tops = []
        for shape in bottom_shapes:
            axis = channel_axis(self, self.dim, len(shape))
            tops.append(shape[:axis] + (1,) + shape[axis + 1 :])
        return tops
