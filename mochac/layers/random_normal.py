"""RandomNormalLayer: a layer without bottoms whose tops are N(0, 1) noise."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mochac.layers.base import Layer
from mochac.values import as_int


def _positive_ints(values) -> tuple[int, ...] | None:
    """Return ``values`` as a tuple of Python ints, or None unless all are ints >= 1."""
    converted = tuple(as_int(value) for value in values)
    if any(value is None or value < 1 for value in converted):
        return None
    return converted


@dataclass(frozen=True, kw_only=True, eq=False)
class RandomNormalLayer(Layer):
    """A layer that fills each top with fresh standard normal samples at every forward pass.

    Fields (Mocha's defaults):
        tops: names of the noise blobs.
        output_dims: the per-sample shape shared by all tops, in Mocha's
            column-major order (fastest axis first), so output_dims=(W, H, C)
            gives NumPy tops of shape (N, C, H, W). Required.
        batch_sizes: one batch size per top. Required.
        eltype: element type, default np.float32. It must equal the backend's
            dtype, because every blob of a compiled net has that type.

    The samples come from a counter-based generator seeded from the backend's
    seed, so they do not depend on the thread count and a snapshot restores
    the stream. Unlike Mocha, mochac does not count this layer as a data
    source (``is_source``): the compiled forward pass computes its tops.
    """

    output_dims: tuple[int, ...] = ()
    batch_sizes: tuple[int, ...] = ()
    eltype: type = np.float32

    n_bottoms = (0, 0)
    tops_match_bottoms = False

    def validate(self):
        dims = self.output_dims
        if as_int(dims) is not None:
            dims = (dims,)
        if isinstance(dims, (tuple, list)) and dims:
            dims = _positive_ints(dims)
        else:
            dims = None
        if dims is None:
            self._fail("output_dims", self.output_dims, "a non-empty list of ints >= 1")
        object.__setattr__(self, "output_dims", dims)

        sizes = self.batch_sizes
        if as_int(sizes) is not None:
            sizes = (sizes,)
        if isinstance(sizes, (tuple, list)):
            sizes = _positive_ints(sizes)
        else:
            sizes = None
        if sizes is None:
            self._fail("batch_sizes", self.batch_sizes, "a list of ints >= 1")
        if len(sizes) != len(self.tops):
            self._fail(
                "batch_sizes",
                self.batch_sizes,
                f"one batch size per top ({len(self.tops)} tops)",
            )
        object.__setattr__(self, "batch_sizes", tuple(sizes))

        # np.dtype(None) is float64, so None is rejected before the conversion.
        try:
            eltype = np.dtype(self.eltype) if self.eltype is not None else None
        except TypeError:
            eltype = None
        if eltype not in (np.float32, np.float64):
            self._fail("eltype", self.eltype, "np.float32 or np.float64")

    def infer_shapes(self, bottom_shapes):
        per_sample = tuple(reversed(self.output_dims))
        return [(size,) + per_sample for size in self.batch_sizes]
