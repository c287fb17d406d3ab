"""CropLayer: center crops against NumPy slices, random windows and flips in
training only, shape and config checks."""

import numpy as np
import pytest
from gradcheck import build_net
from test_dropout import build

from mochac import ConfigError, MemoryDataLayer, ShapeError
from mochac.ir import build_ir
from mochac.layers.crop import CropLayer

RNG = np.random.default_rng(71)


def distinct_values(shape):
    """Return distinct values, so each crop matches exactly one window."""
    return RNG.permutation(int(np.prod(shape))).reshape(shape).astype(np.float64)


# crop_size is Mocha's (width, height).
CENTER_INPUTS = {
    "big": distinct_values((2, 3, 7, 6)),
    "odd": distinct_values((1, 2, 4, 5)),
}
RANDOM_INPUTS = {"images": distinct_values((16, 2, 6, 7))}
RANDOM_LAYERS = [
    CropLayer(
        name="random",
        bottoms=["images"],
        tops=["r"],
        crop_size=(4, 3),
        random_crop=True,
    ),
    CropLayer(
        name="mirror",
        bottoms=["images"],
        tops=["m"],
        crop_size=(4, 3),
        random_mirror=True,
    ),
    CropLayer(
        name="both",
        bottoms=["images"],
        tops=["b"],
        crop_size=(4, 3),
        random_crop=True,
        random_mirror=True,
    ),
]


@pytest.fixture(scope="module")
def center_net():
    layer = CropLayer(
        name="center", bottoms=["big", "odd"], tops=["y_big", "y_odd"], crop_size=(3, 2)
    )
    return build_net("crop-center", [layer], CENTER_INPUTS)


@pytest.fixture(scope="module")
def train_net():
    return build("crop-train", RANDOM_LAYERS, RANDOM_INPUTS, "train")


@pytest.fixture(scope="module")
def inference_net():
    return build("crop-test", RANDOM_LAYERS, RANDOM_INPUTS, "test")


def find_windows(image, crop):
    """Return every (top, left, mirrored) whose window of ``image`` equals ``crop``."""
    _, height, width = image.shape
    _, crop_h, crop_w = crop.shape
    found = []
    for top in range(height - crop_h + 1):
        for left in range(width - crop_w + 1):
            window = image[:, top : top + crop_h, left : left + crop_w]
            for mirrored in (False, True):
                candidate = window[:, :, ::-1] if mirrored else window
                if np.array_equal(candidate, crop):
                    found.append((top, left, mirrored))
    return found


def windows_of(net, name, top):
    net.forward_layer(name)
    images, crops = RANDOM_INPUTS["images"], net.blobs[top]
    windows = [find_windows(image, crop) for image, crop in zip(images, crops)]
    assert all(len(found) == 1 for found in windows)
    return [found[0] for found in windows]


def test_crop_center(center_net):
    center_net.forward_layer("center")
    big, odd = CENTER_INPUTS["big"], CENTER_INPUTS["odd"]
    # Mocha's center offset is (size - crop) // 2 along each axis.
    np.testing.assert_array_equal(center_net.blobs["y_big"], big[:, :, 2:4, 1:4])
    np.testing.assert_array_equal(center_net.blobs["y_odd"], odd[:, :, 1:3, 1:4])


def test_crop_random_windows(train_net):
    windows = windows_of(train_net, "random", "r")
    assert not any(mirrored for _, _, mirrored in windows)
    assert len({(top, left) for top, left, _ in windows}) > 3
    again = windows_of(train_net, "random", "r")
    assert again != windows


def test_crop_random_mirror(train_net):
    windows = windows_of(train_net, "mirror", "m")
    assert {(top, left) for top, left, _ in windows} == {(1, 1)}
    flips = [mirrored for _, _, mirrored in windows]
    assert any(flips)
    assert not all(flips)


def test_crop_random_both(train_net):
    windows = windows_of(train_net, "both", "b")
    assert len({(top, left) for top, left, _ in windows}) > 3
    assert len({mirrored for _, _, mirrored in windows}) == 2


@pytest.mark.parametrize(
    ("name", "top"), [("random", "r"), ("mirror", "m"), ("both", "b")]
)
def test_crop_test_phase_is_center(inference_net, name, top):
    assert windows_of(inference_net, name, top) == [(1, 1, False)] * 16


def test_crop_has_no_backward(center_net):
    assert not center_net.ir.layer("center").in_backward


def build_crop(shape, crop_size):
    data = MemoryDataLayer(
        name="data", batch_size=shape[0], data=[np.zeros(shape)], tops=["x"]
    )
    layer = CropLayer(name="crop1", bottoms=["x"], tops=["y"], crop_size=crop_size)
    return build_ir("crop-net", [data, layer], {0: [shape]})


def test_crop_needs_4d():
    with pytest.raises(ShapeError, match=r"'crop1'.*expected a 4-D"):
        build_crop((2, 5, 5), (2, 2))


def test_crop_larger_than_image():
    with pytest.raises(ShapeError, match=r"'crop1'.*\(6, 2\) is larger than the 5x4"):
        build_crop((1, 1, 4, 5), (6, 2))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("crop_size", (0, 0)),
        ("crop_size", (3,)),
        ("crop_size", "3x3"),
        ("random_crop", 1),
        ("random_mirror", None),
    ],
)
def test_crop_invalid_field(field, value):
    fields = {"crop_size": (2, 2), field: value}
    with pytest.raises(ConfigError, match=rf"'crop1'.*invalid {field}="):
        CropLayer(name="crop1", bottoms=["x"], tops=["y"], **fields)


def test_crop_size_required():
    with pytest.raises(ConfigError, match=r"invalid crop_size=\(0, 0\)"):
        CropLayer(bottoms=["x"], tops=["y"])
