"""Utility layers that move data without computing: Split, Identity, Reshape."""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from mochac.layers._checks import check_bool
from mochac.layers.base import Layer
from mochac.values import as_int


@dataclass(frozen=True, kw_only=True, eq=False)
class SplitLayer(Layer):
    """Gives every top the bottom's values; backward sums the tops' diffs.

    Fields:
        no_copy: default False, accepted for Mocha and ignored. At -O1 every
            top shares the bottom's storage (eliminate_splits). At -O0, or
            with that pass disabled, each top is a copy.
    """

    no_copy: bool = False

    n_bottoms = (1, 1)
    n_tops = (1, None)
    tops_match_bottoms = False
    can_do_bp = True

    def backward_reads_bottom_data(self):
        return False

    def backward_reads_top_data(self):
        return False

    def validate(self):
        check_bool(self, "no_copy")

    def infer_shapes(self, bottom_shapes):
        return [bottom_shapes[0]] * len(self.tops)


@dataclass(frozen=True, kw_only=True, eq=False)
class IdentityLayer(Layer):
    """Passes each bottom to the top at the same index unchanged (a rename)."""

    can_do_bp = True

    def backward_reads_bottom_data(self):
        return False

    def backward_reads_top_data(self):
        return False

    def infer_shapes(self, bottom_shapes):
        return list(bottom_shapes)


@dataclass(frozen=True, kw_only=True, eq=False)
class ReshapeLayer(Layer):
    """Gives each bottom a new per-sample shape without changing its data.

    Fields:
        shape: the per-sample shape in Mocha's column-major order (fastest axis
            first, batch axis left out), so Mocha's shape=(W, H, C) gives
            NumPy tops of shape (N, C, H, W). Its product must equal the
            bottom's elements per sample.
    """

    shape: tuple[int, ...] = ()

    can_do_bp = True

    def backward_reads_bottom_data(self):
        return False

    def backward_reads_top_data(self):
        return False

    def validate(self):
        shape = self.shape
        if as_int(shape) is not None:
            shape = (shape,)
        if not isinstance(shape, (tuple, list)) or not shape:
            self._fail("shape", self.shape, "a non-empty tuple of ints >= 1")
        dims = tuple(as_int(d) for d in shape)
        if any(d is None or d < 1 for d in dims):
            self._fail("shape", self.shape, "a non-empty tuple of ints >= 1")
        object.__setattr__(self, "shape", dims)

    def infer_shapes(self, bottom_shapes):
        per_sample = tuple(reversed(self.shape))
        tops = []
        for index, shape in enumerate(bottom_shapes):
            if prod(shape[1:]) != prod(per_sample):
                raise self.shape_error(
                    f"bottom '{self.bottoms[index]}' has {prod(shape[1:])} elements "
                    f"per sample but shape={self.shape} holds {prod(per_sample)}"
                )
            tops.append((shape[0],) + per_sample)
        return tops
