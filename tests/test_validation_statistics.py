"""ValidationPerformance: loss statistics and the phase of the validation net."""

import logging

import h5py
import numpy as np
import pytest

import mochac
from mochac import (
    SGD,
    AccuracyLayer,
    CPUBackend,
    DropoutLayer,
    InnerProductLayer,
    LRPolicy,
    MemoryDataLayer,
    MomPolicy,
    Net,
    Snapshot,
    SoftmaxLossLayer,
    Solver,
    SquareLossLayer,
    ValidationPerformance,
    make_solver_parameters,
)
from mochac.mocha_api import setup


def regression_data(n=10, features=3, outputs=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features))
    y = rng.normal(size=(n, outputs))
    return x, y


def regression_layers(x, y, batch_size):
    data = MemoryDataLayer(batch_size=batch_size, data=[x, y])
    ip = InnerProductLayer(
        name="ip", output_dim=y.shape[1], bottoms=["data"], tops=["pred"]
    )
    loss = SquareLossLayer(name="loss", bottoms=["pred", "label"])
    return [data, ip, loss]


def square_loss(x, y, weight, bias):
    """Return sum((x W^T + b - y)^2) / (2 N) for a batch, in NumPy."""
    pred = x @ weight.T + bias
    return ((pred - y) ** 2).sum() / (2 * len(x))


def net_weights(net):
    weight = net.params["ip"]["weight"]
    bias = net.params["ip"]["bias"].reshape(-1)
    if weight.shape[0] != bias.size:
        weight = weight.T
    return weight, bias


def test_square_loss_statistic_whole_batches():
    x, y = regression_data(n=10)
    net = Net("valid", CPUBackend(dtype=np.float64, seed=1), regression_layers(x, y, 5))
    stats = ValidationPerformance(net).evaluate()
    weight, bias = net_weights(net)
    expected = square_loss(x, y, weight, bias)
    assert stats["loss-square-loss"] == pytest.approx(expected, rel=1e-12)
    assert stats["loss-count"] == 10


def test_square_loss_statistic_wrapped_batch():
    # Ten samples, batch 4: the last batch is samples 8, 9, 0, 1, and only
    # 8 and 9 count, so the statistic is the mean over the ten samples.
    x, y = regression_data(n=10)
    net = Net("valid", CPUBackend(dtype=np.float64, seed=1), regression_layers(x, y, 4))
    stats = ValidationPerformance(net).evaluate()
    weight, bias = net_weights(net)
    expected = square_loss(x, y, weight, bias)
    assert stats["loss-square-loss"] == pytest.approx(expected, rel=1e-12)
    assert stats["loss-count"] == 10


def test_softmax_loss_statistic_name():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 4))
    y = rng.integers(0, 3, size=(6, 1)).astype(np.float64)
    data = MemoryDataLayer(batch_size=3, data=[x, y])
    ip = InnerProductLayer(name="ip", output_dim=3, bottoms=["data"], tops=["ip"])
    loss = SoftmaxLossLayer(name="xent", bottoms=["ip", "label"])
    net = Net("valid", CPUBackend(dtype=np.float64, seed=1), [data, ip, loss])
    stats = ValidationPerformance(net).evaluate()
    weight, bias = net_weights(net)
    scores = x @ weight.T + bias
    scores -= scores.max(axis=1, keepdims=True)
    log_probs = scores - np.log(np.exp(scores).sum(axis=1, keepdims=True))
    expected = -log_probs[np.arange(6), y[:, 0].astype(int)].mean()
    assert stats["xent-softmax-loss"] == pytest.approx(expected, rel=1e-12)
    assert stats["xent-count"] == 6


