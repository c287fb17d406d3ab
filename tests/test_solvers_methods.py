"""Nesterov and Adam against NumPy, their parameters, snapshots and exact resume."""

import logging

import h5py
import numpy as np
import pytest

import mochac
from mochac import (
    CPUBackend,
    InnerProductLayer,
    LRPolicy,
    MemoryDataLayer,
    MomPolicy,
    Net,
    Neurons,
    Snapshot,
    SoftmaxLossLayer,
    Solver,
    make_solver_parameters,
)
from mochac.runtime.solver import SGD, Adam, Nesterov

# Local (lr factor, regularization factor) of InnerProductLayer's parameters.
LOCAL = {"weight": (1.0, 1.0), "bias": (2.0, 0.0)}


def classifier_layers(x, y, batch_size=4):
    data = MemoryDataLayer(batch_size=batch_size, data=[x, y])
    hidden = InnerProductLayer(
        name="ip1", output_dim=6, neuron=Neurons.ReLU(), bottoms=["data"], tops=["ip1"]
    )
    out = InnerProductLayer(name="ip2", output_dim=3, bottoms=["ip1"], tops=["ip2"])
    loss = SoftmaxLossLayer(name="loss", bottoms=["ip2", "label"])
    return [data, hidden, out, loss]


def toy_data(n=10, features=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features))
    y = rng.integers(0, 3, size=(n, 1)).astype(np.float64)
    return x, y


def copy_arrays(arrays):
    return {layer: {n: a.copy() for n, a in v.items()} for layer, v in arrays.items()}


def run_steps(method, steps, lr, mom, regu, reference_step):
    """Update a fresh net ``steps`` times with ``method`` and with ``reference_step``.

    ``reference_step(w, g, state, t, lr_factor)`` returns the NumPy update of
    one parameter; ``g`` already holds the regularization term.
    """
    x, y = toy_data()
    net = Net("method", CPUBackend(dtype=np.float64, seed=3), classifier_layers(x, y))
    expected = copy_arrays(net.params)
    states = {}
    for t in range(steps):
        net.forward()
        net.backward()
        grads = copy_arrays(net.grads)
        method.update(net, lr, mom, regu, iteration=t)
        for layer in ("ip1", "ip2"):
            for name, (lr_factor, regu_factor) in LOCAL.items():
                w = expected[layer][name]
                g = grads[layer][name] + 2 * regu_factor * regu * w
                state = states.setdefault((layer, name), {})
                expected[layer][name] = reference_step(w, g, state, t, lr_factor)
    return net, expected


def test_nesterov_matches_numpy():
    lr, mom = 0.1, 0.9

    def nesterov_step(w, g, state, t, lr_factor):
        v = state.get("v", np.zeros_like(w))
        v_new = mom * v - lr * lr_factor * g
        state["v"] = v_new
        # The classic form: W += (1 + mu) * v_new - mu * v.
        return w + (1 + mom) * v_new - mom * v

    net, expected = run_steps(Nesterov(), 4, lr, mom, 0.01, nesterov_step)
    for layer in ("ip1", "ip2"):
        for name in LOCAL:
            np.testing.assert_allclose(
                net.params[layer][name], expected[layer][name], rtol=1e-12, atol=1e-14
            )


def test_nesterov_differs_from_sgd():
    x, y = toy_data()
    results = []
    for method in (SGD(), Nesterov()):
        net = Net("pair", CPUBackend(dtype=np.float64, seed=3), classifier_layers(x, y))
        for t in range(2):
            net.forward()
            net.backward()
            method.update(net, 0.1, 0.9, 0.0, iteration=t)
        results.append(net.params["ip1"]["weight"].copy())
    assert np.abs(results[0] - results[1]).max() > 1e-6


