"""TiedInnerProductLayer: the encoder's weight as one storage, learned by the
encoder alone (Mocha) or by both layers with learn_weights=True."""

import logging

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
    NotFoundError,
    ShapeError,
    SquareLossLayer,
)
from mochac.constraints import L2Cons, apply_constraints
from mochac.layers.tied_inner_product import TiedInnerProductLayer
from mochac.mocha_api import freeze
from mochac.runtime.solver import summed_gradients

RNG = np.random.default_rng(3)
RANDOM_BIAS = GaussianInitializer(std=0.5)
X = RNG.normal(size=(4, 2, 3))


def autoencoder_layers(neuron=None, learn_weights=False):
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
            learn_weights=learn_weights,
        ),
        SquareLossLayer(name="loss", bottoms=["recon", "x"]),
    ]


def build_autoencoder(learn_weights):
    backend = CPUBackend(dtype=np.float64, seed=1, threads=2)
    layers = autoencoder_layers(Neurons.Sigmoid(), learn_weights)
    net = Net("autoencoder", backend, layers)
    net.load_batch()
    return net


def test_build_log_counts_tied_weight_once(caplog):
    """The build log counts the weight the decoder shares with the encoder
    once: 4 x 6 weights, 4 encoder biases and 6 decoder biases."""
    backend = CPUBackend(dtype=np.float64, seed=1, threads=2)
    with caplog.at_level(logging.INFO, logger="mochac.runtime.net"):
        Net("tied-count", backend, autoencoder_layers())
    built = [
        record.getMessage()
        for record in caplog.records
        if record.name == "mochac.runtime.net" and "tied-count" in record.getMessage()
    ]
    assert len(built) == 1
    assert "34 parameters" in built[0]


def test_net_repr_aligns_long_names():
    """print(net) keeps its columns aligned when a class name
    (TiedInnerProductLayer) or a layer name is longer than the usual width,
    and a layer without tops ends its line without trailing spaces."""
    layers = autoencoder_layers()
    layers[-1] = layers[-1].replace(name="reconstruction-loss")
    net = Net("tied-repr", CPUBackend(dtype=np.float64, seed=1, threads=2), layers)
    lines = repr(net).splitlines()[1:]
    arrows = [line.index("->") for line in lines]
    assert len(lines) == 4
    assert len(set(arrows)) == 1
    assert lines[-1].endswith("->")


@pytest.fixture(scope="module")
def autoencoder():
    """The auto-encoder with Mocha's tied decoder, which learns only its bias."""
    return build_autoencoder(learn_weights=False)


@pytest.fixture(scope="module")
def learning_autoencoder():
    """The auto-encoder whose tied decoder learns the weight too."""
    return build_autoencoder(learn_weights=True)


def numpy_autoencoder(x, encoder_weight, decoder_weight, encoder_bias, decoder_bias):
    """Return (loss, encoder's weight gradient, decoder's weight gradient,
    decoder's bias gradient) of the sigmoid auto-encoder, computed in NumPy.

    The weight is passed twice so that each layer's part of its gradient can
    be checked on its own.
    """
    x = x.reshape(len(x), -1)
    h = np.tanh(x @ encoder_weight.T + encoder_bias)
    recon = 1 / (1 + np.exp(-(h @ decoder_weight + decoder_bias)))
    loss = np.sum((recon - x) ** 2) / (2 * len(x))
    recon_diff = (recon - x) / len(x) * recon * (1 - recon)
    h_diff = recon_diff @ decoder_weight.T * (1 - h**2)
    return loss, h_diff.T @ x, h.T @ recon_diff, recon_diff.sum(axis=0)


def decoder_net(learn_weights=False):
    """Return the decoder alone behind its encoder, for layer-by-layer checks
    at -O0."""
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
            learn_weights=learn_weights,
        ),
    ]
    return build_net("tied", layers, inputs, seed=4)


@pytest.fixture(scope="module")
def layer_net():
    return decoder_net()


def test_tied_weight_is_one_storage(autoencoder):
    encoder = autoencoder.params["encoder"]["weight"]
    decoder = autoencoder.params["decoder"]["weight"]
    assert decoder is encoder
    assert autoencoder.backend.registry["code"]["weight"] is encoder
    # Encoder weight and bias, decoder bias: the decoder's weight has no slot.
    param_slots = [slot for slot in autoencoder.slots.slots if slot.kind == "param"]
    assert len(param_slots) == 3
    assert autoencoder.params["decoder"]["bias"].shape == (6,)


def test_tied_gradients_are_separate(learning_autoencoder):
    encoder = learning_autoencoder.grads["encoder"]["weight"]
    decoder = learning_autoencoder.grads["decoder"]["weight"]
    assert not np.shares_memory(encoder, decoder)


def test_tied_default_has_no_weight_gradient(autoencoder):
    grad_slots = [
        slot
        for slot in autoencoder.slots.slots
        if slot.kind == "grad" and slot.owner == "decoder"
    ]
    assert [slot.name for slot in grad_slots] == ["bias"]
    with pytest.raises(NotFoundError, match=r"'decoder'.*learn_weights=True"):
        autoencoder.grads["decoder"]["weight"]


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


