"""PowerLayer: y = (shift + scale * x) ^ power, element by element."""

from __future__ import annotations

import math
from dataclasses import dataclass

from mochac.errors import ConfigError
from mochac.layers._checks import check_number
from mochac.layers.base import Layer


@dataclass(frozen=True, kw_only=True, eq=False)
class PowerLayer(Layer):
    """Raises ``shift + scale * x`` to ``power`` for every element of each bottom.

    Fields (Mocha's defaults):
        power: the exponent p, default 1.
        scale: the factor a, default 1.
        shift: the offset b, default 0.

    Backward computes dx = dy * p * a * (a * x + b) ^ (p - 1). Bottoms may
    have different shapes; each gives the top at its index. A negative base
    with a non-integer power gives NaN, as C's pow does.
    """

    power: float = 1.0
    scale: float = 1.0
    shift: float = 0.0

    can_do_bp = True
    inplace_capable = True

    def backward_reads_bottom_data(self):
        # Powers 0 and 1 have a constant derivative, so only other powers need x.
        return self.power not in (0, 1)

    def backward_reads_top_data(self):
        return False

    def validate(self):
        for field in ("power", "scale", "shift"):
            check_number(self, field)
        # The backward pass multiplies by power * scale, printed as a constant.
        if not math.isfinite(self.power * self.scale):
            raise ConfigError(
                f"{self.title}: power={self.power!r} times scale={self.scale!r} "
                "overflows to infinity, which the gradient multiplies by; use "
                "smaller values"
            )

    def infer_shapes(self, bottom_shapes):
        return list(bottom_shapes)