@pytest.mark.parametrize(
    ("beta1", "beta2", "epsilon"), [(0.9, 0.999, 1e-8), (0.5, 0.9, 1e-3)]
)
def test_adam_matches_numpy(beta1, beta2, epsilon):
    lr = 0.01
    method = Adam()
    method.configure(
        make_solver_parameters(
            method, max_iter=1, beta1=beta1, beta2=beta2, epsilon=epsilon
        )
    )

    def adam_step(w, g, state, t, lr_factor):
        # Adam ignores the local lr factor.
        m = beta1 * state.get("m", 0.0) + (1 - beta1) * g
        v = beta2 * state.get("v", 0.0) + (1 - beta2) * g * g
        state["m"], state["v"] = m, v
        m_hat = m / (1 - beta1 ** (t + 1))
        v_hat = v / (1 - beta2 ** (t + 1))
        return w - lr * m_hat / (np.sqrt(v_hat) + epsilon)

    net, expected = run_steps(method, 4, lr, 0.0, 0.01, adam_step)
    for layer in ("ip1", "ip2"):
        for name in LOCAL:
            np.testing.assert_allclose(
                net.params[layer][name], expected[layer][name], rtol=1e-12, atol=1e-14
            )


def test_adam_first_step_is_lr_sized():
    # With bias correction the first step is -lr * g / (|g| + eps), which is
    # -lr * sign(g) to within eps / |g|.
    x, y = toy_data()
    net = Net("first", CPUBackend(dtype=np.float64, seed=3), classifier_layers(x, y))
    before = net.params["ip2"]["weight"].copy()
    net.forward()
    net.backward()
    grad = net.grads["ip2"]["weight"].copy()
    Adam().update(net, 0.01, 0.0, 0.0, iteration=0)
    step = net.params["ip2"]["weight"] - before
    np.testing.assert_allclose(step, -0.01 * grad / (np.abs(grad) + 1e-8), rtol=1e-12)
    large = np.abs(grad) > 1e-4
    assert large.any()
    np.testing.assert_allclose(step[large], -0.01 * np.sign(grad[large]), rtol=1e-4)


def test_make_solver_parameters_per_method():
    adam = make_solver_parameters(Adam(), max_iter=5)
    assert adam["beta1"] == 0.9
    assert adam["beta2"] == 0.999
    assert adam["epsilon"] == 1e-8
    assert "mom_policy" not in adam
    nesterov = make_solver_parameters(
        Nesterov(), max_iter=5, mom_policy=MomPolicy.Fixed(0.9)
    )
    assert nesterov["mom_policy"] == MomPolicy.Fixed(0.9)


@pytest.mark.parametrize(
    ("method", "kwargs", "match"),
    [
        (Adam, {"beta1": 1.0}, "beta1"),
        (Adam, {"beta2": -0.1}, "beta2"),
        (Adam, {"epsilon": 0.0}, "epsilon"),
        (Adam, {"mom_policy": MomPolicy.Fixed(0.9)}, "unknown.*mom_policy"),
        (Nesterov, {"beta1": 0.9}, "unknown.*beta1"),
        (Nesterov, {"mom_policy": 0.9}, "mom_policy"),
        (SGD, {"lr_policy": 0.1}, "lr_policy"),
    ],
)
def test_invalid_solver_parameters(method, kwargs, match):
    with pytest.raises(mochac.ConfigError, match=match):
        make_solver_parameters(method(), max_iter=5, **kwargs)


def make_method(name):
    return {"SGD": SGD, "Nesterov": Nesterov, "Adam": Adam}[name]()


def train(folder, method_name, max_iter, snapshot_every=None, seed=5):
    x, y = toy_data(n=10)
    net = Net(
        "resume", CPUBackend(dtype=np.float64, seed=seed), classifier_layers(x, y)
    )
    method = make_method(method_name)
    policies = {"lr_policy": LRPolicy.Inv(0.01, 0.001, 0.75)}
    if method_name == "Adam":
        policies["beta2"] = 0.99
    else:
        policies["mom_policy"] = MomPolicy.Fixed(0.9)
    params = make_solver_parameters(
        method, max_iter=max_iter, regu_coef=0.001, load_from=str(folder), **policies
    )
    solver = Solver(method, params)
    if snapshot_every:
        solver.add_coffee_break(Snapshot(folder), every_n_iter=snapshot_every)
    solver.solve(net)
    return net, solver