def test_statistics_reset_between_validations(caplog):
    x, y = regression_data(n=10)
    net = Net("valid", CPUBackend(dtype=np.float64, seed=1), regression_layers(x, y, 5))
    validation = ValidationPerformance(net)
    solver = Solver(SGD(), make_solver_parameters(SGD(), max_iter=0))
    with caplog.at_level(logging.INFO, logger="mochac"):
        validation.enjoy(solver, net)
        first = dict(validation.last)
        validation.enjoy(solver, net)
    assert validation.last == first
    assert validation.last["loss-count"] == 10
    assert "Square loss 'loss' (avg over 10) = " in caplog.text
    assert solver.lounge.statistics["loss-square-loss"][0] == pytest.approx(
        first["loss-square-loss"]
    )


def diverging_solver(folder, x, y):
    """Return (net, solver, policy): a learning rate so large that SGD diverges."""
    backend = CPUBackend(dtype=np.float64, seed=4)
    train_layers = regression_layers(x, y, 5)
    net = Net("train", backend, train_layers)
    test_layers = [
        MemoryDataLayer(batch_size=5, data=[x, y]),
        *train_layers[1:],
    ]
    test_net = Net("test", backend, test_layers)
    policy = LRPolicy.DecayOnValidation(
        5.0, "loss-square-loss", 0.5, higher_better=False
    )
    params = make_solver_parameters(
        SGD(), max_iter=4, lr_policy=policy, mom_policy=MomPolicy.Fixed(0.0)
    )
    solver = Solver(SGD(), params)
    solver.add_coffee_break(Snapshot(folder), every_n_iter=2)
    validation = ValidationPerformance(test_net)
    solver.add_coffee_break(validation, every_n_iter=2)
    setup(policy, validation, solver)
    return net, solver, policy


def test_decay_on_validation_square_loss(tmp_path):
    # A square loss that grows between validations decays the rate when
    # lower is better, and the snapshot of the best validation comes back.
    x, y = regression_data(n=10, features=4, seed=5)
    x *= 3.0
    net, solver, policy = diverging_solver(tmp_path, x, y)
    solver.solve(net)
    losses = solver.lounge.statistics["loss-square-loss"]
    assert losses[2] > losses[0]
    assert policy(solver.state) < 5.0
    with h5py.File(tmp_path / "snapshot-000000.h5", "r") as handle:
        best_weight = handle["ip___weight"][()]
    np.testing.assert_array_equal(net.params["ip"]["weight"], best_weight)


def test_decay_on_validation_unknown_key_before_training(tmp_path):
    x, y = regression_data(n=10, features=4, seed=5)
    net, solver, policy = diverging_solver(tmp_path, x, y)
    policy.key = "loss-squared-loss"
    before = net.params["ip"]["weight"].copy()
    with pytest.raises(mochac.ConfigError, match="available: loss-square-loss"):
        solver.solve(net)
    assert solver.state.iter == 0
    np.testing.assert_array_equal(net.params["ip"]["weight"], before)


def test_decay_on_validation_rejects_count_key(tmp_path):
    """The number of validation samples never changes, so a policy that
    followed it would never decay."""
    x, y = regression_data(n=10, features=4, seed=5)
    net, solver, policy = diverging_solver(tmp_path, x, y)
    policy.key = "loss-count"
    with pytest.raises(mochac.ConfigError, match="'loss-count' counts the valid"):
        solver.solve(net)
    assert solver.state.iter == 0


def dropout_layers(x, y, with_loss):
    data = MemoryDataLayer(batch_size=5, data=[x, y])
    drop = DropoutLayer(name="drop", ratio=0.5, bottoms=["data"], tops=["dropped"])
    ip = InnerProductLayer(
        name="ip", output_dim=y.shape[1], bottoms=["dropped"], tops=["pred"]
    )
    layers = [data, drop, ip]
    if with_loss:
        layers.append(SquareLossLayer(name="loss", bottoms=["pred", "label"]))
    return layers


