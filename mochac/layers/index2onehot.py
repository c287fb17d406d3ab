"""Index2OnehotLayer: class indices to one-hot vectors."""

from __future__ import annotations

from dataclasses import dataclass

from mochac.layers._checks import check_int
from mochac.layers.base import Layer, channel_axis


@dataclass(frozen=True, kw_only=True, eq=False)
class Index2OnehotLayer(Layer):
    """A layer that replaces each class index j in 0..n_class-1 by a vector of n_class
    zeros with a 1 at position j.

    Fields (Mocha's defaults):
        dim: the axis to expand, in Mocha's column-major numbering; default
            -2, the channel axis (NumPy axis 1). Each bottom must have size 1
            on it, and the top has size n_class there.
        n_class: number of classes (required).

    Each bottom gives the top at its index; the bottoms may differ in shape.
    A value that is not an integer in 0..n_class-1 stops the forward pass
    with a DataError naming the layer, the blob, the value and its sample.
    """

    dim: int = -2
    n_class: int = 0

    def validate(self):
        check_int(
            self, "dim", minimum=None, expected="an int such as -2 (the channel axis)"
        )
        check_int(self, "n_class")

    def expanded_axis(self, shape) -> int:
        """Return the NumPy axis of ``dim`` in a blob of ``shape``."""
        return channel_axis(self, self.dim, len(shape))

    def infer_shapes(self, bottom_shapes):
        tops = []
        for bottom, shape in zip(self.bottoms, bottom_shapes):
            axis = self.expanded_axis(shape)
            if shape[axis] != 1:
                raise self.shape_error(
                    f"bottom '{bottom}' has shape {shape}, size {shape[axis]} on "
                    f"dim={self.dim}; the class indices need size 1 there"
                )
            tops.append(shape[:axis] + (self.n_class,) + shape[axis + 1 :])
        return tops
