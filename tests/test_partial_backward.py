"""Layers whose bottoms only partly take a diff, in nets without force_backward.

A bottom read from a data layer gets no diff, so the layer's backward pass
skips it (propagate_down is False there) but must still write the diffs of
its other bottoms, and its parameter gradients, correctly. A top that no
layer reads gets no diff either. The layer tests build every net with
force_backward, so they never reach these paths.

Each net here feeds one bottom from the data layer and another from an inner
product, whose parameters only get a gradient through that bottom. The
parameter gradients of the whole net are then checked against float64
central differences (tests/gradcheck.py), at -O0 and at -O1.
"""

import numpy as np
import pytest
from gradcheck import check_net_gradients, numeric_gradient, preserved

from mochac import (
    ConvolutionLayer,
    CPUBackend,
    GaussianInitializer,
    InnerProductLayer,
    MemoryDataLayer,
    Net,
    Neurons,
    Pooling,
    PoolingLayer,
    ReshapeLayer,
    SoftmaxLayer,
    SquareLossLayer,
)
from mochac.layers import (
    BinaryCrossEntropyLossLayer,
    ConcatLayer,
    ElementWiseFunctors,
    ElementWiseLayer,
    GaussianKLLossLayer,
    PowerLayer,
    TiedInnerProductLayer,
)
from mochac.layers.channel_pooling import ChannelPoolingLayer

BATCH = 3
FEATURES = 12
# Mocha's (width, height, channels) for a (BATCH, 3, 2, 2) image blob.
IMAGE = (2, 2, 3)
IMAGE_SHAPE = (BATCH, 3, 2, 2)
RANDOM_BIAS = GaussianInitializer(std=0.5)


def data_layer(rng, extra=None):
    """Return the data layer: a (BATCH, 5) input x, a (BATCH, FEATURES) side
    input a, an image blob a4, positive values in [0.5, 2] (pos),
    probabilities in [0.1, 0.9] (prob), and any ``extra`` tops."""
    tops = {
        "x": rng.normal(size=(BATCH, 5)),
        "a": rng.normal(size=(BATCH, FEATURES)),
        "a4": rng.normal(size=IMAGE_SHAPE),
        "pos": rng.uniform(0.5, 2.0, size=(BATCH, FEATURES)),
        "prob": rng.uniform(0.1, 0.9, size=(BATCH, FEATURES)),
    }
    tops.update(extra or {})
    return MemoryDataLayer(
        name="data", batch_size=BATCH, tops=list(tops), data=list(tops.values())
    )


def hidden(name="ip", neuron=None, bottom="x"):
    """Return the inner product from x to h, whose parameters get a gradient
    only through the layer under test."""
    return InnerProductLayer(
        name=name,
        output_dim=FEATURES,
        neuron=neuron or Neurons.Identity(),
        bias_init=RANDOM_BIAS,
        bottoms=[bottom],
        tops=["h"],
    )


def as_image(bottom="h", top="h4"):
    return ReshapeLayer(name=f"{top}-image", shape=IMAGE, bottoms=[bottom], tops=[top])


def square_losses(rng, tops_and_shapes):
    """One SquareLossLayer per top, each against a random target of its own."""
    targets = {
        f"target_{top}": rng.normal(size=shape) for top, shape in tops_and_shapes
    }
    feed = MemoryDataLayer(
        name="targets",
        batch_size=BATCH,
        tops=list(targets),
        data=list(targets.values()),
    )
    losses = [
        SquareLossLayer(name=f"loss_{top}", bottoms=[top, f"target_{top}"])
        for top, _ in tops_and_shapes
    ]
    return [feed, *losses]


def elementwise_case(operation, bottoms, neuron=None):
    def layers(rng):
        return [
            data_layer(rng),
            hidden(neuron=neuron),
            ElementWiseLayer(
                name="layer", operation=operation, bottoms=bottoms, tops=["y"]
            ),
            *square_losses(rng, [("y", (BATCH, FEATURES))]),
        ]

    return layers


def two_bottom_case(make_layer, image, top_shapes):
    """A layer with bottoms [data, h]: the data bottom takes no diff."""

    def layers(rng):
        side = ["a4", "h4"] if image else ["a", "h"]
        reshape = [as_image()] if image else []
        return [
            data_layer(rng),
            hidden(),
            *reshape,
            make_layer(side),
            *square_losses(rng, list(zip(["y_a", "y_h"], top_shapes))),
        ]

    return layers


