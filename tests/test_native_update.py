"""The compiled update and training step give the NumPy update's values.

Two copies of one net (same seed, separate backends) train side by side: one
through Net.train_step (forward, backward and update in one native call),
the other through forward, backward and the method's numpy_update. Their
parameters and solver buffers must stay bit for bit equal, with L1 and L2
regularization, local learning-rate factors, parameters shared by
param_key (gradients summed over users) and a frozen layer.
"""

from dataclasses import dataclass

import numpy as np
import pytest

from mochac import (
    ConfigError,
    ConvolutionLayer,
    CPUBackend,
    InnerProductLayer,
    MemoryDataLayer,
    Net,
    NumericalError,
    SoftmaxLossLayer,
    SquareLossLayer,
)
from mochac.regularizers import L1Regu, L2Regu, Regularizer
from mochac.runtime import native_update
from mochac.runtime.freeze import freeze
from mochac.runtime.solvers import SGD, Adam, Nesterov

ITERATIONS = 4


def layers(batch=6, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(batch * 2, 2, 6, 6))
    labels = rng.integers(0, 3, size=(batch * 2, 1)).astype(float)
    side = rng.normal(size=(batch * 2, 5))
    target = rng.normal(size=(batch * 2, 3))
    return [
        MemoryDataLayer(
            name="data",
            batch_size=batch,
            tops=["data", "label", "side", "target"],
            data=[images, labels, side, target],
        ),
        ConvolutionLayer(
            name="conv",
            bottoms=["data"],
            tops=["conv"],
            kernel=3,
            n_filter=4,
            filter_regu=L1Regu(0.5),
            filter_lr=0.5,
        ),
        InnerProductLayer(
            name="ip",
            bottoms=["conv"],
            tops=["ip"],
            output_dim=3,
            weight_regu=L2Regu(2),
        ),
        SoftmaxLossLayer(name="loss", bottoms=["ip", "label"]),
        # Two users of one array: the update sums their gradients.
        InnerProductLayer(
            name="side1", param_key="side", bottoms=["side"], tops=["s1"], output_dim=3
        ),
        InnerProductLayer(
            name="side2",
            param_key="side",
            bottoms=["side"],
            tops=["s2"],
            output_dim=3,
            weight_lr=3.0,
        ),
        SquareLossLayer(name="square1", bottoms=["s1", "target"]),
        SquareLossLayer(name="square2", bottoms=["s2", "target"], weight=0.5),
    ]


def make_net(dtype, seed=1, **kwargs):
    return Net("native", CPUBackend(dtype=dtype, seed=seed), layers(**kwargs))


def make_method(kind):
    method = {"sgd": SGD, "nesterov": Nesterov, "adam": Adam}[kind]()
    if kind == "adam":
        method.configure({"beta1": 0.8, "beta2": 0.95, "epsilon": 1e-6})
    return method


def train_pair(kind, dtype, frozen=()):
    native, reference = make_net(dtype), make_net(dtype)
    for net in (native, reference):
        if frozen:
            freeze(net, *frozen)
    native_method, reference_method = make_method(kind), make_method(kind)
    objectives = []
    for iteration in range(ITERATIONS):
        lr, momentum = 0.05 / (1 + iteration), 0.9
        a = native.train_step(native_method, lr, momentum, 0.01, iteration)
        b = reference.forward()
        reference.backward()
        reference_method.numpy_update(reference, lr, momentum, 0.01, iteration)
        objectives.append((a, b))
    return native, reference, native_method, reference_method, objectives


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["sgd", "nesterov", "adam"])
def test_native_step_matches_numpy(kind, dtype):
    native, reference, native_method, reference_method, objectives = train_pair(
        kind, dtype
    )
    assert native_update.tables_for(native, native_method, 0.01) is not None
    for a, b in objectives:
        assert a == b
    for layer, params in reference.params.items():
        for name, values in params.items():
            assert np.array_equal(native.params[layer][name], values), (layer, name)
    for name, buffers in reference_method.buffers.items():
        assert buffers.keys() == native_method.buffers[name].keys()
        for key, values in buffers.items():
            assert np.array_equal(native_method.buffers[name][key], values), key
    # The parameters moved, so the comparison above is not between two
    # untouched copies.
    start = make_net(dtype)
    assert not np.array_equal(
        start.params["ip"]["weight"], native.params["ip"]["weight"]
    )


def test_shared_array_updated_once():
    net = make_net(np.float64)
    method = SGD()
    tables = native_update.tables_for(net, method, 0.0)
    # conv (filter, bias), ip (weight, bias), and the shared side pair once.
    assert tables.n_updates == 6
    assert tables.n_sums == 2


def test_frozen_layer_stays():
    native, reference, *_ = train_pair("sgd", np.float64, frozen=("conv",))
    start = make_net(np.float64)
    for net in (native, reference):
        assert np.array_equal(
            net.params["conv"]["filter"], start.params["conv"]["filter"]
        )
    assert np.array_equal(
        native.params["ip"]["weight"], reference.params["ip"]["weight"]
    )


