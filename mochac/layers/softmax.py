"""SoftmaxLayer: normalized exponentials along the channel axis."""

from __future__ import annotations

from dataclasses import dataclass

from mochac.layers._checks import check_int
from mochac.layers.base import Layer, channel_axis


@dataclass(frozen=True, kw_only=True, eq=False)
class SoftmaxLayer(Layer):
    """Softmax of each bottom along ``dim``; tops have the bottoms' shapes.

    Fields:
        dim: Mocha's dimension, counted in column-major order; the default -2
            is the channel axis (NumPy axis 1).

    For training, SoftmaxLossLayer computes softmax and loss together in a
    numerically safer way.
    """

    dim: int = -2

    can_do_bp = True

    inplace_capable = True

    def backward_reads_bottom_data(self):
        return False

    def validate(self):
        check_int(self, "dim", minimum=None)

    def infer_shapes(self, bottom_shapes):
        for shape in bottom_shapes:
            channel_axis(self, self.dim, len(shape))
        return list(bottom_shapes)
