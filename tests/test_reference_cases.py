"""Small inputs with known correct results, beyond the per-layer test files.

A resume with another solver type after a real Nesterov run, fine-tuning
from a model file without solver state, loss shapes checked while the net
is built, and cases whose expected values are worked out by hand, run on
every code path that could compute them differently: both optimization
levels, float32 and float64, and the CPU backend beside GPUBackend on the
host stand-in for CuPy (tests/host_cupy.py).
"""

import logging
import math
import re
import shutil

import h5py
import host_cupy
import numpy as np
import pytest
from test_solver import classifier_layers, toy_data

import mochac
from mochac import (
    SGD,
    AccuracyLayer,
    Adam,
    CPUBackend,
    DataError,
    DropoutLayer,
    HDF5DataLayer,
    IdentityLayer,
    InnerProductLayer,
    MemoryDataLayer,
    MultinomialLogisticLossLayer,
    Nesterov,
    Net,
    ReshapeLayer,
    ShapeError,
    Snapshot,
    SoftmaxLayer,
    SoftmaxLossLayer,
    Solver,
    SquareLossLayer,
    ValidationPerformance,
    make_solver_parameters,
)
from mochac.runtime import data_sources
from mochac.runtime.coffee_breaks import CoffeeBreak
from mochac.runtime.gpu_backend import GPUBackend


@pytest.fixture(params=["cpu", "gpu-host"])
def make_backend(request, monkeypatch):
    """Return a function (dtype, seed) -> backend: CPUBackend, or GPUBackend
    running its generated CUDA on the host stand-in for CuPy."""
    if request.param == "cpu":
        return lambda dtype, seed=0: CPUBackend(dtype=dtype, seed=seed, threads=2)
    if shutil.which("g++") is None:
        pytest.skip("g++ is needed to compile kernels for the host")
    host_cupy.install(monkeypatch)
    return lambda dtype, seed=0: GPUBackend(dtype=dtype, seed=seed)


def to_numpy(array):
    """Return a NumPy copy of a CPU net's array or a GPU net's device array."""
    if isinstance(array, np.ndarray):
        return array.copy()
    return array.get()


def set_param(net, layer, name, values):
    """Write ``values`` into a parameter of a CPU or a GPU net."""
    target = net.params[layer][name]
    values = np.asarray(values, dtype=target.dtype)
    if isinstance(target, np.ndarray):
        target[...] = values
    else:
        target[...] = net.backend.cupy.asarray(values)


def tolerance(dtype):
    """Return a relative tolerance that float32 rounding in a few steps meets."""
    return 1e-12 if dtype == np.float64 else 2e-6


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


def test_loss_shape_error_hdf5_at_build(make_backend, tmp_path, monkeypatch):
    """The same mismatch read from an HDF5 file fails in Net(), on both
    backends, before the file's values are read."""

    def read_values(*args, **kwargs):
        raise AssertionError("the HDF5 values were read before the shape check")

    monkeypatch.setattr(data_sources, "load_hdf5", read_values)
    with h5py.File(tmp_path / "pairs.h5", "w") as handle:
        handle["pred"] = np.zeros((4, 3), np.float32)
        handle["label"] = np.zeros((4, 4), np.float32)
    (tmp_path / "pairs.txt").write_text(f"{tmp_path / 'pairs.h5'}\n")
    data = HDF5DataLayer(
        name="data",
        source=str(tmp_path / "pairs.txt"),
        batch_size=2,
        tops=["pred", "label"],
    )
    loss = SquareLossLayer(name="loss", bottoms=["pred", "label"])
    with pytest.raises(ShapeError) as raised:
        Net("loss-shapes", make_backend(np.float32), [data, loss])
    message = str(raised.value)
    assert "'loss'" in message
    assert "(2, 3)" in message
    assert "(2, 4)" in message


# --- labels out of range -----------------------------------------------------------


