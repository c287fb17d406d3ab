"""ChannelPoolingLayer: 1-D max or mean pooling along one dimension."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mochac.layers._checks import check_int
from mochac.layers.base import Layer, channel_axis
from mochac.layers.pooling import MaxPooling, MeanPooling
from mochac.values import as_int


def channel_pool_output_size(size: int, kernel: int, stride: int, pad) -> int:
    """Return the number of windows along the pooled axis, rounding up.

    As in PoolingLayer, a last window that would start past the input and its
    front pad is dropped, so every window overlaps the input.
    """
    front, back = pad
    out = math.ceil((size + front + back - kernel) / stride) + 1
    if (out - 1) * stride >= size + front:
        out -= 1
    return out


@dataclass(frozen=True, kw_only=True, eq=False)
class ChannelPoolingLayer(Layer):
    """Pools each bottom along ``channel_dim`` with a 1-D window.

    Fields (Mocha's defaults):
        channel_dim: Mocha's dimension, counted in column-major order; the
            default -2 is the channel axis (NumPy axis 1).
        kernel: window length, default 1.
        stride: step between windows, default 1.
        pad: (front, back) padding, default (0, 0); an int pads both ends.
            Each must be smaller than the kernel.
        pooling: Pooling.Max() (default) or Pooling.Mean(). The mean divides
            by the window clipped to the padded extent, as PoolingLayer does.

    Bottoms may have different shapes; each gives the top at its index.
    """

    channel_dim: int = -2
    kernel: int = 1
    stride: int = 1
    pad: tuple[int, int] | int = (0, 0)
    pooling: MaxPooling | MeanPooling = field(default_factory=MaxPooling)

    can_do_bp = True

    def backward_reads_bottom_data(self):
        return False

    def backward_reads_top_data(self):
        return False

    def validate(self):
        check_int(self, "channel_dim", minimum=None)
        check_int(self, "kernel")
        check_int(self, "stride")
        front, back = self.pad_pair
        if front >= self.kernel or back >= self.kernel:
            self._fail("pad", self.pad, f"values smaller than kernel={self.kernel}")
        if not isinstance(self.pooling, (MaxPooling, MeanPooling)):
            self._fail("pooling", self.pooling, "Pooling.Max() or Pooling.Mean()")

    @property
    def pad_pair(self) -> tuple[int, int]:
        """The (front, back) padding."""
        pad = self.pad
        if as_int(pad) is not None:
            pad = (pad, pad)
        expected = "an int or a (front, back) pair of ints >= 0"
        if not isinstance(pad, (tuple, list)) or len(pad) != 2:
            self._fail("pad", self.pad, expected)
        values = tuple(as_int(item) for item in pad)
        if any(item is None or item < 0 for item in values):
            self._fail("pad", self.pad, expected)
        return values

    def axis(self, ndim: int) -> int:
        """Return the NumPy axis pooled for blobs of ``ndim`` dimensions."""
        return channel_axis(self, self.channel_dim, ndim)

    def infer_shapes(self, bottom_shapes):
        front, back = self.pad_pair
        tops = []
        for index, shape in enumerate(bottom_shapes):
            axis = self.axis(len(shape))
            size = shape[axis]
            if size + front + back < self.kernel:
                raise self.shape_error(
                    f"kernel={self.kernel} is longer than the padded length "
                    f"{size + front + back} of bottom '{self.bottoms[index]}' along "
                    f"channel_dim={self.channel_dim}; use a smaller kernel"
                )
            out = channel_pool_output_size(
                size, self.kernel, self.stride, (front, back)
            )
            tops.append(shape[:axis] + (out,) + shape[axis + 1 :])
        return tops
