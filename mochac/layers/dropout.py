"""DropoutLayer and RandomMaskLayer: zero random elements during training.

Mocha's forms of these layers are in place: they list bottoms only and
overwrite them. Here every blob has one producer, so a layer cannot write a
blob it reads. Both layers therefore need explicit tops, one new name per
bottom, and later layers must read those tops. At -O1 the fuse_inplace pass
stores each top over its bottom when nothing else reads the bottom, which
gives Mocha's memory use. A top may not reuse its bottom's name, and a
missing ``tops`` raises ConfigError, rather than the layer renaming blobs on
the user's behalf: a renamed top would leave later layers silently reading
the unmasked bottom.
"""

from __future__ import annotations

from dataclasses import dataclass

from mochac.layers._checks import check_bool, check_number
from mochac.layers.base import Layer


class _MaskingLayer(Layer):
    """Checks shared by the two masking layers: ratio and explicit tops."""

    can_do_bp = True
    # The mask is kept between forward and backward, so backward reads
    # neither the bottom nor the top.
    inplace_capable = True

    def depends_on_phase(self):
        return True

    def __post_init__(self):
        tops = self.blob_names("tops")
        if not tops:
            self._fail(
                "tops",
                [],
                "one new top name per bottom, e.g. tops=['x-masked'], because a "
                "layer cannot overwrite the bottom it reads; read the top in later "
                "layers (at -O1 it is stored over the bottom)",
            )
        bottoms = self.blob_names("bottoms")
        reused = [top for top in tops if top in bottoms]
        if reused:
            self._fail(
                "tops",
                list(tops),
                f"names other than the bottoms ({', '.join(reused)} is both); "
                "give each top a new name and read it in later layers",
            )
        super().__post_init__()

    def validate(self):
        check_number(self, "ratio")
        if not 0 < self.ratio < 1:
            self._fail("ratio", self.ratio, "a number strictly between 0 and 1")

    def backward_reads_bottom_data(self):
        return False

    def backward_reads_top_data(self):
        return False

    def infer_shapes(self, bottom_shapes):
        return list(bottom_shapes)


@dataclass(frozen=True, kw_only=True, eq=False)
class DropoutLayer(_MaskingLayer):
    """Zeroes each element with probability ``ratio`` in a "train"-phase net.

    Fields (Mocha's defaults):
        ratio: probability p of zeroing an element, default 0.5, 0 < p < 1.
        auto_scale: default True; scale the kept elements by 1 / (1 - p) so
            that the expected output equals the input.
        bottoms: exactly one blob name; tops: exactly one new blob name.

    Backward multiplies the top diff by the same mask (and scale). In a
    "test"-phase net the top is a copy of the bottom.
    """

    ratio: float = 0.5
    auto_scale: bool = True

    n_bottoms = (1, 1)
    n_tops = (1, 1)

    def validate(self):
        super().validate()
        check_bool(self, "auto_scale")

    @property
    def scale(self) -> float:
        """The factor applied to kept elements."""
        return 1 / (1 - self.ratio) if self.auto_scale else 1.0


@dataclass(frozen=True, kw_only=True, eq=False)
class RandomMaskLayer(_MaskingLayer):
    """Zeroes each element of every bottom with probability ``ratio``, unscaled.

    Fields (Mocha's defaults):
        ratio: probability of zeroing an element, default 0.5, 0 < ratio < 1.
        bottoms: one or more blob names; tops: one new blob name per bottom.

    Mocha builds this layer on DropoutLayer with auto_scale off, so like
    dropout it back-propagates through its mask and copies its bottoms in a
    "test"-phase net. Denoising auto-encoders use it to corrupt their input.
    """

    ratio: float = 0.5

    @property
    def scale(self) -> float:
        """The factor applied to kept elements: 1, since the mask does not rescale."""
        return 1.0