def test_train_phase_dropout_net_rejected():
    x, y = regression_data(n=10)
    net = Net("valid", CPUBackend(dtype=np.float64), dropout_layers(x, y, True))
    assert net.phase == "train"
    with pytest.raises(mochac.ConfigError) as error:
        ValidationPerformance(net)
    message = str(error.value)
    assert "DropoutLayer 'drop'" in message
    assert "loss layer 'loss'" in message
    assert 'phase="test"' in message


def test_test_phase_dropout_net_copies():
    x, y = regression_data(n=10)
    net = Net(
        "valid",
        CPUBackend(dtype=np.float64, seed=1),
        dropout_layers(x, y, True),
        phase="test",
        keep=["dropped"],
    )
    stats = ValidationPerformance(net).evaluate()
    weight, bias = net_weights(net)
    assert stats["loss-square-loss"] == pytest.approx(
        square_loss(x, y, weight, bias), rel=1e-12
    )
    net.forward()
    np.testing.assert_array_equal(net.blobs["dropped"], net.blobs["data"])


def test_loss_net_without_dropout_accepted():
    x, y = regression_data(n=10)
    net = Net("valid", CPUBackend(dtype=np.float64), regression_layers(x, y, 5))
    assert net.phase == "train"
    assert ValidationPerformance(net).test_net is net


def test_net_without_statistics_warns(caplog):
    x, y = regression_data(n=10)
    layers = regression_layers(x, y, 5)[:2]
    net = Net("valid", CPUBackend(dtype=np.float64), layers)
    with caplog.at_level(logging.WARNING, logger="mochac"):
        ValidationPerformance(net)
    assert "has no accuracy or loss layer" in caplog.text


def test_unshared_validation_net_warns(caplog):
    x, y = regression_data(n=10)
    train_net = Net("train", CPUBackend(dtype=np.float64), regression_layers(x, y, 5))
    other = Net("other", CPUBackend(dtype=np.float64), regression_layers(x, y, 5))
    shared = Net("shared", train_net.backend, regression_layers(x, y, 5))
    solver = Solver(SGD(), make_solver_parameters(SGD(), max_iter=0))
    with caplog.at_level(logging.WARNING, logger="mochac"):
        ValidationPerformance(shared).enjoy(solver, train_net)
    assert "shares no parameter" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="mochac"):
        ValidationPerformance(other).enjoy(solver, train_net)
    assert "net 'other' shares no parameter with net 'train'" in caplog.text


def decay_run(folder, max_iter, order):
    """Train a regression whose validation loss gets worse now and then.

    Returns (net, policy, decay iterations). ``order`` puts the Snapshot
    coffee break before or after the ValidationPerformance one.
    """
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 10))
    w = rng.standard_normal((10, 1))
    valid_x = rng.standard_normal((50, 10))
    backend = CPUBackend(dtype=np.float64, seed=1)
    ip = InnerProductLayer(name="ip", output_dim=1, bottoms=["data"], tops=["pred"])
    loss = SquareLossLayer(name="loss", bottoms=["pred", "label"])
    data = MemoryDataLayer(name="d", batch_size=20, data=[x, x @ w])
    valid_data = MemoryDataLayer(name="vd", batch_size=25, data=[valid_x, valid_x @ w])
    net = Net("train", backend, [data, ip, loss])
    test_net = Net("test", backend, [valid_data, ip, loss])
    policy = LRPolicy.DecayOnValidation(
        0.1, "loss-square-loss", 0.5, higher_better=False
    )
    params = make_solver_parameters(
        SGD(), max_iter=max_iter, lr_policy=policy, momentum=0.9, load_from=folder
    )
    solver = Solver(SGD(), params, progress=False)
    validation = ValidationPerformance(test_net)
    breaks = [Snapshot(folder), validation]
    if order == "validation first":
        breaks.reverse()
    for coffee_break in breaks:
        solver.add_coffee_break(coffee_break, every_n_iter=10)
    setup(policy, validation, solver)
    decays = []
    rates = [policy.learning_rate]

    def record(solver, stats):
        if policy.learning_rate < rates[-1]:
            decays.append(solver.state.iter)
        rates.append(policy.learning_rate)

    validation.listeners.append(record)
    solver.solve(net)
    return net, policy, decays