def test_tables_follow_freeze_and_new_buffers():
    net = make_net(np.float64)
    method = SGD()
    first = native_update.tables_for(net, method, 0.0)
    assert native_update.tables_for(net, method, 0.0) is first
    freeze(net, "ip")
    assert native_update.tables_for(net, method, 0.0).n_updates == 4
    method.load_buffers({}, CPUBackend(dtype=np.float64))
    # The new (empty) buffers are filled and used, not the old arrays.
    assert native_update.tables_for(net, method, 0.0).n_updates == 4
    net.forward()
    net.backward()
    method.update(net, 0.1, 0.9, 0.0)
    assert len(method.buffers["history"]) == 4
    assert all(array.any() for array in method.buffers["history"].values())


@dataclass(frozen=True)
class HalfL2(Regularizer):
    """A user's regularizer without a native form."""

    coefficient: float = 1.0

    def add_gradient(self, param, grad, global_coef):
        grad += param.dtype.type(self.coefficient * global_coef) * param


def test_unknown_regularizer_uses_numpy():
    parts = layers()
    parts[2] = InnerProductLayer(
        name="ip", bottoms=["conv"], tops=["ip"], output_dim=3, weight_regu=HalfL2()
    )
    net = Net("fallback", CPUBackend(dtype=np.float64, seed=1), parts)
    method = SGD()
    assert native_update.tables_for(net, method, 0.01) is None
    before = net.params["ip"]["weight"].copy()
    objective = net.train_step(method, 0.1, 0.9, 0.01, 0)
    assert np.isfinite(objective)
    assert not np.array_equal(before, net.params["ip"]["weight"])


def test_nan_loss_stops_before_update():
    parts = layers()
    # Data layers reject NaN, so the convolution makes one: image 0 overflows
    # it to infinity, and the inner product's mixed signs turn that into NaN.
    images = parts[0].data[0].copy()
    images[0] = 1e308
    parts[0] = MemoryDataLayer(
        name="data",
        batch_size=6,
        tops=["data", "label", "side", "target"],
        data=[images, *parts[0].data[1:]],
    )
    net = Net("nan", CPUBackend(dtype=np.float64, seed=1), parts)
    net.params["conv"]["filter"][...] = 10.0
    saved = {
        (layer, name): values.copy()
        for layer, params in net.params.items()
        for name, values in params.items()
    }
    with pytest.raises(
        NumericalError, match="loss layer .loss.*did not update the parameters"
    ):
        net.train_step(SGD(), 0.1, 0.9, 0.01, 0)
    for (layer, name), values in saved.items():
        assert np.array_equal(net.params[layer][name], values)


def test_adam_needs_iteration():
    net = make_net(np.float64)
    with pytest.raises(ConfigError, match="missing iteration"):
        net.train_step(Adam(), 0.1, 0.0, 0.0)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ((-0.1, 0.9, 0.0), "learning_rate=-0.1"),
        ((0.1, 1.5, 0.0), r"momentum=1.5 .*in \[0, 1\)"),
        ((0.1, -0.2, 0.0), "momentum=-0.2"),
        ((0.1, 0.9, -1.0), "regu_coef=-1.0"),
        ((float("nan"), 0.9, 0.0), "learning_rate=nan"),
    ],
)
@pytest.mark.parametrize("step", ["train_step", "apply_update", "solver_step"])
def test_step_settings_out_of_range(step, settings, match):
    """The net's own step methods reject what the solver rejects from its
    policies, and leave the parameters as they were."""
    net = make_net(np.float64)
    net.forward_backward(SGD(), 0.0)
    before = net.params["conv"]["filter"].copy()
    with pytest.raises(ConfigError, match=match):
        getattr(net, step)(SGD(), *settings, 0)
    np.testing.assert_array_equal(net.params["conv"]["filter"], before)


@pytest.mark.parametrize(
    ("method", "match"),
    [
        (SGD, r"got the class SGD; pass an instance, SGD\(\)"),
        ("sgd", "invalid method 'sgd'"),
    ],
)
@pytest.mark.parametrize(
    "step", ["train_step", "apply_update", "solver_step", "forward_backward"]
)
def test_step_rejects_non_method(step, method, match):
    """A method class or name passed for SGD() raised AttributeError."""
    net = make_net(np.float64)
    before = net.params["conv"]["filter"].copy()
    settings = (0.0,) if step == "forward_backward" else (0.1, 0.9, 0.0, 0)
    with pytest.raises(ConfigError, match=f"net.{step}: {match}"):
        getattr(net, step)(method, *settings)
    np.testing.assert_array_equal(net.params["conv"]["filter"], before)


@pytest.mark.parametrize("iteration", [-1, 2.5, "3", 2**63 - 1, 2**63])
@pytest.mark.parametrize("step", ["train_step", "apply_update", "solver_step"])
def test_step_iteration_must_be_a_count(step, iteration):
    """Adam's bias correction with iteration -1 divides by zero, and the
    step made every parameter NaN."""
    net = make_net(np.float64)
    net.forward_backward(Adam(), 0.0)
    before = net.params["conv"]["filter"].copy()
    with pytest.raises(ConfigError, match=f"invalid iteration={iteration!r}"):
        getattr(net, step)(Adam(), 0.001, 0.0, 0.0, iteration)
    np.testing.assert_array_equal(net.params["conv"]["filter"], before)


@pytest.mark.parametrize("regu_coef", [float("nan"), -1.0, "x"])
def test_forward_backward_checks_regu_coef(regu_coef):
    net = make_net(np.float64)
    with pytest.raises(ConfigError, match="invalid regu_coef="):
        net.forward_backward(SGD(), regu_coef)
