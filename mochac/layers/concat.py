"""ConcatLayer: join blobs along one dimension."""

from __future__ import annotations

from dataclasses import dataclass

from mochac.layers._checks import check_int
from mochac.layers.base import Layer, channel_axis


@dataclass(frozen=True, kw_only=True, eq=False)
class ConcatLayer(Layer):
    """Concatenates the bottoms, in order, along ``dim`` into one top.

    Fields (Mocha's defaults):
        dim: Mocha's dimension, counted in column-major order, default 3: the
            channel axis of a 4-D (N, C, H, W) blob, NumPy axis 1. Negative
            values count from the batch dimension: -1 is axis 0.
        tops: exactly one blob name.

    All bottoms must have the same number of dimensions and the same shape
    except along ``dim``.
    """

    dim: int = 3

    n_tops = (1, 1)
    tops_match_bottoms = False
    can_do_bp = True

    def backward_reads_bottom_data(self):
        return False

    def backward_reads_top_data(self):
        return False

    def validate(self):
        check_int(self, "dim", minimum=None)

    def axis(self, ndim: int) -> int:
        """Return the NumPy axis of ``dim`` for blobs of ``ndim`` dimensions."""
        return channel_axis(self, self.dim, ndim)

    def infer_shapes(self, bottom_shapes):
        first = bottom_shapes[0]
        axis = self.axis(len(first))
        total = 0
        for index, shape in enumerate(bottom_shapes):
            others = shape[:axis] + shape[axis + 1 :]
            expected = first[:axis] + first[axis + 1 :]
            if len(shape) != len(first) or others != expected:
                raise self.shape_error(
                    f"bottom '{self.bottoms[index]}' has shape {shape}, but "
                    f"'{self.bottoms[0]}' has {first}; the shapes may differ only "
                    f"along dim={self.dim} (NumPy axis {axis})"
                )
            total += shape[axis]
        return [first[:axis] + (total,) + first[axis + 1 :]]