def unread_first_top_case(make_layer, image, top_shape):
    """A layer with bottoms [data, h] whose first top nothing reads, so only
    the second pair has a top diff, and it alone sets the parameter gradients."""

    def layers(rng):
        bottoms = ["a4", "h4"] if image else ["a", "h"]
        reshape = [as_image()] if image else []
        return [
            data_layer(rng),
            hidden(),
            *reshape,
            make_layer(bottoms),
            *square_losses(rng, [("y_h", top_shape)]),
        ]

    return layers


def loss_case(make_layer, bottoms, neuron):
    """A loss layer whose only bottom with a diff is the inner product's h."""

    def layers(rng):
        return [data_layer(rng), hidden(neuron=neuron), make_layer(bottoms)]

    return layers


def conv(bottoms):
    return ConvolutionLayer(
        name="layer",
        kernel=2,
        pad=1,
        n_filter=2,
        bias_init=RANDOM_BIAS,
        bottoms=bottoms,
        tops=["y_a", "y_h"],
    )


def inner_product(bottoms):
    return InnerProductLayer(
        name="layer",
        output_dim=4,
        bias_init=RANDOM_BIAS,
        bottoms=bottoms,
        tops=["y_a", "y_h"],
    )


def tied_case(rng, learn_weights=False):
    """Return a decoder tied to an encoder of x, on bottoms [a, h]."""
    encoder = InnerProductLayer(
        name="encoder",
        output_dim=FEATURES,
        bias_init=RANDOM_BIAS,
        bottoms=["x"],
        tops=["code"],
    )
    decoder = TiedInnerProductLayer(
        name="layer",
        tied_param_key="encoder",
        bias_init=RANDOM_BIAS,
        bottoms=["a", "h"],
        tops=["y_a", "y_h"],
        learn_weights=learn_weights,
    )
    return [
        data_layer(rng),
        hidden(),
        encoder,
        decoder,
        *square_losses(
            rng,
            [("code", (BATCH, FEATURES)), ("y_a", (BATCH, 5)), ("y_h", (BATCH, 5))],
        ),
    ]


def max_pool(bottoms):
    return PoolingLayer(name="layer", kernel=2, bottoms=bottoms, tops=["y_a", "y_h"])


def mean_pool(bottoms):
    return PoolingLayer(
        name="layer",
        kernel=2,
        pad=1,
        pooling=Pooling.Mean(),
        neuron=Neurons.Sigmoid(),
        bottoms=bottoms,
        tops=["y_a", "y_h"],
    )


def power(bottoms):
    return PowerLayer(
        name="layer",
        power=2,
        scale=0.5,
        shift=1.0,
        bottoms=bottoms,
        tops=["y_a", "y_h"],
    )


def softmax(bottoms):
    return SoftmaxLayer(name="layer", bottoms=bottoms, tops=["y_a", "y_h"])


def channel_pool(bottoms):
    return ChannelPoolingLayer(
        name="layer",
        kernel=2,
        stride=2,
        pooling=Pooling.Mean(),
        bottoms=bottoms,
        tops=["y_a", "y_h"],
    )


def concat(bottoms):
    return ConcatLayer(name="layer", dim=-2, bottoms=bottoms, tops=["y"])


def concat_case(first, second):
    def layers(rng):
        return [
            data_layer(rng),
            hidden(),
            concat([first, second]),
            *square_losses(rng, [("y", (BATCH, 2 * FEATURES))]),
        ]

    return layers