@pytest.mark.parametrize("opt_level", [0, 1])
@pytest.mark.parametrize(
    ("labels", "shown", "sample"),
    [([0, 2, 3, 1], "3", 2), ([0, -1, 2, 1], "-1", 1), ([0, 2, 1, 1.5], "1.5", 3)],
)
def test_label_out_of_range_every_path(make_backend, opt_level, labels, shown, sample):
    """The first batch is valid and the second contains one bad label among
    three classes. Label 3, one past the last class, is the value that an
    off-by-one bound check lets through."""
    logits = np.random.default_rng(3).normal(size=(8, 3)).astype(np.float32)
    label = np.array([[0], [2], [1], [1], *([value] for value in labels)], np.float32)
    data = MemoryDataLayer(
        name="data", batch_size=4, tops=["logits", "label"], data=[logits, label]
    )
    loss = SoftmaxLossLayer(name="loss", bottoms=["logits", "label"])
    backend = make_backend(np.float32)
    net = Net("labels", backend, [data, loss], opt_level=opt_level)
    assert net.forward() > 0
    net.backward()

    with pytest.raises(DataError) as raised:
        net.forward()
    message = str(raised.value)
    assert "'loss'" in message
    assert "label blob 'label'" in message
    assert re.search(rf"contains {re.escape(shown)}(\.0)?\b", message)
    assert f"at sample {sample} " in message
    assert "0..2" in message


# --- softmax and its loss at huge logits -------------------------------------------


def huge_logits_layers():
    """Logits [1000, 0, -1000] under label 0 and under label 1, each as its
    own batch of one, and a softmax of [-1e4, -1e4]."""
    logits = np.array([[1000.0, 0.0, -1000.0]], dtype=np.float32)
    return [
        MemoryDataLayer(
            name="data0",
            batch_size=1,
            tops=["x0", "label0"],
            data=[logits, np.array([[0.0]], np.float32)],
        ),
        MemoryDataLayer(
            name="data1",
            batch_size=1,
            tops=["x1", "label1"],
            data=[logits.copy(), np.array([[1.0]], np.float32)],
        ),
        MemoryDataLayer(
            name="data2",
            batch_size=1,
            tops=["equal"],
            data=[np.array([[-1e4, -1e4]], np.float32)],
        ),
        SoftmaxLossLayer(name="loss0", bottoms=["x0", "label0"]),
        SoftmaxLossLayer(name="loss1", bottoms=["x1", "label1"]),
        SoftmaxLayer(name="softmax", bottoms=["equal"], tops=["p_equal"]),
    ]


@pytest.mark.parametrize("opt_level", [0, 1])
def test_softmax_loss_huge_logits_every_path(make_backend, opt_level):
    """Label 0 costs log(1 + e^-1000 + e^-2000), which is 0 in float32, and
    label 1 costs 1000 - 0 + log(1 + e^-1000 + ...) = 1000. The gradient is
    softmax minus one-hot: [1, 0, 0] - [1, 0, 0] and [1, 0, 0] - [0, 1, 0]."""
    backend = make_backend(np.float32)
    net = Net(
        "huge-logits",
        backend,
        huge_logits_layers(),
        force_backward=True,
        opt_level=opt_level,
        keep=["p_equal"],
    )

    objective = net.forward()
    net.backward()

    assert objective == pytest.approx(1000.0, rel=1e-6)
    assert net.states["loss0"][0] == pytest.approx(0.0, abs=1e-6)
    assert net.states["loss1"][0] == pytest.approx(1000.0, rel=1e-6)
    np.testing.assert_allclose(to_numpy(net.diffs["x0"]), [[0, 0, 0]], atol=1e-6)
    np.testing.assert_allclose(to_numpy(net.diffs["x1"]), [[1, -1, 0]], atol=1e-6)
    np.testing.assert_array_equal(to_numpy(net.blobs["p_equal"]), [[0.5, 0.5]])
    for views in (net.blobs, net.diffs):
        for name, array in views.items():
            assert np.all(np.isfinite(to_numpy(array))), name


