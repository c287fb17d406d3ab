"""TiedInnerProductLayer: the encoder's weight as one storage, summed gradients."""

import numpy as np
import pytest
from gradcheck import build_net, check_gradients, numeric_gradient, preserved

from mochac import (
    SGD,
    ConfigError,
    CPUBackend,
    GaussianInitializer,
    InnerProductLayer,
    MemoryDataLayer,
    Net,
    Neurons,
    ShapeError,
    SquareLossLayer,
)
from mochac.layers.tied_inner_product import TiedInnerProductLayer
from mochac.runtime.solver import summed_gradients

RNG = np.random.default_rng(3)
RANDOM_BIAS = GaussianInitializer(std=0.5)
X = RNG.normal(size=(4, 2, 3))


def autoencoder_layers(neuron=None):
    """Return x (6 features) -> encoder (4) -> tied decoder (6) -> loss against x."""
    neuron = neuron or Neurons.Identity()
    return [
        MemoryDataLayer(name="data", batch_size=4, data=[X], tops=["x"]),
        InnerProductLayer(
            name="encoder",
            param_key="code",
            bottoms=["x"],
            tops=["h"],
            output_dim=4,
            neuron=Neurons.Tanh(),
            bias_init=RANDOM_BIAS,
        ),
        TiedInnerProductLayer(
            name="decoder",
            tied_param_key="code",
            bottoms=["h"],
            tops=["recon"],
            neuron=neuron,
            bias_init=RANDOM_BIAS,
        ),
        SquareLossLayer(name="loss", bottoms=["recon", "x"]),
    ]


@pytest.fixture(scope="module")
def autoencoder():
    backend = CPUBackend(dtype=np.float64, seed=1, threads=2)
    net = Net("autoencoder", backend, autoencoder_layers(Neurons.Sigmoid()))
    net.load_batch()
    return net


@pytest.fixture(scope="module")
def layer_net():
    """The decoder alone behind its encoder, for layer-by-layer checks at -O0."""
    inputs = {"x": RNG.normal(size=(3, 5)), "code_in": RNG.normal(size=(2, 3))}
    layers = [
        InnerProductLayer(
            name="encoder",
            bottoms=["x"],
            tops=["h"],
            output_dim=3,
            bias_init=RANDOM_BIAS,
        ),
        TiedInnerProductLayer(
            name="decoder",
            tied_param_key="encoder",
            bottoms=["h", "code_in"],
            tops=["recon", "code_out"],
            neuron=Neurons.Tanh(),
            bias_init=RANDOM_BIAS,
        ),
    ]
    return build_net("tied", layers, inputs, seed=4)


def test_tied_weight_is_one_storage(autoencoder):
    encoder = autoencoder.params["encoder"]["weight"]
    decoder = autoencoder.params["decoder"]["weight"]
    assert decoder is encoder
    assert autoencoder.backend.registry["code"]["weight"] is encoder
    # Encoder weight and bias, decoder bias: the decoder's weight has no slot.
    param_slots = [slot for slot in autoencoder.slots.slots if slot.kind == "param"]
    assert len(param_slots) == 3
    assert autoencoder.params["decoder"]["bias"].shape == (6,)


def test_tied_gradients_are_separate(autoencoder):
    encoder = autoencoder.grads["encoder"]["weight"]
    decoder = autoencoder.grads["decoder"]["weight"]
    assert not np.shares_memory(encoder, decoder)


def test_tied_forward(layer_net):
    with preserved(layer_net):
        layer_net.forward_layer("encoder")
        layer_net.forward_layer("decoder")
        weight = layer_net.params["encoder"]["weight"]
        bias = layer_net.params["decoder"]["bias"]
        assert weight.shape == (3, 5)
        for bottom, top in (("h", "recon"), ("code_in", "code_out")):
            x = layer_net.blobs[bottom]
            expected = np.zeros((len(x), 5))
            for n in range(len(x)):
                for d in range(5):
                    total = sum(x[n, o] * weight[o, d] for o in range(3))
                    expected[n, d] = np.tanh(total + bias[d])
            np.testing.assert_allclose(layer_net.blobs[top], expected, rtol=1e-12)


def test_tied_layer_gradients(layer_net):
    layer_net.forward_layer("encoder")
    checked = check_gradients(layer_net, "decoder")
    assert checked == ["h", "code_in", "weight", "bias"]


def test_tied_summed_gradient(autoencoder):
    """The two gradients of the shared weight add up to d objective / d weight."""
    net = autoencoder
    weight = net.params["encoder"]["weight"]
    with preserved(net):
        net.forward(load_data=False)
        net.backward()
        total = net.grads["encoder"]["weight"] + net.grads["decoder"]["weight"]
        numeric = numeric_gradient(lambda: net.forward(load_data=False), weight)
        scale = np.abs(numeric).max()
        np.testing.assert_allclose(total, numeric, rtol=0, atol=1e-6 * scale)
        # Either part alone is not the gradient.
        alone = net.grads["encoder"]["weight"]
        assert np.abs(alone - numeric).max() > 1e-3 * scale