IMAGE_OUT = (BATCH, 2, 3, 3)
FLAT_OUT = (BATCH, 4)
MAX_POOLED = (BATCH, 3, 1, 1)
MEAN_POOLED = (BATCH, 3, 3, 3)
CASES = {
    # Element-wise operations with the data bottom first, last, or between.
    "add_data_first": elementwise_case(ElementWiseFunctors.Add(), ["a", "h"]),
    "subtract_data_first": elementwise_case(ElementWiseFunctors.Subtract(), ["a", "h"]),
    "subtract_data_last": elementwise_case(ElementWiseFunctors.Subtract(), ["h", "a"]),
    "multiply_data_around": elementwise_case(
        ElementWiseFunctors.Multiply(), ["a", "h", "pos"]
    ),
    # An exponential neuron keeps the divisor h positive.
    "divide_data_numerator": elementwise_case(
        ElementWiseFunctors.Divide(), ["a", "h"], Neurons.Exponential()
    ),
    "divide_data_divisor": elementwise_case(ElementWiseFunctors.Divide(), ["h", "pos"]),
    "concat_data_first": concat_case("a", "h"),
    "concat_data_last": concat_case("h", "a"),
    # Layers with one top per bottom: [data, h].
    "conv": two_bottom_case(conv, True, [IMAGE_OUT, IMAGE_OUT]),
    "inner_product": two_bottom_case(inner_product, False, [FLAT_OUT, FLAT_OUT]),
    "max_pool": two_bottom_case(max_pool, True, [MAX_POOLED] * 2),
    "mean_pool_sigmoid": two_bottom_case(mean_pool, True, [MEAN_POOLED] * 2),
    "power": two_bottom_case(power, False, [(BATCH, FEATURES)] * 2),
    "softmax": two_bottom_case(softmax, False, [(BATCH, FEATURES)] * 2),
    "channel_pool": two_bottom_case(channel_pool, True, [(BATCH, 2, 2, 2)] * 2),
    # The first top has no diff: parameter gradients come from the second.
    "conv_unread_first_top": unread_first_top_case(conv, True, IMAGE_OUT),
    "inner_product_unread_first_top": unread_first_top_case(
        inner_product, False, FLAT_OUT
    ),
    # Two-bottom losses whose first bottom is data.
    "square_loss_label_only": loss_case(
        lambda bottoms: SquareLossLayer(name="layer", bottoms=bottoms), ["a", "h"], None
    ),
    "cross_entropy_label_only": loss_case(
        lambda bottoms: BinaryCrossEntropyLossLayer(name="layer", bottoms=bottoms),
        ["prob", "h"],
        Neurons.Sigmoid(),
    ),
    "gaussian_kl_sigma_only": loss_case(
        lambda bottoms: GaussianKLLossLayer(name="layer", bottoms=bottoms),
        ["a", "h"],
        Neurons.Exponential(),
    ),
    "gaussian_kl_mu_only": loss_case(
        lambda bottoms: GaussianKLLossLayer(name="layer", bottoms=bottoms),
        ["h", "pos"],
        None,
    ),
}
# The bottoms of "layer" that take a diff, for the cases where it is not
# [False, True].
PROPAGATE_DOWN = {
    "subtract_data_last": [True, False],
    "multiply_data_around": [False, True, False],
    "divide_data_divisor": [True, False],
    "concat_data_last": [True, False],
    "gaussian_kl_mu_only": [True, False],
}


def build(case, opt_level):
    layers = CASES[case](np.random.default_rng(5))
    backend = CPUBackend(dtype=np.float64, seed=2, threads=2)
    net = Net(f"partial-{case}", backend, layers, opt_level=opt_level)
    net.load_batch()
    return net


@pytest.mark.parametrize("opt_level", [0, 1])
@pytest.mark.parametrize("case", list(CASES))
def test_partial_backward_gradients(case, opt_level):
    net = build(case, opt_level)
    info = net.ir.layer("layer")
    assert info.in_backward
    assert info.propagate_down == PROPAGATE_DOWN.get(case, [False, True])
    for position, bottom in enumerate(info.layer.bottoms):
        if not info.propagate_down[position]:
            assert bottom not in net.diffs
    checked = check_net_gradients(net)
    assert "ip.weight" in checked
    assert "ip.bias" in checked


@pytest.mark.parametrize("opt_level", [0, 1])
def test_partial_backward_tied_gradients(opt_level):
    """The decoder's bottoms are [data, h], and its weight is the encoder's.
    With learn_weights=True the weight's gradient is the sum of both layers'
    parts, as the solver adds them. By default the decoder computes no part,
    and the encoder's is the same as in the net whose decoder does."""
    grads = {}
    for learn_weights in (True, False):
        backend = CPUBackend(dtype=np.float64, seed=2, threads=2)
        layers = tied_case(np.random.default_rng(5), learn_weights)
        net = Net("partial-tied", backend, layers, opt_level=opt_level)
        net.load_batch()
        info = net.ir.layer("layer")
        assert info.propagate_down == [False, True]
        net.forward(load_data=False)
        net.backward()
        grads[learn_weights] = {
            f"{layer}.{name}": array.copy()
            for layer, arrays in net.grads.items()
            for name, array in arrays.items()
        }
    assert "layer.weight" not in grads[False]
    assert sorted(grads[True]) == sorted([*grads[False], "layer.weight"])
    for name, analytic in grads[False].items():
        np.testing.assert_allclose(
            analytic, grads[True][name], rtol=1e-12, err_msg=name
        )

    # Both nets start from the same parameters and compute the same forward
    # pass, so the last one serves for the central differences.
    def objective():
        return net.forward(load_data=False)

    computed = dict(grads[True])
    computed["encoder.weight"] = computed["encoder.weight"] + computed.pop(
        "layer.weight"
    )
    with preserved(net):
        for name, analytic in computed.items():
            layer_name, param_name = name.split(".")
            numeric = numeric_gradient(objective, net.params[layer_name][param_name])
            scale = np.abs(numeric).max()
            assert scale > 0
            np.testing.assert_allclose(
                analytic, numeric, rtol=0, atol=1e-6 * scale, err_msg=name
            )