# --- gradients through reshapes, identities and a blob read twice -----------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("opt_level", [0, 1])
def test_reshape_chain_gradient_every_path(make_backend, opt_level, dtype):
    """x (2, 4) -> InnerProduct(6) -> Reshape -> Reshape back -> Identity ->
    SquareLoss against zeros: the loss is |h|^2 / (2N), so the diff of h is
    h / N, and the weight gradient is (h / N)^T x."""
    x = np.random.default_rng(29).normal(size=(2, 4)).astype(dtype)
    data = MemoryDataLayer(
        name="data", batch_size=2, tops=["x", "zeros"], data=[x, np.zeros((2, 6))]
    )
    layers = [
        data,
        InnerProductLayer(name="ip", bottoms=["x"], tops=["h"], output_dim=6),
        ReshapeLayer(name="to_grid", bottoms=["h"], tops=["grid"], shape=(3, 2)),
        ReshapeLayer(name="to_flat", bottoms=["grid"], tops=["flat"], shape=(6,)),
        IdentityLayer(name="rename", bottoms=["flat"], tops=["out"]),
        SquareLossLayer(name="loss", bottoms=["out", "zeros"]),
    ]
    net = Net(
        "reshape-chain",
        make_backend(dtype, seed=1),
        layers,
        opt_level=opt_level,
        keep=["h"],
    )

    objective = net.forward()
    net.backward()

    h = to_numpy(net.blobs["h"]).astype(np.float64)
    weight = to_numpy(net.params["ip"]["weight"]).astype(np.float64)
    bias = to_numpy(net.params["ip"]["bias"]).astype(np.float64)
    rtol = tolerance(dtype)
    np.testing.assert_allclose(h, x @ weight.T + bias, rtol=rtol * 10, atol=1e-6)
    assert np.all(h != 0)
    assert objective == pytest.approx(np.sum(h**2) / 4, rel=rtol * 10)
    np.testing.assert_allclose(to_numpy(net.diffs["h"]), h / 2, rtol=rtol)
    np.testing.assert_allclose(
        to_numpy(net.grads["ip"]["weight"]), (h / 2).T @ x, rtol=rtol * 10, atol=1e-6
    )
    np.testing.assert_allclose(
        to_numpy(net.grads["ip"]["bias"]), (h / 2).sum(axis=0), rtol=rtol * 10
    )


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("opt_level", [0, 1])
def test_blob_read_twice_gradients_add(make_backend, opt_level, dtype):
    """h = x = [1, 2] feeds SquareLoss against [0, 0] and against [1, 1]:
    L = |h|^2 / 2 + |h - 1|^2 / 2 = 3, and dL/dh = h + (h - 1) = [1, 3]."""
    data = MemoryDataLayer(
        name="data",
        batch_size=1,
        tops=["x", "zeros", "ones"],
        data=[np.array([[1.0, 2.0]]), np.zeros((1, 2)), np.ones((1, 2))],
    )
    layers = [
        data,
        InnerProductLayer(name="ip", bottoms=["x"], tops=["h"], output_dim=2),
        SquareLossLayer(name="loss_zero", bottoms=["h", "zeros"]),
        SquareLossLayer(name="loss_one", bottoms=["h", "ones"]),
    ]
    net = Net(
        "read-twice",
        make_backend(dtype, seed=1),
        layers,
        opt_level=opt_level,
        keep=["h"],
    )
    assert net.ir.inserted_splits == ["h-split"]
    set_param(net, "ip", "weight", np.eye(2))
    set_param(net, "ip", "bias", np.zeros(2))
    objective = net.forward()
    net.backward()

    np.testing.assert_array_equal(to_numpy(net.blobs["h"]), [[1.0, 2.0]])
    assert objective == 3.0
    np.testing.assert_array_equal(to_numpy(net.diffs["h"]), [[1.0, 3.0]])
    # dL/dW = dL/dh^T x = [[1, 2], [3, 6]], and dL/db = dL/dh.
    np.testing.assert_array_equal(
        to_numpy(net.grads["ip"]["weight"]), [[1.0, 2.0], [3.0, 6.0]]
    )
    np.testing.assert_array_equal(to_numpy(net.grads["ip"]["bias"]), [1.0, 3.0])


