"""Lowering of CropLayer: window offsets per sample, random only in training."""

from __future__ import annotations

import numpy as np

from mochac.codegen.lowering import pair_slots, register_lowering
from mochac.layers.crop import CropLayer


@register_lowering(CropLayer, "crop")
def lower_crop(info, ir, slots):
    layer: CropLayer = info.layer
    crop_h, crop_w = layer.crop_hw
    train = ir.phase == "train"
    random_crop = train and layer.random_crop
    random_mirror = train and layer.random_mirror
    pairs = pair_slots(info, slots)
    samples = 0
    for pair, (n, channels, height, width) in zip(pairs, info.bottom_shapes):
        pair.update(
            N=n,
            C=channels,
            H=height,
            W=width,
            # Mocha's center offsets, used when the window is not random.
            top_offset=(height - crop_h) // 2,
            left_offset=(width - crop_w) // 2,
            first_sample=samples,
        )
        samples += n
    context = {
        "pairs": pairs,
        "CH": crop_h,
        "CW": crop_w,
        "random_crop": random_crop,
        "random_mirror": random_mirror,
        "is_random": random_crop or random_mirror,
        "samples": samples,
    }
    if context["is_random"]:
        stream = slots.add("rng", info.name, "stream", np.uint64, (1,))
        context["rng"] = stream.index
    return context
