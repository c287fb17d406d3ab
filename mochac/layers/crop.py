"""CropLayer: cut a fixed-size window out of (N, C, H, W) images."""

from __future__ import annotations

from dataclasses import dataclass

from mochac.layers._checks import check_bool
from mochac.layers.base import Layer, to_pair


@dataclass(frozen=True, kw_only=True, eq=False)
class CropLayer(Layer):
    """Crops every image of each bottom to ``crop_size``.

    Fields (Mocha's defaults):
        crop_size: (width, height) of the window; required, since Mocha's
            default (0, 0) is invalid.
        random_crop: default False; place the window at random instead of at
            the center (Mocha's center offset: (size - crop) // 2).
        random_mirror: default False; flip each image along its width with
            probability 0.5.

    Bottoms must be 4-D and at least as large as the window; their shapes may
    differ. Each sample draws its own window and flip. The random choices are
    made only in a "train"-phase net, so a "test"-phase net crops the center
    and never flips. The layer cannot back-propagate, as in Mocha; it
    belongs right after a data layer.
    """

    crop_size: tuple[int, int] = (0, 0)
    random_crop: bool = False
    random_mirror: bool = False

    def validate(self):
        to_pair(self, "crop_size", self.crop_size, 1)
        for field in ("random_crop", "random_mirror"):
            check_bool(self, field)

    def depends_on_phase(self):
        return self.random_crop or self.random_mirror

    @property
    def crop_hw(self) -> tuple[int, int]:
        return to_pair(self, "crop_size", self.crop_size, 1)

    def infer_shapes(self, bottom_shapes):
        crop_h, crop_w = self.crop_hw
        tops = []
        for index, shape in enumerate(bottom_shapes):
            if len(shape) != 4:
                raise self.shape_error(
                    f"bottom '{self.bottoms[index]}' has shape {shape}; expected a "
                    "4-D (N, C, H, W) blob"
                )
            n, channels, height, width = shape
            if height < crop_h or width < crop_w:
                raise self.shape_error(
                    f"crop_size (width, height)=({crop_w}, {crop_h}) is larger than "
                    f"the {width}x{height} images of bottom '{self.bottoms[index]}'; "
                    "use a smaller crop_size"
                )
            tops.append((n, channels, crop_h, crop_w))
        return tops