# --- Xavier initialization ----------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_xavier_in_built_net(make_backend, dtype):
    """An InnerProduct 500 -> 10 gets weights uniform on +-sqrt(3 / 500), whose
    variance (sqrt(3 / 500))^2 / 3 is 1 / 500."""
    data = MemoryDataLayer(
        name="data", batch_size=1, tops=["x"], data=[np.zeros((1, 500))]
    )
    ip = InnerProductLayer(name="ip", bottoms=["x"], tops=["y"], output_dim=10)
    net = Net("xavier", make_backend(dtype, seed=4), [data, ip])
    weight = to_numpy(net.params["ip"]["weight"]).astype(np.float64)
    bound = math.sqrt(3 / 500)
    assert bound == pytest.approx(0.077460, abs=1e-6)
    assert weight.shape == (10, 500)
    # Rounding the bound to float32 may move it up by one unit in the last place.
    assert np.abs(weight).max() <= bound * (1 + 1e-7)
    assert np.abs(weight).max() > 0.99 * bound
    assert weight.var() == pytest.approx(1 / 500, rel=0.05)
    assert abs(weight.mean()) < 0.01


# --- loss inputs of equal size per sample -------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("opt_level", [0, 1])
def test_loss_equal_size_every_path(make_backend, opt_level, dtype):
    """Prediction (2, 3) with label (2, 1, 3): L = 1/(2N) sum of squares, and
    the prediction's diff is (pred - label) / N in the prediction's shape."""
    pred = np.array([[1.0, 2.0, 3.0], [0.0, -1.0, 0.5]])
    label = np.array([[[0.0, 2.0, 1.0]], [[1.0, 1.0, 0.5]]])
    data = MemoryDataLayer(
        name="data", batch_size=2, tops=["pred", "label"], data=[pred, label]
    )
    loss = SquareLossLayer(name="loss", bottoms=["pred", "label"])
    net = Net(
        "loss-sizes",
        make_backend(dtype),
        [data, loss],
        force_backward=True,
        opt_level=opt_level,
    )

    objective = net.forward()
    net.backward()

    difference = pred - label.reshape(2, 3)
    # The squares sum to 1 + 0 + 4 + 1 + 4 + 0 = 10, over 2N = 4.
    assert np.sum(difference**2) == 10.0
    assert objective == pytest.approx(2.5, rel=tolerance(dtype))
    pred_diff = to_numpy(net.diffs["pred"])
    assert pred_diff.shape == (2, 3)
    np.testing.assert_allclose(pred_diff, difference / 2, rtol=tolerance(dtype))


# --- Softmax followed by MultinomialLogisticLoss ----------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("opt_level", [0, 1])
def test_softmax_then_logistic_every_path(make_backend, opt_level, dtype):
    """Logits [0, ln 3] give probabilities [1/4, 3/4]; label 1 costs
    -ln(3/4) = 0.287682, and the logits' gradient is p - onehot."""
    logits = np.array([[0.0, math.log(3.0)]])
    data = MemoryDataLayer(
        name="data",
        batch_size=1,
        tops=["logits", "label"],
        data=[logits, np.array([[1.0]])],
    )
    layers = [
        data,
        SoftmaxLayer(name="softmax", bottoms=["logits"], tops=["probabilities"]),
        MultinomialLogisticLossLayer(
            name="logistic", bottoms=["probabilities", "label"]
        ),
    ]
    net = Net(
        "softmax-logistic",
        make_backend(dtype),
        layers,
        force_backward=True,
        opt_level=opt_level,
        keep=["probabilities"],
    )

    objective = net.forward()
    net.backward()

    atol = 1e-12 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(
        to_numpy(net.blobs["probabilities"]), [[0.25, 0.75]], atol=atol
    )
    assert objective == pytest.approx(-math.log(0.75), abs=atol)
    assert objective == pytest.approx(0.28768, abs=1e-5)
    np.testing.assert_allclose(
        to_numpy(net.diffs["logits"]), [[0.25, -0.25]], atol=atol
    )