@pytest.mark.parametrize(
    ("learn_weights", "expected"),
    [
        (False, ["h", "code_in", "bias"]),
        (True, ["h", "code_in", "weight", "bias"]),
    ],
)
def test_tied_layer_gradients(learn_weights, expected):
    net = decoder_net(learn_weights)
    net.forward_layer("encoder")
    assert check_gradients(net, "decoder") == expected


def test_tied_default_gradient_is_encoders(autoencoder):
    """Mocha's decoder leaves the weight's gradient to the encoder. That is
    the gradient of the objective with the decoder's copy of the weight held
    fixed, computed here in NumPy by central differences."""
    net = autoencoder
    weight = net.params["encoder"]["weight"].copy()
    encoder_bias = net.params["encoder"]["bias"].copy()
    decoder_bias = net.params["decoder"]["bias"].copy()

    def objective():
        return numpy_autoencoder(X, values, weight, encoder_bias, decoder_bias)[0]

    values = weight.copy()
    numeric = numeric_gradient(objective, values)
    loss, encoder_part, decoder_part, bias_part = numpy_autoencoder(
        X, weight, weight, encoder_bias, decoder_bias
    )
    scale = np.abs(numeric).max()
    np.testing.assert_allclose(encoder_part, numeric, rtol=0, atol=1e-6 * scale)
    with preserved(net):
        assert net.forward(load_data=False) == pytest.approx(loss, rel=1e-12)
        net.backward()
        computed = net.grads["encoder"]["weight"]
        np.testing.assert_allclose(computed, numeric, rtol=0, atol=1e-6 * scale)
        np.testing.assert_allclose(
            net.grads["decoder"]["bias"], bias_part, rtol=1e-10, atol=1e-14
        )
        # The decoder's part is large enough to matter: the gradient of the
        # objective through both layers differs from the encoder's.
        through_both = numeric_gradient(
            lambda: net.forward(load_data=False), net.params["encoder"]["weight"]
        )
        np.testing.assert_allclose(
            through_both, encoder_part + decoder_part, rtol=0, atol=1e-6 * scale
        )
        assert np.abs(through_both - computed).max() > 1e-3 * scale
        # The solver steps along the encoder's gradient alone.
        SGD().update(net, learning_rate=0.1, momentum=0.0, regu_coef=0.0)
        np.testing.assert_allclose(
            net.params["decoder"]["weight"],
            weight - 0.1 * numeric,
            rtol=0,
            atol=1e-6 * scale,
        )


def test_tied_summed_gradient(learning_autoencoder):
    """With learn_weights=True the two gradients of the shared weight add up
    to d objective / d weight."""
    net = learning_autoencoder
    weight = net.params["encoder"]["weight"]
    with preserved(net):
        net.forward(load_data=False)
        net.backward()
        _, encoder_part, decoder_part, _ = numpy_autoencoder(
            X,
            weight,
            weight,
            net.params["encoder"]["bias"],
            net.params["decoder"]["bias"],
        )
        scale = np.abs(decoder_part).max()
        np.testing.assert_allclose(
            net.grads["decoder"]["weight"], decoder_part, rtol=0, atol=1e-10 * scale
        )
        scale = np.abs(encoder_part).max()
        np.testing.assert_allclose(
            net.grads["encoder"]["weight"], encoder_part, rtol=0, atol=1e-10 * scale
        )
        total = net.grads["encoder"]["weight"] + net.grads["decoder"]["weight"]
        numeric = numeric_gradient(lambda: net.forward(load_data=False), weight)
        scale = np.abs(numeric).max()
        np.testing.assert_allclose(total, numeric, rtol=0, atol=1e-6 * scale)
        # Either part alone is not the gradient.
        alone = net.grads["encoder"]["weight"]
        assert np.abs(alone - numeric).max() > 1e-3 * scale


def test_tied_summed_gradients_yield_once(learning_autoencoder):
    net = learning_autoencoder
    with preserved(net):
        net.forward(load_data=False)
        net.backward()
        expected = net.grads["encoder"]["weight"] + net.grads["decoder"]["weight"]
        yielded = [(info.name, spec.name) for info, spec, _, _ in summed_gradients(net)]
        assert yielded.count(("encoder", "weight")) == 1
        assert ("decoder", "weight") not in yielded
        assert ("decoder", "bias") in yielded
        np.testing.assert_allclose(net.grads["encoder"]["weight"], expected)


def test_tied_default_gradients_yield_encoders(autoencoder):
    net = autoencoder
    with preserved(net):
        net.forward(load_data=False)
        net.backward()
        expected = net.grads["encoder"]["weight"].copy()
        yielded = [(info.name, spec.name) for info, spec, _, _ in summed_gradients(net)]
        assert yielded.count(("encoder", "weight")) == 1
        assert ("decoder", "weight") not in yielded
        assert ("decoder", "bias") in yielded
        np.testing.assert_array_equal(net.grads["encoder"]["weight"], expected)


