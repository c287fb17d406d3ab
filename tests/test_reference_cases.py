"""Small inputs with known correct results, beyond the per-layer test files.

A resume with another solver type after a real Nesterov run, loss shapes
checked while the net is built, and out-of-range labels in an optimized
float32 net run end to end.
"""

import re

import numpy as np
import pytest
from test_solver import classifier_layers, toy_data

import mochac
from mochac import (
    SGD,
    Adam,
    CPUBackend,
    DataError,
    MemoryDataLayer,
    Nesterov,
    Net,
    ShapeError,
    Snapshot,
    SoftmaxLossLayer,
    Solver,
    SquareLossLayer,
    make_solver_parameters,
)


def solver_parameters(method, max_iter, folder):
    if isinstance(method, Adam):
        return make_solver_parameters(method, max_iter=max_iter, load_from=folder)
    return make_solver_parameters(
        method, max_iter=max_iter, momentum=0.9, load_from=folder
    )


@pytest.fixture(scope="module")
def nesterov_snapshot(tmp_path_factory):
    """Return the folder of a snapshot taken after 4 Nesterov updates."""
    folder = tmp_path_factory.mktemp("nesterov")
    x, y = toy_data()
    net = Net("nesterov", CPUBackend(dtype=np.float64, seed=5), classifier_layers(x, y))
    solver = Solver(Nesterov(), solver_parameters(Nesterov(), 4, str(folder)))
    solver.add_coffee_break(Snapshot(folder), every_n_iter=4)
    solver.solve(net)
    assert (folder / "snapshot-000004.h5").exists()
    return folder


@pytest.mark.parametrize("method_class", [SGD, Adam])
def test_nesterov_snapshot_other_solver(nesterov_snapshot, method_class):
    x, y = toy_data()
    net = Net("resume", CPUBackend(dtype=np.float64, seed=1), classifier_layers(x, y))
    before = net.params["ip1"]["weight"].copy()
    method = method_class()
    params = solver_parameters(method, 8, str(nesterov_snapshot))
    with pytest.raises(mochac.SnapshotError) as raised:
        Solver(method, params, progress=False).solve(net)
    message = str(raised.value)
    assert "saved by solver Nesterov" in message
    assert f"this solver is {method.name}" in message
    np.testing.assert_array_equal(net.params["ip1"]["weight"], before)


def test_nesterov_snapshot_resumes_with_nesterov(nesterov_snapshot):
    """The same snapshot resumes under its own solver type."""
    x, y = toy_data()
    net = Net("resume", CPUBackend(dtype=np.float64, seed=1), classifier_layers(x, y))
    params = solver_parameters(Nesterov(), 6, str(nesterov_snapshot))
    state = Solver(Nesterov(), params, progress=False).solve(net)
    assert state.iter == 6


def test_loss_shape_error_at_build():
    """Prediction (2, 3) with label (2, 4) fails in Net(), before any batch loads."""
    data = MemoryDataLayer(
        name="data",
        batch_size=2,
        tops=["pred", "label"],
        data=[np.zeros((2, 3)), np.zeros((2, 4))],
    )
    loss = SquareLossLayer(name="loss", bottoms=["pred", "label"])
    with pytest.raises(ShapeError) as raised:
        Net("loss-shapes", CPUBackend(dtype=np.float64), [data, loss])
    message = str(raised.value)
    assert "'loss'" in message
    assert "(2, 3)" in message
    assert "(2, 4)" in message


def test_loss_equal_size_per_sample():
    """Prediction (2, 3) with label (2, 1, 3): 1/(2N) times the sum of squares."""
    pred = np.array([[1.0, 2.0, 3.0], [0.0, -1.0, 0.5]])
    label = np.array([[[0.0, 2.0, 1.0]], [[1.0, 1.0, 0.5]]])
    data = MemoryDataLayer(
        name="data", batch_size=2, tops=["pred", "label"], data=[pred, label]
    )
    loss = SquareLossLayer(name="loss", bottoms=["pred", "label"])
    net = Net("loss-sizes", CPUBackend(dtype=np.float64), [data, loss])
    objective = net.forward()
    squares = sum((p - q) ** 2 for p, q in zip(pred.reshape(-1), label.reshape(-1)))
    assert objective == pytest.approx(squares / 4, rel=1e-15)


def optimized_float32_loss_net():
    """Return a float32 net at -O1: 4 samples of 3 logits under SoftmaxLoss."""
    logits = np.random.default_rng(3).normal(size=(4, 3)).astype(np.float32)
    labels = np.array([[0.0], [2.0], [1.0], [1.0]], dtype=np.float32)
    data = MemoryDataLayer(
        name="data", batch_size=4, tops=["logits", "label"], data=[logits, labels]
    )
    loss = SoftmaxLossLayer(name="loss", bottoms=["logits", "label"])
    backend = CPUBackend(dtype=np.float32, seed=0, threads=2)
    return Net("labels-float32", backend, [data, loss], opt_level=1)


@pytest.mark.parametrize(
    ("labels", "shown", "sample"),
    [([0, 2, 3, 1], "3", 2), ([0, -1, 2, 1], "-1", 1), ([0, 2, 1, 1.5], "1.5", 3)],
)
def test_label_out_of_range_float32_optimized(labels, shown, sample):
    net = optimized_float32_loss_net()
    assert net.forward() > 0
    net.load_batch()
    net.blobs["label"][:, 0] = labels
    with pytest.raises(DataError) as raised:
        net.forward(load_data=False)
    message = str(raised.value)
    assert "'loss'" in message
    assert "label blob 'label'" in message
    assert re.search(rf"contains {re.escape(shown)}(\.0)?\b", message)
    assert f"at sample {sample} " in message
    assert "0..2" in message