# --- class weights --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("opt_level", [0, 1])
def test_class_weights_every_path(make_backend, opt_level, dtype):
    """Zero logits over 3 classes give p = 1/3, so label 2 costs w_2 ln 3 and
    the gradient is w_2 (p - onehot). Weights [1, 2, 3] normalized per
    location to sum to 3 classes are [0.5, 1, 1.5]."""
    cases = {"equal": ([1, 1, 1], "local"), "local": ([1, 2, 3], "local")}
    cases["unnormalized"] = ([1, 2, 3], "no")
    layers = []
    for name, (weights, normalize) in cases.items():
        layers.append(
            MemoryDataLayer(
                name=f"data-{name}",
                batch_size=1,
                tops=[f"logits-{name}", f"label-{name}"],
                data=[np.zeros((1, 3)), np.array([[2.0]])],
            )
        )
        layers.append(
            SoftmaxLossLayer(
                name=name,
                bottoms=[f"logits-{name}", f"label-{name}"],
                weights=weights,
                normalize=normalize,
            )
        )
    net = Net(
        "class-weights",
        make_backend(dtype),
        layers,
        force_backward=True,
        opt_level=opt_level,
    )

    net.forward()
    net.backward()

    rtol = tolerance(dtype)
    ln3 = math.log(3.0)
    expected = {"equal": 1.0, "local": 1.5, "unnormalized": 3.0}
    for name, label_weight in expected.items():
        assert net.states[name][0] == pytest.approx(label_weight * ln3, rel=rtol)
        gradient = label_weight * (np.full(3, 1 / 3) - [0.0, 0.0, 1.0])
        np.testing.assert_allclose(
            to_numpy(net.diffs[f"logits-{name}"]),
            [gradient],
            rtol=rtol,
            err_msg=name,
        )
    assert net.states["local"][0] == pytest.approx(1.647918, abs=1e-6)
    assert net.states["unnormalized"][0] == pytest.approx(3.295837, abs=1e-6)
    np.testing.assert_allclose(
        to_numpy(net.diffs["logits-local"]), [[0.5, 0.5, -1.0]], rtol=rtol
    )


# --- dropout --------------------------------------------------------------------------


@pytest.mark.parametrize("opt_level", [0, 1])
def test_dropout_train_every_path(make_backend, opt_level):
    """Ratio 0.5 on ones(1000): the output is 0 or 2 with mean near 1. Under
    SquareLoss against zeros dL/dy = y / N, so dL/dx = 2 mask y / N, which
    is 4 / N where the mask kept x and 0 elsewhere."""
    ones = np.ones((1000, 1), np.float32)
    data = MemoryDataLayer(
        name="data", batch_size=1000, tops=["x", "zeros"], data=[ones, 0 * ones]
    )
    layers = [
        data,
        DropoutLayer(name="drop", ratio=0.5, bottoms=["x"], tops=["y"]),
        SquareLossLayer(name="loss", bottoms=["y", "zeros"]),
    ]
    net = Net(
        "dropout-train",
        make_backend(np.float32, seed=7),
        layers,
        force_backward=True,
        opt_level=opt_level,
        keep=["x", "y"],
    )

    net.forward()
    net.backward()

    y = to_numpy(net.blobs["y"])
    assert set(np.unique(y)) <= {0.0, 2.0}
    assert abs(y.mean() - 1.0) <= 0.1
    np.testing.assert_array_equal(to_numpy(net.blobs["x"]), ones)
    kept = y == 2.0
    np.testing.assert_allclose(
        to_numpy(net.diffs["x"]), np.where(kept, 4 / 1000, 0.0), rtol=1e-6
    )


