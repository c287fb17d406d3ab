"""PoolingLayer: max or mean pooling over the spatial axes of (N, C, H, W) blobs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mochac.layers._checks import check_instance
from mochac.layers.base import Layer, to_pair
from mochac.neurons import Identity, Neuron


@dataclass(frozen=True)
class MaxPooling:
    """Take the maximum of each window; ties go to the first element."""


@dataclass(frozen=True)
class MeanPooling:
    """Average each window, dividing by the window size clipped to the padded input."""


class Pooling:
    """Mocha's names for the pooling functions: ``Pooling.Max()``, ``Pooling.Mean()``."""

    Max = MaxPooling
    Mean = MeanPooling


def pool_output_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """Return the output length along one axis, rounding up as Caffe and Mocha do.

    Rounding up can place the last window wholly past the input: in the right
    pad, or beyond an unpadded input when the stride exceeds the kernel. That
    window is dropped so that every window starts inside the input or its left
    pad. Mocha's pooling.jl drops it only when pad > 0, leaving an empty window.
    """
    out = math.ceil((size + 2 * pad - kernel) / stride) + 1
    if (out - 1) * stride >= size + pad:
        out -= 1
    return out


@dataclass(frozen=True, kw_only=True, eq=False)
class PoolingLayer(Layer):
    """Pooling over height and width, channel by channel.

    Fields (Mocha's defaults):
        kernel: window (width, height), default (1, 1).
        stride: (width, height) step, default (1, 1).
        pad: (width, height) padding on both sides, default (0, 0).
        pooling: Pooling.Max() (default) or Pooling.Mean().
        neuron: activation of every top, applied after pooling, default
            Neurons.Identity().

    Bottoms may have different shapes; each gives the top at its index.
    """

    kernel: tuple[int, int] | int = (1, 1)
    stride: tuple[int, int] | int = (1, 1)
    pad: tuple[int, int] | int = (0, 0)
    pooling: MaxPooling | MeanPooling = field(default_factory=MaxPooling)
    neuron: Neuron = field(default_factory=Identity)

    has_neuron = True
    can_do_bp = True

    def backward_reads_bottom_data(self):
        # Max pooling keeps the argmax positions; mean pooling needs no data.
        return False

    def backward_reads_top_data(self):
        # The neuron's derivative is computed from the output.
        return not self.neuron.is_identity

    def validate(self):
        (kh, kw), _, (ph, pw) = self.kernel_hw, self.stride_hw, self.pad_hw
        if ph >= kh or pw >= kw:
            self._fail("pad", self.pad, f"values smaller than kernel={self.kernel}")
        if not isinstance(self.pooling, (MaxPooling, MeanPooling)):
            self._fail("pooling", self.pooling, "Pooling.Max() or Pooling.Mean()")
        check_instance(self, "neuron", Neuron, "a neuron such as Neurons.ReLU()")

    @property
    def kernel_hw(self) -> tuple[int, int]:
        return to_pair(self, "kernel", self.kernel, 1)

    @property
    def stride_hw(self) -> tuple[int, int]:
        return to_pair(self, "stride", self.stride, 1)

    @property
    def pad_hw(self) -> tuple[int, int]:
        return to_pair(self, "pad", self.pad, 0)

    def infer_shapes(self, bottom_shapes):
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_hw, self.stride_hw, self.pad_hw
        tops = []
        for index, shape in enumerate(bottom_shapes):
            if len(shape) != 4:
                raise self.shape_error(
                    f"bottom '{self.bottoms[index]}' has shape {shape}; "
                    "expected a 4-D (N, C, H, W) blob"
                )
            n, channels, height, width = shape
            if height + 2 * ph < kh or width + 2 * pw < kw:
                raise self.shape_error(
                    f"kernel (width, height)=({kw}, {kh}) is larger than the padded "
                    f"{width}x{height} input of bottom '{self.bottoms[index]}'; use a "
                    "smaller kernel or more padding"
                )
            out_h = pool_output_size(height, kh, sh, ph)
            out_w = pool_output_size(width, kw, sw, pw)
            tops.append((n, channels, out_h, out_w))
        return tops