@pytest.mark.parametrize("order", ["snapshot first", "validation first"])
def test_resume_after_decay_at_snapshot(tmp_path, order):
    # A run stopped right at a decay and resumed ends as the uninterrupted
    # run does: the same later decays, rate and parameters.
    whole, whole_policy, decays = decay_run(tmp_path / "whole", 80, order)
    assert len(decays) >= 2, "the test needs a decay before another one"
    stop = decays[0]
    decay_run(tmp_path / "parts", stop, order)
    resumed, resumed_policy, resumed_decays = decay_run(tmp_path / "parts", 80, order)
    assert resumed_decays == [i for i in decays if i > stop]
    assert resumed_policy.learning_rate == whole_policy.learning_rate
    assert resumed_policy.best == whole_policy.best
    np.testing.assert_array_equal(
        resumed.params["ip"]["weight"], whole.params["ip"]["weight"]
    )


@pytest.mark.parametrize("order", ["snapshot first", "validation first"])
def test_resume_between_validations(tmp_path, order):
    # Stopped at the last validation before the first decay, the resumed run
    # still has the best value, so it decays where the whole run does.
    whole, _, decays = decay_run(tmp_path / "whole", 80, order)
    stop = decays[0] - 10
    assert stop > 0
    decay_run(tmp_path / "parts", stop, order)
    resumed, _, resumed_decays = decay_run(tmp_path / "parts", 80, order)
    assert resumed_decays == [i for i in decays if i > stop]
    np.testing.assert_array_equal(
        resumed.params["ip"]["weight"], whole.params["ip"]["weight"]
    )


def test_two_validation_nets_with_same_layer_names_warn(caplog):
    """Both test nets' AccuracyLayers are named 'accuracy', so their values
    would share the coffee lounge's series 'accuracy-accuracy'."""
    x, y = regression_data(n=8, features=4, seed=5)
    labels = (y[:, :1] > 0).astype(np.float64)
    backend = CPUBackend(dtype=np.float64, seed=1)
    ip = InnerProductLayer(name="ip", output_dim=2, bottoms=["data"], tops=["ip"])

    def net(name, with_loss):
        last = (
            SoftmaxLossLayer(name="loss", bottoms=["ip", "label"])
            if with_loss
            else AccuracyLayer(name="accuracy", bottoms=["ip", "label"])
        )
        data = MemoryDataLayer(batch_size=4, data=[x, labels])
        return Net(name, backend, [data, ip, last])

    solver = Solver(SGD(), make_solver_parameters(SGD(), max_iter=2))
    solver.add_coffee_break(ValidationPerformance(net("test-a", False)), every_n_iter=2)
    solver.add_coffee_break(ValidationPerformance(net("test-b", False)), every_n_iter=2)
    with caplog.at_level(logging.WARNING, logger="mochac.runtime.solver"):
        solver.solve(net("train", True))
    assert (
        "the validation nets 'test-a' and 'test-b' both report 'accuracy-accuracy'"
        in caplog.text
    )


def test_validation_rejects_non_net():
    import types

    with pytest.raises(
        mochac.ConfigError, match="expected a Net to validate, got None"
    ):
        ValidationPerformance(None)
    package = types.ModuleType("toy_test")
    package.net = object()
    with pytest.raises(
        mochac.ConfigError, match="pass the package's net, toy_test.net"
    ):
        ValidationPerformance(package)


@pytest.mark.parametrize("test_net", [None, 0.5, ["ip1", "loss"]])
def test_validation_rejects_other_types(test_net):
    with pytest.raises(mochac.ConfigError, match="expected a Net to validate"):
        ValidationPerformance(test_net)