@pytest.mark.parametrize("opt_level", [0, 1])
def test_dropout_test_phase_every_path(make_backend, opt_level):
    x = np.random.default_rng(8).normal(size=(6, 5)).astype(np.float32)
    layers = [
        MemoryDataLayer(name="data", batch_size=6, tops=["x"], data=[x]),
        DropoutLayer(name="drop", ratio=0.5, bottoms=["x"], tops=["y"]),
    ]
    net = Net(
        "dropout-test",
        make_backend(np.float32),
        layers,
        phase="test",
        opt_level=opt_level,
        keep=["y"],
    )

    net.forward()
    np.testing.assert_array_equal(to_numpy(net.blobs["y"]), x)


# --- fine-tuning from a model file -------------------------------------------------


class Record(CoffeeBreak):
    """Record the iteration and ip1's weight at each break."""

    def __init__(self):
        self.seen = []

    def enjoy(self, solver, net):
        self.seen.append((solver.state.iter, net.params["ip1"]["weight"].copy()))


def test_model_file_fine_tunes_from_zero(tmp_path, caplog):
    """A model file without solver state starts training at iteration 0 from
    the model's parameters, and logs that the file contains no solver state."""
    x, y = toy_data()
    trained = Net(
        "trained", CPUBackend(dtype=np.float64, seed=5), classifier_layers(x, y)
    )
    params = make_solver_parameters(Nesterov(), max_iter=3, momentum=0.9)
    Solver(Nesterov(), params, progress=False).solve(trained)
    model = tmp_path / "model.h5"
    mochac.save_snapshot(model, trained)

    tuned = Net("tuned", CPUBackend(dtype=np.float64, seed=6), classifier_layers(x, y))
    params = make_solver_parameters(
        Nesterov(), max_iter=2, momentum=0.9, load_from=str(model)
    )
    solver = Solver(Nesterov(), params, progress=False)
    record = Record()
    solver.add_coffee_break(record, every_n_iter=1)
    with caplog.at_level(logging.INFO, logger="mochac"):
        state = solver.solve(tuned)
    assert state.iter == 2
    assert [iteration for iteration, _ in record.seen] == [0, 1, 2]
    np.testing.assert_array_equal(record.seen[0][1], trained.params["ip1"]["weight"])
    assert np.abs(record.seen[2][1] - record.seen[0][1]).max() > 0
    messages = [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("mochac")
    ]
    assert any("no solver state" in message for message in messages)


# --- a validation epoch is one pass ---------------------------------------------------


def test_validation_one_epoch_every_backend(make_backend, caplog):
    """Ten samples in batches of 4, right on samples 0-7 and wrong on 8 and
    9, give 8 of 10. Counting the third batch's wrapped samples 0 and 1
    would give 10 of 12, and so would a mean of the per-batch accuracies."""
    x = np.zeros((10, 3))
    x[np.arange(10), np.arange(10) % 3] = 1.0
    y = (np.arange(10) % 3).astype(np.float64).reshape(10, 1)
    y[8:] = (y[8:] + 1) % 3
    layers = [
        MemoryDataLayer(batch_size=4, data=[x, y]),
        IdentityLayer(bottoms=["data"], tops=["scores"]),
        AccuracyLayer(name="accuracy", bottoms=["scores", "label"]),
    ]
    test_net = Net("validation", make_backend(np.float32), layers)
    validation = ValidationPerformance(test_net)
    solver = Solver(SGD(), make_solver_parameters(SGD(), max_iter=0))
    with caplog.at_level(logging.INFO, logger="mochac"):
        validation.enjoy(solver, test_net)
    assert validation.last["accuracy-accuracy"] == pytest.approx(0.8)
    assert validation.last["accuracy-count"] == 10
    assert "Accuracy (avg over 10) = 80.0000%" in caplog.text