def test_tied_summed_gradients_yield_once(autoencoder):
    net = autoencoder
    with preserved(net):
        net.forward(load_data=False)
        net.backward()
        expected = net.grads["encoder"]["weight"] + net.grads["decoder"]["weight"]
        yielded = [(info.name, spec.name) for info, spec, _, _ in summed_gradients(net)]
        assert yielded.count(("encoder", "weight")) == 1
        assert ("decoder", "weight") not in yielded
        assert ("decoder", "bias") in yielded
        np.testing.assert_allclose(net.grads["encoder"]["weight"], expected)


def test_tied_sgd_updates_weight_once(autoencoder):
    net = autoencoder
    with preserved(net):
        before = net.params["encoder"]["weight"].copy()
        net.forward(load_data=False)
        net.backward()
        summed = net.grads["encoder"]["weight"] + net.grads["decoder"]["weight"]
        SGD().update(net, learning_rate=0.1, momentum=0.0, regu_coef=0.0)
        np.testing.assert_allclose(
            net.params["decoder"]["weight"], before - 0.1 * summed, rtol=1e-12
        )


def test_tied_optimized_equals_unoptimized():
    results = []
    for level in (0, 1):
        backend = CPUBackend(dtype=np.float64, seed=1, threads=2)
        net = Net(
            f"autoencoder-O{level}", backend, autoencoder_layers(), opt_level=level
        )
        objective = net.forward()
        net.backward()
        results.append((objective, net.grads["decoder"]["weight"].copy()))
    assert results[0][0] > 0
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-12)
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-10)


def test_tied_to_earlier_net():
    backend = CPUBackend(dtype=np.float64, seed=1, threads=1)
    layers = autoencoder_layers()
    train = Net("train", backend, layers)
    feed = MemoryDataLayer(
        name="codes", batch_size=2, data=[np.ones((2, 4))], tops=["c"]
    )
    decode = Net("decode", backend, [feed, layers[2].replace(bottoms=["c"])])
    assert decode.params["decoder"]["weight"] is train.params["encoder"]["weight"]
    decode.forward()
    weight = train.params["encoder"]["weight"]
    bias = train.params["decoder"]["bias"]
    np.testing.assert_allclose(decode.blobs["recon"], np.ones((2, 4)) @ weight + bias)


def test_tied_key_not_found():
    feed = MemoryDataLayer(
        name="codes", batch_size=2, data=[np.ones((2, 4))], tops=["c"]
    )
    layer = TiedInnerProductLayer(
        name="decoder", tied_param_key="missing", bottoms=["c"], tops=["y"]
    )
    backend = CPUBackend(dtype=np.float64, seed=1, threads=1)
    with pytest.raises(ShapeError, match=r"'decoder'.*param_key 'missing'"):
        Net("decode", backend, [feed, layer])


def test_tied_feature_mismatch():
    layers = autoencoder_layers()
    feed = MemoryDataLayer(
        name="codes", batch_size=2, data=[np.ones((2, 5))], tops=["c"]
    )
    backend = CPUBackend(dtype=np.float64, seed=1, threads=1)
    Net("train", backend, layers)
    with pytest.raises(ShapeError, match=r"'decoder'.*'c' has 5 features.*needs 4"):
        Net("decode", backend, [feed, layers[2].replace(bottoms=["c"])])


def test_tied_defaults():
    layer = TiedInnerProductLayer(
        name="d", tied_param_key="e", bottoms=["x"], tops=["y"]
    )
    assert layer.param_key == ""
    assert layer.bias_lr == 2.0
    assert layer.neuron.is_identity
    spec = layer.param_specs([(2, 3)], {("e", "weight"): (3, 7)})[1]
    assert spec.shape == (7,)
    bias = spec.initializer.init((7,), np.random.default_rng(0), np.float64)
    np.testing.assert_array_equal(bias, np.zeros(7))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tied_param_key", ""),
        ("tied_param_key", 3),
        ("param_key", None),
        ("bias_init", 0.5),
        ("bias_regu", "l2"),
        ("bias_lr", -1.0),
        ("bias_cons", 1.0),
        ("neuron", "tanh"),
    ],
)
def test_tied_invalid_field(field, value):
    fields = {"tied_param_key": "enc", field: value}
    with pytest.raises(ConfigError, match=rf"'dec1'.*invalid {field}="):
        TiedInnerProductLayer(name="dec1", bottoms=["x"], tops=["y"], **fields)