@pytest.mark.parametrize("method_name", ["Nesterov", "Adam"])
def test_resume_is_exact(tmp_path, method_name):
    straight, _ = train(tmp_path / "straight", method_name, 40)
    train(tmp_path / "split", method_name, 20, snapshot_every=20)
    # A different seed proves that every value comes from the snapshot.
    resumed, solver = train(tmp_path / "split", method_name, 40, seed=99)
    assert solver.state.iter == 40
    for layer, params in straight.params.items():
        for name, array in params.items():
            np.testing.assert_allclose(
                resumed.params[layer][name], array, rtol=0, atol=1e-12
            )


def test_adam_snapshot_layout(tmp_path):
    _, solver = train(tmp_path, "Adam", 3, snapshot_every=3)
    with h5py.File(tmp_path / "snapshot-000003.h5", "r") as handle:
        assert handle["solver"].attrs["method"] == "Adam"
        first = handle["solver/first_moment/ip1___weight"][()]
        second = handle["solver/second_moment/ip2___bias"][()]
    np.testing.assert_array_equal(
        first, solver.method.buffers["first_moment"][("ip1", "weight")]
    )
    np.testing.assert_array_equal(
        second, solver.method.buffers["second_moment"][("ip2", "bias")]
    )
    assert np.abs(first).sum() > 0


def test_nesterov_snapshot_keeps_sgd_layout(tmp_path):
    _, solver = train(tmp_path, "Nesterov", 3, snapshot_every=3)
    with h5py.File(tmp_path / "snapshot-000003.h5", "r") as handle:
        assert sorted(handle["solver"].keys()) == ["history"]
        stored = handle["solver/history/ip1___weight"][()]
    np.testing.assert_array_equal(stored, solver.method.history[("ip1", "weight")])


@pytest.mark.parametrize(
    ("saved", "resumed"), [("Nesterov", "SGD"), ("Nesterov", "Adam"), ("Adam", "SGD")]
)
def test_resume_with_other_solver_fails(tmp_path, saved, resumed):
    train(tmp_path, saved, 2, snapshot_every=2)
    with pytest.raises(mochac.SnapshotError, match=f"{saved}.*{resumed}"):
        train(tmp_path, resumed, 4)


def test_nesterov_model_file_starts_at_zero(tmp_path, caplog):
    trained, _ = train(tmp_path / "run", "Nesterov", 3)
    model = tmp_path / "model.h5"
    with h5py.File(model, "w") as handle:
        for layer, params in trained.params.items():
            for name, array in params.items():
                handle[f"{layer}___{name}"] = array
    with caplog.at_level(logging.INFO, logger="mochac"):
        tuned, solver = train(model, "Nesterov", 0)
    assert solver.state.iter == 0
    assert "no solver state" in caplog.text
    np.testing.assert_array_equal(
        tuned.params["ip1"]["weight"], trained.params["ip1"]["weight"]
    )


@pytest.mark.parametrize("epsilon", [float("inf"), float("nan"), -1e-8, "1e-8"])
def test_adam_epsilon_must_be_finite(epsilon):
    with pytest.raises(mochac.ConfigError, match=r"Adam\): invalid epsilon="):
        make_solver_parameters(Adam(), max_iter=1, epsilon=epsilon)


@pytest.mark.parametrize("beta", [float("inf"), float("nan")])
def test_adam_beta_must_be_finite(beta):
    with pytest.raises(mochac.ConfigError, match=r"Adam\): invalid beta1="):
        make_solver_parameters(Adam(), max_iter=1, beta1=beta)


def test_adam_epsilon_above_float32_max():
    x, y = toy_data()
    net = Net("adam32", CPUBackend(seed=1), classifier_layers(x, y))
    params = make_solver_parameters(Adam(), max_iter=1, epsilon=1e39)
    with pytest.raises(mochac.ConfigError, match=r"epsilon=1e\+39 is infinite"):
        Solver(Adam(), params, progress=False).solve(net)


def test_adam_epsilon_numpy_float():
    params = make_solver_parameters(Adam(), max_iter=1, epsilon=np.float32(1e-6))
    method = Adam()
    Solver(method, params, progress=False)
    assert method.epsilon == pytest.approx(1e-6)