@pytest.mark.parametrize("learn_weights", [False, True])
def test_tied_sgd_updates_weight_once(learn_weights):
    net = build_autoencoder(learn_weights)
    before = net.params["encoder"]["weight"].copy()
    net.forward(load_data=False)
    net.backward()
    step = net.grads["encoder"]["weight"].copy()
    if learn_weights:
        step += net.grads["decoder"]["weight"]
    SGD().update(net, learning_rate=0.1, momentum=0.0, regu_coef=0.0)
    np.testing.assert_allclose(
        net.params["decoder"]["weight"], before - 0.1 * step, rtol=1e-12
    )


@pytest.mark.parametrize(
    ("learn_weights", "frozen", "weight_changes", "bias_changes"),
    [
        (False, "decoder", True, False),
        (False, "encoder", False, True),
        (True, "decoder", False, False),
        (True, "encoder", False, True),
    ],
)
def test_tied_freeze(learn_weights, frozen, weight_changes, bias_changes):
    """Freezing Mocha's decoder fixes only its bias. A decoder that learns the
    weight fixes the weight too, as does a frozen encoder."""
    net = build_autoencoder(learn_weights)
    freeze(net, frozen)
    weight = net.params["encoder"]["weight"].copy()
    bias = net.params["decoder"]["bias"].copy()
    net.forward(load_data=False)
    net.backward()
    SGD().update(net, learning_rate=0.1, momentum=0.0, regu_coef=0.0)
    changed = not np.array_equal(net.params["encoder"]["weight"], weight)
    assert changed == weight_changes
    changed = not np.array_equal(net.params["decoder"]["bias"], bias)
    assert changed == bias_changes


@pytest.mark.parametrize("learn_weights", [False, True])
def test_tied_freeze_constraint(learn_weights):
    """The encoder's norm constraint applies while Mocha's decoder is frozen,
    and not while a frozen decoder learns the weight."""
    layers = autoencoder_layers(learn_weights=learn_weights)
    layers[1] = layers[1].replace(weight_cons=L2Cons(threshold=0.1))
    net = Net("autoencoder", CPUBackend(dtype=np.float64, seed=1), layers)
    freeze(net, "decoder")
    weight = net.params["encoder"]["weight"]
    assert np.linalg.norm(weight, axis=1).max() > 0.2
    apply_constraints(net, iteration=1)
    constrained = np.linalg.norm(weight, axis=1).max() <= 0.1 * (1 + 1e-12)
    assert constrained != learn_weights


@pytest.mark.parametrize("learn_weights", [False, True])
def test_tied_optimized_equals_unoptimized(learn_weights):
    names = [("encoder", "weight"), ("encoder", "bias"), ("decoder", "bias")]
    if learn_weights:
        names.append(("decoder", "weight"))
    results = []
    for level in (0, 1):
        backend = CPUBackend(dtype=np.float64, seed=1, threads=2)
        net = Net(
            f"autoencoder-O{level}",
            backend,
            autoencoder_layers(learn_weights=learn_weights),
            opt_level=level,
        )
        objective = net.forward()
        net.backward()
        grads = {name: net.grads[name[0]][name[1]].copy() for name in names}
        results.append((objective, grads))
    assert results[0][0] > 0
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-12)
    for name in names:
        np.testing.assert_allclose(
            results[1][1][name], results[0][1][name], rtol=1e-10, err_msg=str(name)
        )


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


@pytest.mark.parametrize("learn_weights", [False, True])
def test_tied_to_earlier_net_training(learn_weights):
    """A decoder in a net without its encoder trains the shared weight only
    when it learns the weight."""
    backend = CPUBackend(dtype=np.float64, seed=1, threads=1)
    layers = autoencoder_layers(learn_weights=learn_weights)
    train = Net("train", backend, layers)
    codes = RNG.normal(size=(2, 4))
    targets = RNG.normal(size=(2, 6))
    feed = MemoryDataLayer(
        name="codes", batch_size=2, data=[codes, targets], tops=["c", "target"]
    )
    decoder = layers[2].replace(bottoms=["c"])
    loss = SquareLossLayer(name="loss", bottoms=["recon", "target"])
    decode = Net("decode", backend, [feed, decoder, loss])
    weight = train.params["encoder"]["weight"].copy()
    bias = train.params["decoder"]["bias"].copy()
    decode.forward()
    decode.backward()
    SGD().update(decode, learning_rate=0.1, momentum=0.0, regu_coef=0.0)
    changed = not np.array_equal(train.params["encoder"]["weight"], weight)
    assert changed == learn_weights
    assert not np.array_equal(train.params["decoder"]["bias"], bias)


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
    assert layer.learn_weights is False
    weight_spec, spec = layer.param_specs([(2, 3)], {("e", "weight"): (3, 7)})
    assert weight_spec.learned is False
    assert spec.learned is True
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
        ("learn_weights", "yes"),
        ("learn_weights", 1),
    ],
)
def test_tied_invalid_field(field, value):
    fields = {"tied_param_key": "enc", field: value}
    with pytest.raises(ConfigError, match=rf"'dec1'.*invalid {field}="):
        TiedInnerProductLayer(name="dec1", bottoms=["x"], tops=["y"], **fields)
