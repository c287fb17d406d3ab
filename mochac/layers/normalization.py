"""LRNLayer: local response normalization across channels or within a channel."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mochac.layers._checks import check_int, check_number
from mochac.layers.base import Layer


@dataclass(frozen=True)
class AcrossChannelLRN:
    """Neighbourhood of ``kernel`` channels at the same position (n = kernel)."""


@dataclass(frozen=True)
class WithinChannelLRN:
    """Neighbourhood of kernel x kernel positions in one channel (n = kernel**2)."""


class LRNMode:
    """Mocha's names: ``LRNMode.AcrossChannel()`` and ``LRNMode.WithinChannel()``."""

    AcrossChannel = AcrossChannelLRN
    WithinChannel = WithinChannelLRN


@dataclass(frozen=True, kw_only=True, eq=False)
class LRNLayer(Layer):
    """Local response normalization: y = x / (shift + scale / n * sum x_j**2)**power.

    The sum runs over the neighbourhood of x, x included, with zero padding
    past the edges, and n is the neighbourhood size whether or not it lies
    inside the blob.

    Fields (Mocha's defaults):
        kernel: neighbourhood size k, default 5. An even k reaches one element
            further after x than before it.
        scale: default 1, at least 0; shift: default 1, above 0, so the
            base of the power is positive; power: default 0.75.
        mode: LRNMode.AcrossChannel() (default): the k channels around x, so
            n = k; any blob with a channel axis (NumPy axis 1) works.
            LRNMode.WithinChannel(): the k x k positions around x in its own
            channel, so n = k**2; the blob must be 4-D (N, C, H, W).

    One bottom and one top.
    """

    kernel: int = 5
    scale: float = 1.0
    shift: float = 1.0
    power: float = 0.75
    mode: AcrossChannelLRN | WithinChannelLRN = field(default_factory=AcrossChannelLRN)

    n_bottoms = (1, 1)
    n_tops = (1, 1)
    can_do_bp = True

    def backward_reads_top_data(self):
        # Backward recomputes what it needs from the bottom and the saved
        # denominators.
        return False

    def validate(self):
        check_int(self, "kernel")
        for name in ("scale", "shift", "power"):
            check_number(self, name)
        # shift > 0 and scale >= 0 keep the base of the power positive. A zero
        # base (an all-zero neighbourhood, common after a ReLU, with shift=0)
        # gives 0 / 0 = NaN, and a negative base to a fractional power is NaN.
        if self.shift <= 0:
            self._fail("shift", self.shift, "a number > 0 (Mocha's default is 1)")
        if self.scale < 0:
            self._fail("scale", self.scale, "a number >= 0 (Mocha's default is 1)")
        # The backward pass multiplies by 2 * power * scale, printed as a constant.
        if not math.isfinite(2.0 * self.power * self.scale):
            self._fail(
                "scale",
                self.scale,
                f"a value whose product with power={self.power!r} is finite",
            )
        if not isinstance(self.mode, (AcrossChannelLRN, WithinChannelLRN)):
            self._fail(
                "mode", self.mode, "LRNMode.AcrossChannel() or LRNMode.WithinChannel()"
            )

    @property
    def window_size(self) -> int:
        """n in the formula: the neighbourhood size, padding included."""
        if isinstance(self.mode, WithinChannelLRN):
            return self.kernel * self.kernel
        return self.kernel

    def infer_shapes(self, bottom_shapes):
        shape = bottom_shapes[0]
        if isinstance(self.mode, WithinChannelLRN) and len(shape) != 4:
            raise self.shape_error(
                f"LRNMode.WithinChannel() needs a 4-D (N, C, H, W) bottom, but "
                f"'{self.bottoms[0]}' has shape {shape}; reshape it or use "
                "LRNMode.AcrossChannel()"
            )
        if len(shape) < 2:
            raise self.shape_error(
                f"bottom '{self.bottoms[0]}' has shape {shape}; LRN needs a channel "
                "axis after the batch axis"
            )
        return [shape]
