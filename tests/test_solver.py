"""Solver tests: SGD against NumPy, policies, exact resume, snapshots, validation."""

import logging
import math
import re
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

import mochac
from mochac import (
    SGD,
    AccuracyLayer,
    Adam,
    CPUBackend,
    DropoutLayer,
    InnerProductLayer,
    LRPolicy,
    MemoryDataLayer,
    MomPolicy,
    Nesterov,
    Net,
    Neurons,
    Snapshot,
    SoftmaxLossLayer,
    Solver,
    TrainingSummary,
    ValidationPerformance,
    make_solver_parameters,
)
from mochac.runtime import resume_point
from mochac.runtime.coffee_breaks import CoffeeBreak
from mochac.runtime.resume_point import ResumePoint
from mochac.runtime.solver import SolverState


def classifier_layers(x, y, batch_size=4, shuffle_seed=None):
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


def test_sgd_matches_numpy_update():
    x, y = toy_data()
    net = Net("sgd", CPUBackend(dtype=np.float64, seed=3), classifier_layers(x, y))
    method = SGD()
    before = {k: {n: a.copy() for n, a in v.items()} for k, v in net.params.items()}
    history = {}
    lr, mom, regu = 0.1, 0.9, 0.01
    for step in range(3):
        net.forward()
        net.backward()
        grads = {k: {n: a.copy() for n, a in v.items()} for k, v in net.grads.items()}
        method.update(net, lr, mom, regu)
        for layer in ("ip1", "ip2"):
            local = {"weight": (1.0, 1.0), "bias": (2.0, 0.0)}
            for name, (lr_factor, regu_factor) in local.items():
                w = before[layer][name]
                g = grads[layer][name] + 2 * regu_factor * regu * w
                h = history.get((layer, name), np.zeros_like(w))
                h = mom * h - lr * lr_factor * g
                history[(layer, name)] = h
                before[layer][name] = w + h
                np.testing.assert_allclose(net.params[layer][name], w + h, rtol=1e-12)


@pytest.mark.parametrize(
    ("policy", "iteration", "expected"),
    [
        (LRPolicy.Fixed(0.1), 50, 0.1),
        (LRPolicy.Step(0.1, 0.5, 10), 25, 0.1 * 0.25),
        (LRPolicy.Exp(0.1, 0.9), 3, 0.1 * 0.9**3),
        (LRPolicy.Inv(0.01, 0.0001, 0.75), 1000, 0.01 * (1 + 0.1) ** -0.75),
        (LRPolicy.Staged((10, LRPolicy.Fixed(1.0)), (5, LRPolicy.Fixed(0.5))), 9, 1.0),
        (LRPolicy.Staged((10, LRPolicy.Fixed(1.0)), (5, LRPolicy.Fixed(0.5))), 10, 0.5),
        (LRPolicy.Staged((10, LRPolicy.Fixed(1.0)), (5, LRPolicy.Fixed(0.5))), 99, 0.5),
    ],
)
def test_lr_policies(policy, iteration, expected):
    assert math.isclose(policy(SolverState(iter=iteration)), expected, rel_tol=1e-12)


def test_policy_fields_validated():
    with pytest.raises(mochac.ConfigError, match="stepsize"):
        LRPolicy.Step(0.1, 0.5, 0)
    with pytest.raises(mochac.ConfigError, match="base_mom"):
        MomPolicy.Fixed(1.5)
    with pytest.raises(mochac.ConfigError, match="max_iter"):
        make_solver_parameters(SGD(), max_iter=-1)
    with pytest.raises(mochac.ConfigError, match="unknown"):
        make_solver_parameters(Adam(), max_iter=1, momentum=0.9)
    with pytest.raises(mochac.ConfigError, match="give one of them"):
        make_solver_parameters(
            SGD(), max_iter=1, momentum=0.9, mom_policy=MomPolicy.Fixed(0.5)
        )
    with pytest.raises(mochac.ConfigError, match="base_mom"):
        make_solver_parameters(SGD(), max_iter=1, momentum=1.5)


@pytest.mark.parametrize("method", [SGD(), Nesterov()])
def test_momentum_keyword_sets_fixed_policy(method):
    # Mocha's CIFAR-10 tutorial passes momentum=0.9 to its solver parameters.
    params = make_solver_parameters(method, max_iter=1, momentum=0.9)
    assert params["mom_policy"](SolverState(iter=7)) == 0.9
    assert "momentum" not in params


def train(folder, max_iter, snapshot_every=None, seed=5):
    x, y = toy_data(n=10)
    layers = classifier_layers(x, y, batch_size=4)
    backend = CPUBackend(dtype=np.float64, seed=seed)
    net = Net("resume", backend, layers)
    params = make_solver_parameters(
        SGD(),
        max_iter=max_iter,
        regu_coef=0.001,
        lr_policy=LRPolicy.Inv(0.01, 0.001, 0.75),
        mom_policy=MomPolicy.Fixed(0.9),
        load_from=str(folder),
    )
    solver = Solver(SGD(), params)
    if snapshot_every:
        solver.add_coffee_break(Snapshot(folder), every_n_iter=snapshot_every)
    solver.solve(net)
    return net, solver


def test_resume_is_exact(tmp_path):
    straight, _ = train(tmp_path / "straight", 200, seed=5)
    train(tmp_path / "split", 100, snapshot_every=100, seed=5)
    assert (tmp_path / "split" / "snapshot-000100.h5").exists()
    # A different seed proves that every value comes from the snapshot.
    resumed, solver = train(tmp_path / "split", 200, seed=99)
    assert solver.state.iter == 200
    for layer, params in straight.params.items():
        for name, array in params.items():
            np.testing.assert_allclose(
                resumed.params[layer][name], array, rtol=0, atol=1e-12
            )


def test_obj_val_is_loss_after_update():
    """Mocha's order: obj_val at iteration k is the loss after k updates, on
    the batch whose gradients update k + 1 applies."""
    x, y = toy_data()

    def make_net():
        backend = CPUBackend(dtype=np.float64, seed=4)
        return Net("order", backend, classifier_layers(x, y))

    # train_step j returns the loss of batch j on the parameters after
    # j - 1 updates, which is obj_val at iteration j - 1.
    reference, method = make_net(), SGD()
    expected = [reference.train_step(method, 0.1, 0.9, 0.0005, j) for j in range(4)]
    three_updates, method = make_net(), SGD()
    for j in range(3):
        three_updates.train_step(method, 0.1, 0.9, 0.0005, j)

    net = make_net()
    params = make_solver_parameters(
        SGD(),
        max_iter=3,
        lr_policy=LRPolicy.Fixed(0.1),
        mom_policy=MomPolicy.Fixed(0.9),
    )
    solver = Solver(SGD(), params, progress=False)
    seen = []

    class Record(CoffeeBreak):
        def enjoy(self, solver, net):
            seen.append((solver.state.iter, solver.state.obj_val))

    solver.add_coffee_break(Record(), every_n_iter=1)
    state = solver.solve(net)
    assert [iteration for iteration, _ in seen] == [0, 1, 2, 3]
    values = [value for _, value in seen]
    np.testing.assert_allclose(values, expected, rtol=1e-12)
    assert values[1] != values[0]
    assert state.obj_val == values[-1]
    for layer, arrays in three_updates.params.items():
        for name, array in arrays.items():
            np.testing.assert_allclose(net.params[layer][name], array, rtol=1e-12)
    # The batch loaded after the last update waits for the next solve.
    source = net.sources[0].state_dict()
    assert source["position"] == three_updates.sources[0].state_dict()["position"]


def dropout_train(folder, max_iter, snapshot_every=None, seed=5):
    x, y = toy_data(n=10)
    layers = [
        MemoryDataLayer(batch_size=4, data=[x, y]),
        InnerProductLayer(name="ip1", output_dim=6, bottoms=["data"], tops=["ip1"]),
        DropoutLayer(name="drop", ratio=0.5, bottoms=["ip1"], tops=["dropped"]),
        InnerProductLayer(name="ip2", output_dim=3, bottoms=["dropped"], tops=["ip2"]),
        SoftmaxLossLayer(name="loss", bottoms=["ip2", "label"]),
    ]
    net = Net("dropout", CPUBackend(dtype=np.float64, seed=seed), layers)
    params = make_solver_parameters(
        SGD(),
        max_iter=max_iter,
        lr_policy=LRPolicy.Fixed(0.05),
        mom_policy=MomPolicy.Fixed(0.9),
        load_from=str(folder),
    )
    solver = Solver(SGD(), params, progress=False)
    if snapshot_every:
        solver.add_coffee_break(Snapshot(folder), every_n_iter=snapshot_every)
    solver.solve(net)
    return net


@pytest.mark.parametrize("split", [3, 5])
def test_resume_with_dropout_is_exact(tmp_path, split):
    # A snapshot after 3 or 5 updates of batches of 4 from 10 samples falls
    # inside an epoch. The resumed run must load the same batches and draw
    # the same dropout masks.
    straight = dropout_train(tmp_path / "straight", 8)
    dropout_train(tmp_path / "split", split, snapshot_every=split)
    resumed = dropout_train(tmp_path / "split", 8, seed=99)
    for layer, params in straight.params.items():
        for name, array in params.items():
            np.testing.assert_array_equal(resumed.params[layer][name], array)


def test_resume_restores_momentum(tmp_path):
    _, first = train(tmp_path, 100, snapshot_every=100)
    with h5py.File(tmp_path / "snapshot-000100.h5", "r") as handle:
        stored = handle["solver/history/ip1___weight"][()]
    np.testing.assert_array_equal(stored, first.method.history[("ip1", "weight")])
    assert np.abs(stored).sum() > 0


class OtherSolver(SGD):
    name = "Nesterov"


def test_resume_with_other_solver_fails(tmp_path):
    train(tmp_path, 10, snapshot_every=10)
    x, y = toy_data()
    net = Net("other", CPUBackend(dtype=np.float64, seed=1), classifier_layers(x, y))
    params = make_solver_parameters(OtherSolver(), max_iter=20, load_from=str(tmp_path))
    with pytest.raises(mochac.SnapshotError, match="SGD.*Nesterov"):
        Solver(OtherSolver(), params).solve(net)


def test_model_file_starts_at_zero(tmp_path, caplog):
    net, _ = train(tmp_path / "run", 5)
    model = tmp_path / "model.h5"
    with h5py.File(model, "w") as handle:
        for layer, params in net.params.items():
            for name, array in params.items():
                handle[f"{layer}___{name}"] = array
    x, y = toy_data()
    fresh = Net("tune", CPUBackend(dtype=np.float64, seed=8), classifier_layers(x, y))
    params = make_solver_parameters(SGD(), max_iter=0, load_from=str(model))
    with caplog.at_level(logging.INFO, logger="mochac"):
        state = Solver(SGD(), params).solve(fresh)
    assert state.iter == 0
    assert "no solver state" in caplog.text
    np.testing.assert_array_equal(
        fresh.params["ip1"]["weight"], net.params["ip1"]["weight"]
    )


def test_load_wrong_shape_names_layer(tmp_path):
    x, y = toy_data()
    net = Net("a", CPUBackend(dtype=np.float64, seed=1), classifier_layers(x, y))
    path = tmp_path / "model.h5"
    with h5py.File(path, "w") as handle:
        handle["ip1___weight"] = np.zeros((4, 5))
        handle["ip1___bias"] = np.zeros(4)
    with pytest.raises(mochac.SnapshotError) as error:
        mochac.load_snapshot(net, path)
    message = str(error.value)
    assert "ip1" in message
    assert "weight" in message
    assert str(path) in message
    assert "(4, 5)" in message
    assert "(6, 5)" in message


def test_resume_other_architecture(tmp_path):
    """A snapshot of a net with another layer size is a different
    architecture, not a damaged file, although its momentum history does
    not fit either."""
    x, y = toy_data()
    net = Net("a", CPUBackend(dtype=np.float64, seed=1), classifier_layers(x, y))
    params = make_solver_parameters(SGD(), max_iter=2, momentum=0.9)
    solver = Solver(SGD(), params, progress=False)
    solver.add_coffee_break(Snapshot(tmp_path), every_n_iter=2)
    solver.solve(net)

    layers = classifier_layers(x, y)
    layers[1] = layers[1].replace(output_dim=7)
    wider = Net("b", CPUBackend(dtype=np.float64, seed=1), layers)
    params = make_solver_parameters(
        SGD(), max_iter=4, momentum=0.9, load_from=str(tmp_path)
    )
    with pytest.raises(mochac.SnapshotError) as error:
        Solver(SGD(), params, progress=False).solve(wider)
    message = str(error.value)
    assert "layer 'ip1': parameter 'weight'" in message
    assert "has shape (6, 5), but the net expects (7, 5)" in message
    assert "different architecture" in message
    assert "damaged" not in message
    assert "load a snapshot or model file saved from this net" in message


def deeper_classifier_layers(x, y):
    """Return classifier_layers with the layer ip3 between ip1 and ip2,
    which keeps every parameter shape of classifier_layers."""
    data, hidden, out, loss = classifier_layers(x, y)
    extra = InnerProductLayer(name="ip3", output_dim=6, bottoms=["ip1"], tops=["ip3"])
    return [data, hidden, extra, out.replace(bottoms=["ip3"]), loss]


def snapshot_of_classifier(folder, layers=None):
    """Train a net of ``layers`` (default: classifier_layers) for 2
    iterations with a Snapshot break in ``folder``; return the path of
    snapshot-000002.h5."""
    x, y = toy_data()
    layers = classifier_layers(x, y) if layers is None else layers
    net = Net("a", CPUBackend(dtype=np.float64, seed=1), layers)
    params = make_solver_parameters(SGD(), max_iter=2, momentum=0.9)
    solver = Solver(SGD(), params, progress=False)
    solver.add_coffee_break(Snapshot(folder), every_n_iter=2)
    solver.solve(net)
    return folder / "snapshot-000002.h5"


def test_resume_net_with_new_layer_fails(tmp_path):
    """A net with a layer the snapshot lacks cannot resume from it. The
    error names the file and the two ways on, and the net keeps its
    parameters."""
    path = snapshot_of_classifier(tmp_path)
    x, y = toy_data()
    deeper = Net(
        "b", CPUBackend(dtype=np.float64, seed=1), deeper_classifier_layers(x, y)
    )
    initial = deeper.params["ip1"]["weight"].copy()
    params = make_solver_parameters(
        SGD(), max_iter=4, momentum=0.9, load_from=str(tmp_path)
    )
    with pytest.raises(mochac.SnapshotError) as error:
        Solver(SGD(), params, progress=False).solve(deeper)
    message = str(error.value)
    assert f"{path} lacks parameters ip3.weight (dataset ip3___weight)" in message
    assert "resume with the net that saved it" in message
    assert f"load_snapshot(net, {str(path)!r}, allow_missing=True)" in message
    assert "load_from=None" in message
    np.testing.assert_array_equal(deeper.params["ip1"]["weight"], initial)


def test_resume_net_without_layer_warns(tmp_path, caplog):
    """A net without a layer of the snapshot resumes its own parameters and
    warns that the others are ignored."""
    x, y = toy_data()
    path = snapshot_of_classifier(tmp_path, deeper_classifier_layers(x, y))
    with h5py.File(path, "r") as handle:
        saved = handle["ip1___weight"][...]
    net = Net("c", CPUBackend(dtype=np.float64, seed=1), classifier_layers(x, y))
    params = make_solver_parameters(
        SGD(), max_iter=2, momentum=0.9, load_from=str(tmp_path)
    )
    with caplog.at_level(logging.WARNING, logger="mochac.runtime.solver"):
        state = Solver(SGD(), params, progress=False).solve(net)
    assert state.iter == 2
    warnings = [
        record.getMessage()
        for record in caplog.records
        if record.levelno >= logging.WARNING and "lacks (" in record.getMessage()
    ]
    assert len(warnings) == 1
    assert str(path) in warnings[0]
    assert "net 'c' lacks (ip3___bias, ip3___weight)" in warnings[0]
    np.testing.assert_array_equal(net.params["ip1"]["weight"], saved)


def test_resume_data_layer_without_state_warns(tmp_path, caplog):
    """A data layer that the snapshot has no state for (renamed since)
    reads on from its current position, and the warning states that."""
    path = snapshot_of_classifier(tmp_path)
    x, y = toy_data()
    layers = classifier_layers(x, y)
    layers[0] = MemoryDataLayer(name="renamed-data", batch_size=4, data=[x, y])
    net = Net("e", CPUBackend(dtype=np.float64, seed=1), layers)
    params = make_solver_parameters(
        SGD(), max_iter=2, momentum=0.9, load_from=str(tmp_path)
    )
    with caplog.at_level(logging.WARNING, logger="mochac.runtime.snapshot"):
        Solver(SGD(), params, progress=False).solve(net)
    warnings = [
        record.getMessage()
        for record in caplog.records
        if record.levelno >= logging.WARNING and "has no state" in record.getMessage()
    ]
    expected = (
        f"{path} has no state for data layer 'renamed-data'; it reads on from its "
        "current position, so the resumed run may read other batches than an "
        "uninterrupted one"
    )
    assert warnings == [expected]


def test_resume_adam_from_sgd_snapshot_fails(tmp_path):
    """An SGD snapshot cannot resume an Adam solver; the error names the
    file and both methods, and the net keeps its parameters."""
    path = snapshot_of_classifier(tmp_path)
    x, y = toy_data()
    net = Net("d", CPUBackend(dtype=np.float64, seed=1), classifier_layers(x, y))
    initial = net.params["ip1"]["weight"].copy()
    params = make_solver_parameters(Adam(), max_iter=4, load_from=str(tmp_path))
    with pytest.raises(mochac.SnapshotError) as error:
        Solver(Adam(), params, progress=False).solve(net)
    message = str(error.value)
    assert f"{path} was saved by solver SGD, but this solver is Adam" in message
    assert "resume with SGD" in message
    np.testing.assert_array_equal(net.params["ip1"]["weight"], initial)


def test_resume_other_net_names_saver(tmp_path):
    """A resume that fails on a snapshot saved by a net of another name
    names that net and suggests a Snapshot folder per training."""
    path = snapshot_of_classifier(tmp_path)
    x, y = toy_data()
    other = Net(
        "other", CPUBackend(dtype=np.float64, seed=1), deeper_classifier_layers(x, y)
    )
    params = make_solver_parameters(
        SGD(), max_iter=4, momentum=0.9, load_from=str(tmp_path)
    )
    with pytest.raises(mochac.SnapshotError) as error:
        Solver(SGD(), params, progress=False).solve(other)
    message = str(error.value)
    assert f"{path} lacks parameters ip3.weight" in message
    assert "snapshot-000002.h5 was saved by net 'a', and this net is 'other'" in message
    assert "a Snapshot folder and load_from of its own" in message


def test_rejected_resume_warns_of_no_data_layer(tmp_path, caplog):
    """A snapshot that the resume rejects logs no warning about the data
    layers it lacks before the error."""
    snapshot_of_classifier(tmp_path)
    x, y = toy_data()
    layers = deeper_classifier_layers(x, y)
    layers[0] = MemoryDataLayer(name="other-data", batch_size=4, data=[x, y])
    other = Net("other", CPUBackend(dtype=np.float64, seed=1), layers)
    params = make_solver_parameters(
        SGD(), max_iter=4, momentum=0.9, load_from=str(tmp_path)
    )
    with (
        caplog.at_level(logging.WARNING, logger="mochac.runtime.snapshot"),
        pytest.raises(mochac.SnapshotError),
    ):
        Solver(SGD(), params, progress=False).solve(other)
    warnings = [
        record.getMessage()
        for record in caplog.records
        if record.levelno >= logging.WARNING
    ]
    assert not any("has no state for data layer" in text for text in warnings)


def test_resume_failure_same_net_has_no_note(tmp_path):
    """The note about another net stays out of the error when the file was
    saved by a net of the same name."""
    snapshot_of_classifier(tmp_path)
    x, y = toy_data()
    same_name = Net(
        "a", CPUBackend(dtype=np.float64, seed=1), deeper_classifier_layers(x, y)
    )
    params = make_solver_parameters(
        SGD(), max_iter=4, momentum=0.9, load_from=str(tmp_path)
    )
    with pytest.raises(mochac.SnapshotError) as error:
        Solver(SGD(), params, progress=False).solve(same_name)
    assert "was saved by net" not in str(error.value)


def test_load_missing_layer(tmp_path, caplog):
    x, y = toy_data()
    net = Net("a", CPUBackend(dtype=np.float64, seed=1), classifier_layers(x, y))
    path = tmp_path / "model.h5"
    with h5py.File(path, "w") as handle:
        handle["ip1___weight"] = np.ones((6, 5))
        handle["ip1___bias"] = np.ones(6)
    with pytest.raises(
        mochac.SnapshotError, match=r"ip2\.weight \(dataset ip2___weight\)"
    ):
        mochac.load_snapshot(net, path)
    with caplog.at_level(logging.INFO, logger="mochac"):
        mochac.load_snapshot(net, path, allow_missing=True)
    assert "ip2___weight" in caplog.text
    assert np.all(net.params["ip1"]["weight"] == 1)


def test_stale_temporaries_removed(tmp_path):
    import os
    import subprocess

    from mochac.runtime import snapshot

    finished = subprocess.Popen(["true"])
    finished.wait()
    dead = finished.pid
    hour_ago = os.path.getmtime(tmp_path) - 3600
    files = {
        "stale": tmp_path / f".snapshot-000010.h5.{dead}.tmp",
        "recent": tmp_path / f".snapshot-000012.h5.{dead}.tmp",
        "running": tmp_path / f".snapshot-000014.h5.{os.getppid()}.tmp",
        "other": tmp_path / ".notes.tmp",
    }
    for name, path in files.items():
        path.write_bytes(b"partial")
        if name != "recent":
            os.utime(path, (hour_ago, hour_ago))
    snapshot._CLEANED_FOLDERS.discard(tmp_path.resolve())
    train(tmp_path, 2, snapshot_every=2)
    assert not files["stale"].exists()
    assert files["recent"].exists()
    assert files["running"].exists()
    assert files["other"].exists()


def test_snapshot_leaves_no_temporary(tmp_path):
    train(tmp_path, 4, snapshot_every=2)
    names = sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".sha256")
    # The lock file of the folder stays, and locks nothing once solve() ends.
    assert names == [
        ".mochac-solve.lock",
        "snapshot-000000.h5",
        "snapshot-000002.h5",
        "snapshot-000004.h5",
    ]


def test_validation_counts_one_epoch(caplog):
    # Ten samples, batch 4: the third batch wraps to samples 0 and 1, which
    # must not be counted twice. Samples 8 and 9 are labelled wrong.
    x = np.zeros((10, 3))
    x[np.arange(10), np.arange(10) % 3] = 1.0
    y = (np.arange(10) % 3).astype(np.float64).reshape(10, 1)
    y[8:] = (y[8:] + 1) % 3
    backend = CPUBackend(dtype=np.float64, seed=0)
    data = MemoryDataLayer(batch_size=4, data=[x, y])
    identity = mochac.IdentityLayer(bottoms=["data"], tops=["scores"])
    accuracy = AccuracyLayer(name="accuracy", bottoms=["scores", "label"])
    test_net = Net("validation", backend, [data, identity, accuracy])
    validation = ValidationPerformance(test_net)
    solver = Solver(SGD(), make_solver_parameters(SGD(), max_iter=0))
    with caplog.at_level(logging.INFO, logger="mochac"):
        validation.enjoy(solver, test_net)
    assert validation.last["accuracy-accuracy"] == pytest.approx(0.8)
    assert validation.last["accuracy-count"] == 10
    assert "Accuracy (avg over 10) = 80.0000%" in caplog.text
    # A second validation starts again from the first sample.
    validation.enjoy(solver, test_net)
    assert validation.last["accuracy-accuracy"] == pytest.approx(0.8)


@pytest.mark.parametrize(
    ("coffee_break", "described"),
    [
        (lambda solver, net: None, "function <lambda>"),
        (TrainingSummary().enjoy, "method TrainingSummary.enjoy"),
        ("summary", "'summary'"),
    ],
)
def test_add_coffee_break_needs_enjoy(coffee_break, described):
    solver = Solver(SGD(), make_solver_parameters(SGD(), max_iter=1))
    with pytest.raises(mochac.ConfigError) as raised:
        solver.add_coffee_break(coffee_break, every_n_iter=1)
    message = str(raised.value)
    assert f"{described} has no enjoy(solver, net) method" in message
    assert "CoffeeBreak subclass" in message


def test_add_coffee_break_rejects_class():
    solver = Solver(SGD(), make_solver_parameters(SGD(), max_iter=1))
    with pytest.raises(mochac.ConfigError, match=r"class TrainingSummary; .*\(\)"):
        solver.add_coffee_break(TrainingSummary, every_n_iter=1)


@pytest.mark.parametrize(
    ("every_n_iter", "every_n_epoch", "problem"),
    [
        (None, None, "give exactly one of every_n_iter and every_n_epoch"),
        (1, 1, "give exactly one of every_n_iter and every_n_epoch"),
        (0, None, "invalid interval 0"),
        (None, 1.5, "invalid interval 1.5"),
    ],
)
def test_add_coffee_break_intervals(every_n_iter, every_n_epoch, problem):
    solver = Solver(SGD(), make_solver_parameters(SGD(), max_iter=1))
    with pytest.raises(mochac.ConfigError, match=problem):
        solver.add_coffee_break(
            TrainingSummary(), every_n_iter=every_n_iter, every_n_epoch=every_n_epoch
        )


def test_recompute_gradients_outside_break():
    solver = Solver(SGD(), make_solver_parameters(SGD(), max_iter=1))
    with pytest.raises(mochac.ConfigError, match="called outside a coffee break"):
        solver.recompute_gradients()


class IterationLog(CoffeeBreak):
    """Records the iteration of each break."""

    def __init__(self):
        self.seen = []

    def enjoy(self, solver, net):
        self.seen.append(solver.state.iter)


def test_validating_training_net_changes_nothing():
    """A validation of the training net itself rewinds its data and runs an
    epoch. Training then goes on from where it was, as without the
    validation: the same epoch breaks and the same parameters."""
    x, y = toy_data(n=12)
    results = {}
    for validate in (False, True):
        net = Net(
            f"self-{validate}",
            CPUBackend(dtype=np.float64, seed=2),
            classifier_layers(x, y),
        )
        params = make_solver_parameters(SGD(), max_iter=12)
        solver = Solver(SGD(), params, progress=False)
        record = IterationLog()
        if validate:
            solver.add_coffee_break(ValidationPerformance(net), every_n_iter=4)
        solver.add_coffee_break(record, every_n_epoch=1)
        solver.solve(net)
        results[validate] = (record.seen, net.params)
    # Batches of 4 from 12 samples: updates 3, 6, 9 and 12 end epochs.
    assert results[False][0] == [3, 6, 9, 12]
    assert results[True][0] == [3, 6, 9, 12]
    for layer, arrays in results[False][1].items():
        for name, array in arrays.items():
            np.testing.assert_array_equal(results[True][1][layer][name], array)


class StopTraining(Exception):
    """Raised by a test's coffee break or data layer to stop solve()."""


def straight_params(x, y, max_iter):
    net = Net("straight", CPUBackend(dtype=np.float64, seed=2), classifier_layers(x, y))
    params = make_solver_parameters(SGD(), max_iter=max_iter, momentum=0.9)
    Solver(SGD(), params, progress=False).solve(net)
    return net.params


def assert_same_params(actual, expected):
    for layer, arrays in expected.items():
        for name, array in arrays.items():
            np.testing.assert_array_equal(actual[layer][name], array)


class StopOnce(CoffeeBreak):
    """Raises StopTraining at its first break at iteration ``at``."""

    def __init__(self, at):
        self.at = at
        self.stopped = False

    def enjoy(self, solver, net):
        if solver.state.iter == self.at and not self.stopped:
            self.stopped = True
            raise StopTraining


def test_solve_after_break_error_continues_exactly():
    x, y = toy_data()
    net = Net("stopped", CPUBackend(dtype=np.float64, seed=2), classifier_layers(x, y))
    params = make_solver_parameters(SGD(), max_iter=7, momentum=0.9)
    solver = Solver(SGD(), params, progress=False)
    solver.add_coffee_break(StopOnce(at=3), every_n_iter=1)
    with pytest.raises(StopTraining):
        solver.solve(net)
    assert solver.state.iter == 3
    # The batch loaded after update 3 went into no update, so the second
    # call loads it again.
    solver.solve(net)
    assert_same_params(net.params, straight_params(x, y, 7))


def test_unmoved_order_is_not_compared(monkeypatch):
    """Coffee breaks compare the resume point before and after them. A
    source that did not move returns the same order array, whose n_samples
    elements need no comparison."""
    order = np.random.default_rng(0).permutation(1000)

    def point(order):
        state = {"position": 3, "epoch": 1, "order": order, "rng": "{}"}
        return ResumePoint(sources={0: state}, streams={})

    compared = []
    real_array_equal = np.array_equal

    def counting_array_equal(first, second):
        compared.append(first)
        return real_array_equal(first, second)

    monkeypatch.setattr(resume_point.np, "array_equal", counting_array_equal)
    net = SimpleNamespace(backend=CPUBackend())
    assert resume_point.same(net, point(order), point(order))
    assert compared == []
    assert resume_point.same(net, point(order), point(order.copy()))
    assert len(compared) == 1
    assert not resume_point.same(net, point(order), point(order[::-1].copy()))


def test_second_solve_logs_its_start(tmp_path, caplog):
    """With load_from naming a folder without snapshots, solve() called
    again after an error goes on from the solver's iteration, and its log
    line names that iteration instead of "training from scratch"."""
    x, y = toy_data()
    net = Net("again", CPUBackend(dtype=np.float64, seed=2), classifier_layers(x, y))
    folder = tmp_path / "snapshots"
    params = make_solver_parameters(SGD(), max_iter=6, load_from=str(folder))
    solver = Solver(SGD(), params, progress=False)
    solver.add_coffee_break(StopOnce(at=3), every_n_iter=1)
    with caplog.at_level("INFO", logger="mochac.runtime.solver"):
        with pytest.raises(StopTraining):
            solver.solve(net)
        assert "does not exist yet; training from scratch" in caplog.text
        caplog.clear()
        solver.solve(net)
    assert solver.start_iter == 3
    assert "does not exist yet; going on from iteration 3" in caplog.text
    assert "training from scratch" not in caplog.text


def test_failed_batch_load_counts_no_update():
    x, y = toy_data()
    net = Net("failing", CPUBackend(dtype=np.float64, seed=2), classifier_layers(x, y))
    params = make_solver_parameters(SGD(), max_iter=7, momentum=0.9)
    solver = Solver(SGD(), params, progress=False)
    load_batch = net.load_batch
    calls = []

    def fail_fifth(*args):
        calls.append(None)
        if len(calls) == 5:
            raise StopTraining
        return load_batch(*args)

    net.load_batch = fail_fifth
    with pytest.raises(StopTraining):
        solver.solve(net)
    # The first load precedes update 1, so the fifth fails before update 4.
    assert solver.state.iter == 3
    assert_same_params(net.params, straight_params(x, y, 3))
    solver.solve(net)
    assert_same_params(net.params, straight_params(x, y, 7))


def test_training_summary_and_lounge(tmp_path, caplog):
    x, y = toy_data()
    net = Net("summary", CPUBackend(dtype=np.float64, seed=2), classifier_layers(x, y))
    params = make_solver_parameters(
        SGD(),
        max_iter=20,
        lr_policy=LRPolicy.Fixed(0.1),
        mom_policy=MomPolicy.Fixed(0.5),
    )
    solver = Solver(SGD(), params)
    stats = tmp_path / "statistics.h5"
    solver.setup_coffee_lounge(save_into=stats, every_n_iter=10)
    solver.add_coffee_break(
        TrainingSummary("iter", "obj_val", "learning_rate"), every_n_iter=5
    )
    with caplog.at_level(logging.INFO, logger="mochac"):
        solver.solve(net)
    assert "000020 :: TRAIN obj-val = " in caplog.text
    with h5py.File(stats, "r") as handle:
        assert list(handle["obj_val/iterations"][()]) == [0, 5, 10, 15, 20]
        assert np.all(handle["learning_rate/values"][()] == 0.1)
        values = handle["obj_val/values"][()]
    assert np.all(np.isfinite(values))
    assert values[-1] < values[0]


def test_lounge_round_trips_names_with_slash(tmp_path):
    """Caffe's layer names contain '/', which HDF5 reads as a path."""
    from mochac.runtime.coffee_lounge import CoffeeLounge, read_statistics

    stats = tmp_path / "statistics.h5"
    lounge = CoffeeLounge(save_into=stats)
    lounge.update(0, "loss3/top-1-accuracy", 0.25)
    lounge.update(0, "odd%2Fname", 0.5)
    lounge.save()
    expected = {"loss3/top-1-accuracy": {0: 0.25}, "odd%2Fname": {0: 0.5}}
    assert read_statistics(stats) == expected
    merged = CoffeeLounge(save_into=stats, file_exists="merge")
    assert merged.statistics == expected


def test_lounge_writes_through_link(tmp_path):
    """A statistics file named through a link is written where the link
    points, and the link stays."""
    from mochac.runtime.coffee_lounge import CoffeeLounge, read_statistics

    target = tmp_path / "real" / "statistics.h5"
    target.parent.mkdir()
    link = tmp_path / "statistics.h5"
    link.symlink_to(target)
    lounge = CoffeeLounge(save_into=link)
    lounge.update(0, "obj_val", 0.25)
    lounge.save()
    assert link.is_symlink()
    assert read_statistics(target) == {"obj_val": {0: 0.25}}
    lounge.update(10, "obj_val", 0.125)
    lounge.save()
    assert link.is_symlink()
    assert read_statistics(target) == {"obj_val": {0: 0.25, 10: 0.125}}


@pytest.mark.parametrize(
    ("iterations", "values"),
    [([0, 10, 20], [0.5, 0.4]), ([0, 10], [0.5, 0.4, 0.3]), ([[0, 10]], [[0.5, 0.4]])],
)
def test_lounge_rejects_mismatched_series(tmp_path, iterations, values):
    from mochac.runtime.coffee_lounge import read_statistics

    stats = tmp_path / "statistics.h5"
    with h5py.File(stats, "w") as handle:
        handle["obj_val/iterations"] = np.array(iterations, dtype=np.int64)
        handle["obj_val/values"] = np.array(values, dtype=np.float64)
    with pytest.raises(mochac.DataError) as error:
        read_statistics(stats)
    message = str(error.value)
    assert str(stats) in message
    assert "statistic 'obj_val' has iterations of shape" in message

    solver = Solver(SGD(), make_solver_parameters(SGD(), max_iter=0))
    with pytest.raises(mochac.DataError, match="file_exists='overwrite'"):
        solver.setup_coffee_lounge(save_into=stats)


def saved_lounge(stats):
    """Save a statistics file without its digest, as earlier versions did, so
    that the read meets the damage itself (tests/test_statistics_digest.py
    covers the digest)."""
    from mochac.runtime.coffee_lounge import CoffeeLounge

    lounge = CoffeeLounge(save_into=stats)
    for iteration, value in enumerate((0.75, 0.5, 0.25, 0.125)):
        lounge.update(10 * iteration, "obj_val", value)
    lounge.save()
    stats.with_name(stats.name + ".sha256").unlink()


def test_lounge_rejects_damaged_values(tmp_path):
    """A damaged byte inside a series fails the read instead of changing the
    curve that a resumed run merges into."""
    from mochac.runtime.coffee_lounge import read_statistics

    stats = tmp_path / "statistics.h5"
    saved_lounge(stats)
    data = bytearray(stats.read_bytes())
    stored = np.array([0.75, 0.5, 0.25, 0.125], dtype=np.float64).tobytes()
    offset = data.find(stored)
    assert offset >= 0
    data[offset + 3] ^= 0xFF
    stats.write_bytes(bytes(data))
    with pytest.raises(mochac.DataError) as error:
        read_statistics(stats)
    assert str(stats) in str(error.value)
    assert "the statistics file is damaged" in str(error.value)


def test_lounge_rejects_damaged_group_heap(tmp_path):
    """h5py raises RuntimeError for a damaged heap of the root group, which
    the read reports as a damaged file."""
    from mochac.runtime.coffee_lounge import read_statistics

    stats = tmp_path / "statistics.h5"
    saved_lounge(stats)
    data = bytearray(stats.read_bytes())
    heap = data.find(b"HEAP")
    assert heap >= 0
    # The local heap's offset to its free list follows the signature, the
    # version, 3 reserved bytes and the 8-byte data segment size.
    data[heap + 16] ^= 0xFF
    stats.write_bytes(bytes(data))
    with pytest.raises(mochac.DataError) as error:
        read_statistics(stats)
    assert str(stats) in str(error.value)
    assert "the statistics file is damaged" in str(error.value)


def test_lounge_panics_on_existing_file(tmp_path):
    stats = tmp_path / "statistics.h5"
    stats.write_bytes(b"")
    solver = Solver(SGD(), make_solver_parameters(SGD(), max_iter=0))
    with pytest.raises(mochac.ConfigError, match="exists"):
        solver.setup_coffee_lounge(save_into=stats, file_exists="panic")


@pytest.mark.parametrize("save_into", [123, ["stats.h5"]])
def test_lounge_rejects_non_path(save_into):
    solver = Solver(SGD(), make_solver_parameters(SGD(), max_iter=0))
    with pytest.raises(mochac.ConfigError, match="invalid save_into="):
        solver.setup_coffee_lounge(save_into=save_into)


@pytest.mark.parametrize("folder", [None, 123])
def test_snapshot_rejects_non_path(folder):
    with pytest.raises(mochac.ConfigError, match=r"Snapshot: invalid folder="):
        Snapshot(folder)


def test_load_from_new_folder_with_dot(tmp_path):
    _, solver = train(tmp_path / "run0.001", 3, snapshot_every=3)
    assert solver.state.iter == 3
    assert (tmp_path / "run0.001" / "snapshot-000003.h5").exists()


def test_progress_bar_counts_iterations(capsys):
    x, y = toy_data()
    net = Net("bar", CPUBackend(dtype=np.float64, seed=2), classifier_layers(x, y))
    params = make_solver_parameters(SGD(), max_iter=7)
    Solver(SGD(), params, progress=True).solve(net)
    assert "7/7" in capsys.readouterr().err


def test_progress_bar_off_without_terminal(capsys):
    x, y = toy_data()
    net = Net("quiet", CPUBackend(dtype=np.float64, seed=2), classifier_layers(x, y))
    Solver(SGD(), make_solver_parameters(SGD(), max_iter=3)).solve(net)
    assert "training" not in capsys.readouterr().err


def test_console_log_starts_own_line_under_bar(capsys):
    """A record that log_to_console() writes while the progress bar is drawn
    starts on a line of its own, not after the bar's text."""
    mochac.log_to_console()
    x, y = toy_data()
    net = Net("bar-log", CPUBackend(dtype=np.float64, seed=2), classifier_layers(x, y))
    solver = Solver(SGD(), make_solver_parameters(SGD(), max_iter=4), progress=True)
    solver.add_coffee_break(TrainingSummary(), every_n_iter=2)
    solver.solve(net)
    err = capsys.readouterr().err
    records = [m.start() for m in re.finditer(r"\d\d:INFO:mochac", err)]
    assert len(records) >= 3
    for start in records:
        line_start = max(err.rfind("\n", 0, start), err.rfind("\r", 0, start)) + 1
        assert "training" not in err[line_start:start], err


def test_progress_bar_closed_when_training_fails(capsys):
    x, y = toy_data()
    net = Net("bar-nan", CPUBackend(dtype=np.float64, seed=2), classifier_layers(x, y))
    params = make_solver_parameters(SGD(), max_iter=50, lr_policy=LRPolicy.Fixed(1e200))
    # The traceback that pytest.raises keeps references the bar, so its
    # garbage collection cannot close it. Only the solver can.
    with pytest.raises(mochac.NumericalError) as failure:
        Solver(SGD(), params, progress=True).solve(net)
    err = capsys.readouterr().err
    assert "training" in err
    assert err.endswith("\n"), repr(err[-80:])
    assert failure.traceback


def test_load_rejects_nonfinite_parameters(tmp_path):
    x, y = toy_data()
    net = Net("a", CPUBackend(dtype=np.float64, seed=1), classifier_layers(x, y))
    path = tmp_path / "model.h5"
    with h5py.File(path, "w") as handle:
        for layer, params in net.params.items():
            for name, array in params.items():
                values = array.copy()
                if (layer, name) == ("ip2", "weight"):
                    values[0, 0] = np.nan
                handle[f"{layer}___{name}"] = values
    with pytest.raises(mochac.SnapshotError, match=r"ip2.*weight.*NaN or infinite"):
        mochac.load_snapshot(net, path)


def test_load_snapshot_from_folder_fails_clearly(tmp_path):
    x, y = toy_data()
    net = Net("a", CPUBackend(dtype=np.float64, seed=1), classifier_layers(x, y))
    with pytest.raises(mochac.SnapshotError, match="is a folder"):
        mochac.load_snapshot(net, tmp_path)


def test_truncated_snapshot_suggests_deleting(tmp_path):
    x, y = toy_data()
    net = Net("a", CPUBackend(dtype=np.float64, seed=1), classifier_layers(x, y))
    path = tmp_path / "snapshot-000010.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(40))
    with pytest.raises(mochac.SnapshotError, match="delete it to resume") as raised:
        mochac.load_snapshot(net, path)
    assert "\n" not in str(raised.value)


def test_damaged_snapshot_bytes_fail_the_checksum(tmp_path):
    """Parameters are stored with HDF5's Fletcher-32 checksum, so flipped
    bytes inside a weight fail the load instead of loading wrong values."""
    x, y = toy_data()
    net = Net("a", CPUBackend(dtype=np.float64, seed=1), classifier_layers(x, y))
    path = tmp_path / "model.h5"
    mochac.runtime.snapshot.save_snapshot(path, net)
    # Without its SHA-256 sidecar, as older snapshots are, the file is
    # checked by Fletcher-32 alone.
    (tmp_path / "model.h5.sha256").unlink()
    with h5py.File(path, "r") as handle:
        dataset = handle["ip2___weight"]
        assert dataset.fletcher32
        start = dataset.id.get_chunk_info(0).byte_offset
        assert dataset[()].flat[1] != 0.5
    raw = bytearray(path.read_bytes())
    # Change a weight to another finite value: only the checksum can tell.
    raw[start + 8 : start + 16] = np.float64(0.5).tobytes()
    path.write_bytes(bytes(raw))
    with pytest.raises(mochac.SnapshotError, match=r"ip2___weight.*damaged"):
        mochac.load_snapshot(net, path)


def test_resume_past_max_iter_logs(tmp_path, caplog):
    train(tmp_path, 4, snapshot_every=2)
    x, y = toy_data(n=10)
    net = Net("resumed", CPUBackend(dtype=np.float64, seed=5), classifier_layers(x, y))
    params = make_solver_parameters(SGD(), max_iter=2, load_from=str(tmp_path))
    with caplog.at_level(logging.INFO, logger="mochac"):
        state = Solver(SGD(), params).solve(net)
    assert state.iter == 4
    assert "already at iteration 4, max_iter=2" in caplog.text


def test_resume_restores_rate_and_momentum(tmp_path):
    _, first = train(tmp_path, 4, snapshot_every=2)
    x, y = toy_data(n=10)
    net = Net("resumed", CPUBackend(dtype=np.float64, seed=5), classifier_layers(x, y))
    params = make_solver_parameters(SGD(), max_iter=4, load_from=str(tmp_path))
    state = Solver(SGD(), params).solve(net)
    assert state.iter == 4
    assert state.learning_rate == first.state.learning_rate
    assert state.learning_rate > 0
    assert state.momentum == 0.9


@pytest.mark.parametrize("content", [b"", b"\x89HDF\r\n\x1a\n" + bytes(40)])
def test_lounge_damaged_file_named(tmp_path, content):
    stats = tmp_path / "statistics.h5"
    stats.write_bytes(content)
    solver = Solver(SGD(), make_solver_parameters(SGD(), max_iter=0))
    with pytest.raises(mochac.DataError) as error:
        solver.setup_coffee_lounge(save_into=stats)
    message = str(error.value)
    assert str(stats) in message
    assert "file_exists='overwrite'" in message
    solver.setup_coffee_lounge(save_into=stats, file_exists="overwrite")
    assert solver.lounge.statistics == {}


# --- solver parameters and policies that would train silently wrong ----------


@pytest.mark.parametrize("regu", [float("nan"), float("inf"), -1.0, "0.1"])
def test_regu_coef_rejected(regu):
    with pytest.raises(mochac.ConfigError, match="invalid regu_coef="):
        make_solver_parameters(SGD(), max_iter=1, regu_coef=regu)


def test_regu_coef_above_float32_rejected():
    x, y = toy_data()
    net = Net("f32", CPUBackend(seed=1), classifier_layers(x, y))
    params = make_solver_parameters(SGD(), max_iter=1, regu_coef=1e39)
    before = net.params["ip1"]["weight"].copy()
    with pytest.raises(mochac.ConfigError, match=r"regu_coef=1e\+39 .*float32"):
        Solver(SGD(), params, progress=False).solve(net)
    np.testing.assert_array_equal(net.params["ip1"]["weight"], before)


def diverging_solver(max_iter, folder=None):
    """Return (net, solver) whose first update makes the parameters infinite.

    With ``folder``, a Snapshot coffee break saves there every iteration.
    """
    x, y = toy_data()
    net = Net("diverge", CPUBackend(dtype=np.float64, seed=1), classifier_layers(x, y))
    params = make_solver_parameters(
        SGD(),
        max_iter=max_iter,
        regu_coef=1e300,
        lr_policy=LRPolicy.Fixed(1e300),
    )
    solver = Solver(SGD(), params, progress=False)
    if folder is not None:
        solver.add_coffee_break(Snapshot(folder), every_n_iter=1)
    return net, solver


def test_last_step_nonfinite_parameters_raise(tmp_path):
    net, solver = diverging_solver(max_iter=1, folder=tmp_path)
    pattern = (
        r"last update \(iteration 1\), parameter 'weight' of layer 'ip1' has \d+ NaN"
    )
    with pytest.raises(mochac.NumericalError, match=pattern) as raised:
        solver.solve(net)
    assert "regu_coef 1e+300" in str(raised.value)
    # The check runs before the last coffee breaks, so no snapshot keeps them.
    assert (tmp_path / "snapshot-000000.h5").exists()
    assert not (tmp_path / "snapshot-000001.h5").exists()


def test_diverged_update_names_parameter():
    net, solver = diverging_solver(max_iter=2)
    pattern = r"last update \(iteration 1\), parameter 'weight' of layer 'ip1'"
    with pytest.raises(mochac.NumericalError, match=pattern) as raised:
        solver.solve(net)
    assert "regu_coef 1e+300" in str(raised.value)
    assert "gradient from the last backward pass is finite" in str(raised.value)
    # The NaN loss of the forward pass after the update led to the check.
    assert "loss layer 'loss'" in str(raised.value.__context__)


def test_backward_nan_names_first_gradient():
    """ip1 outputs exact zeros, whose square root is 0 but has an infinite
    derivative: the forward pass is finite, the backward pass of 'sqrt'
    fills ip1's gradients with NaN or infinities, and the update spreads
    them to its parameters. ip2, nearer the loss, keeps finite gradients."""
    x = np.random.default_rng(0).normal(size=(8, 3))
    y = np.zeros((8, 1))
    layers = [
        MemoryDataLayer(batch_size=4, data=[x, y]),
        InnerProductLayer(name="ip1", output_dim=3, bottoms=["data"], tops=["h"]),
        mochac.PowerLayer(name="sqrt", power=0.5, bottoms=["h"], tops=["s"]),
        InnerProductLayer(name="ip2", output_dim=2, bottoms=["s"], tops=["out"]),
        SoftmaxLossLayer(name="loss", bottoms=["out", "label"]),
    ]
    net = Net("sqrt0", CPUBackend(dtype=np.float64, seed=1), layers)
    for array in net.params["ip1"].values():
        array[...] = 0.0
    params = make_solver_parameters(SGD(), max_iter=3, lr_policy=LRPolicy.Fixed(0.01))
    with pytest.raises(mochac.NumericalError) as raised:
        Solver(SGD(), params, progress=False).solve(net)
    message = str(raised.value)
    assert "parameter 'weight' of layer 'ip1'" in message
    assert "Gradient 'weight' of layer 'ip1' has NaN or infinite values" in message
    assert "between it and the losses" in message
    assert np.isfinite(net.grads["ip2"]["weight"]).all()


def overflowing_net(row):
    """Return the classifier net whose sample ``row`` overflows ip1 to
    infinity, so that the loss of its batch is NaN: data layers reject NaN
    in the data, but a layer can still make one."""
    x, y = toy_data()
    x[row] = 1e308
    net = Net("nan", CPUBackend(dtype=np.float64, seed=1), classifier_layers(x, y))
    net.params["ip1"]["weight"][...] = 10.0
    return net


def test_nan_loss_names_solver_settings():
    # The second batch (samples 4 to 7) overflows, which the forward pass
    # after update 1 reads.
    net = overflowing_net(5)
    params = make_solver_parameters(SGD(), max_iter=3)
    solver = Solver(SGD(), params, progress=False)
    with pytest.raises(mochac.NumericalError, match="loss layer 'loss'") as raised:
        solver.solve(net)
    message = str(raised.value)
    assert "forward pass after this step's update" in message
    assert "Solver settings at iteration 1" in message
    assert "regu_coef 0.0005" in message
    assert "class weights" in message
    assert np.isfinite(net.params["ip1"]["weight"]).all()


def test_nan_loss_before_first_update():
    # The first batch (samples 0 to 3) overflows, which the forward pass
    # before update 1 reads.
    net = overflowing_net(1)
    params = make_solver_parameters(SGD(), max_iter=3, lr_policy=LRPolicy.Fixed(0.1))
    solver = Solver(SGD(), params, progress=False)
    with pytest.raises(mochac.NumericalError, match="loss layer 'loss'") as raised:
        solver.solve(net)
    message = str(raised.value)
    assert "iteration 0, and no update ran in this step" in message
    # No policy has set the state's rate yet, so the message names none.
    assert "learning rate 0" not in message


def test_method_class_instead_of_instance():
    with pytest.raises(mochac.ConfigError, match=r"got the class SGD; .*SGD\(\)"):
        make_solver_parameters(SGD, max_iter=1)
    params = make_solver_parameters(SGD(), max_iter=1)
    with pytest.raises(mochac.ConfigError, match=r"Solver: got the class Adam"):
        Solver(Adam, params)
    with pytest.raises(mochac.ConfigError, match="invalid method 'sgd'"):
        Solver("sgd", params)


def test_solver_params_must_fit_method():
    with pytest.raises(mochac.ConfigError, match=r"lack beta1, beta2, epsilon"):
        Solver(Adam(), make_solver_parameters(SGD(), max_iter=1))
    with pytest.raises(mochac.ConfigError, match="lack regu_coef, lr_policy"):
        Solver(SGD(), {"max_iter": 1})
    with pytest.raises(mochac.ConfigError, match="invalid params"):
        Solver(SGD(), [("max_iter", 1)])


@pytest.mark.parametrize("load_from", [5, ["snapshots"]])
def test_load_from_must_be_path(load_from):
    with pytest.raises(mochac.ConfigError, match=r"invalid load_from=.*str or Path"):
        make_solver_parameters(SGD(), max_iter=1, load_from=load_from)


def test_numpy_integers_in_solver():
    params = make_solver_parameters(SGD(), max_iter=np.int64(3))
    assert type(params["max_iter"]) is int
    solver = Solver(SGD(), params, progress=False)
    solver.add_coffee_break(TrainingSummary(), every_n_iter=np.int32(2))
    assert solver.breaks[-1][1] == 2
    assert type(solver.breaks[-1][1]) is int
    solver.setup_coffee_lounge(every_n_iter=np.int64(2))
    assert solver.lounge.every_n_iter == 2
    assert type(solver.lounge.every_n_iter) is int
    with pytest.raises(mochac.ConfigError, match="every_n_iter=True"):
        solver.setup_coffee_lounge(every_n_iter=True)
    with pytest.raises(mochac.ConfigError, match="max_iter=True"):
        make_solver_parameters(SGD(), max_iter=True)


# --- resuming from snapshots the solver cannot use ----------------------------


def source_positions(net):
    return {index: source.state_dict() for index, source in net.sources.items()}


def test_method_mismatch_leaves_net_unchanged(tmp_path):
    train(tmp_path, 10, snapshot_every=10)
    x, y = toy_data(n=10)
    net = Net("other", CPUBackend(dtype=np.float64, seed=1), classifier_layers(x, y))
    net.forward()
    params_before = {
        layer: {name: array.copy() for name, array in arrays.items()}
        for layer, arrays in net.params.items()
    }
    position_before = repr(source_positions(net))
    params = make_solver_parameters(OtherSolver(), max_iter=20, load_from=str(tmp_path))
    with pytest.raises(mochac.SnapshotError, match="SGD.*Nesterov"):
        Solver(OtherSolver(), params).solve(net)
    for layer, arrays in params_before.items():
        for name, array in arrays.items():
            np.testing.assert_array_equal(net.params[layer][name], array)
    assert repr(source_positions(net)) == position_before


def write_solver_snapshot(net, path, attrs):
    """Write the parameters of ``net`` and a /solver group with ``attrs``."""
    with h5py.File(path, "w") as handle:
        for layer, params in net.params.items():
            for name, array in params.items():
                handle[f"{layer}___{name}"] = array
        group = handle.create_group("solver")
        for key, value in attrs.items():
            group.attrs[key] = value


@pytest.mark.parametrize(
    ("attrs", "match"),
    [
        ({"method": "SGD"}, "lacks the attribute 'iter'"),
        ({"method": "SGD", "iter": -3}, "'iter' has the invalid value -3;"),
        ({"method": "SGD", "iter": "ten"}, "'iter' has the invalid value 'ten'"),
    ],
)
def test_resume_invalid_iter(tmp_path, attrs, match):
    x, y = toy_data()
    source = Net("saved", CPUBackend(dtype=np.float64, seed=2), classifier_layers(x, y))
    path = tmp_path / "model.h5"
    write_solver_snapshot(source, path, attrs)
    net = Net("resume", CPUBackend(dtype=np.float64, seed=1), classifier_layers(x, y))
    before = net.params["ip1"]["weight"].copy()
    params = make_solver_parameters(SGD(), max_iter=2, load_from=str(path))
    with pytest.raises(mochac.SnapshotError, match=match) as raised:
        Solver(SGD(), params, progress=False).solve(net)
    assert str(path) in str(raised.value)
    np.testing.assert_array_equal(net.params["ip1"]["weight"], before)


@pytest.mark.parametrize(
    ("method_class", "extra"),
    [(SGD, {"momentum": 0.9}), (Nesterov, {"momentum": 0.9}), (Adam, {})],
)
def test_reused_method_starts_fresh(method_class, extra, caplog):
    """Mocha's tutorials pass one method object to several solvers; each
    solver must start from zero buffers, as a new object does."""
    x, y = toy_data()

    def solve(method, seed):
        net = Net(
            "reuse", CPUBackend(dtype=np.float64, seed=seed), classifier_layers(x, y)
        )
        params = make_solver_parameters(method, max_iter=5, regu_coef=0.0, **extra)
        Solver(method, params, progress=False).solve(net)
        return net

    shared = method_class()
    solve(shared, seed=1)
    with caplog.at_level(logging.INFO, logger="mochac.runtime.solver"):
        reused = solve(shared, seed=2)
    assert "clearing the state buffers" in caplog.text
    fresh = solve(method_class(), seed=2)
    for layer, params in fresh.params.items():
        for name, array in params.items():
            np.testing.assert_array_equal(reused.params[layer][name], array)


def test_finite_own_gradient_not_blamed_on_other_branch():
    """ip_b's own gradient is finite and its huge rate factor steps it to
    infinity, while another branch has NaN gradients (sqrt at 0): the
    message blames ip_b's step, not the other branch."""
    x = np.random.default_rng(0).normal(size=(8, 3))
    y = np.zeros((8, 1))
    layers = [
        MemoryDataLayer(batch_size=4, data=[x, y]),
        InnerProductLayer(
            name="ip_b",
            output_dim=2,
            weight_lr=1e38,
            bias_lr=1e38,
            bottoms=["data"],
            tops=["out_b"],
        ),
        SoftmaxLossLayer(name="loss_b", bottoms=["out_b", "label"]),
        InnerProductLayer(name="ip1a", output_dim=3, bottoms=["data"], tops=["h"]),
        mochac.PowerLayer(name="sqrt", power=0.5, bottoms=["h"], tops=["s"]),
        InnerProductLayer(name="ip2a", output_dim=2, bottoms=["s"], tops=["out_a"]),
        SoftmaxLossLayer(name="loss_a", bottoms=["out_a", "label"]),
    ]
    net = Net("branches", CPUBackend(dtype=np.float32, seed=1), layers)
    for array in net.params["ip1a"].values():
        array[...] = 0.0
    params = make_solver_parameters(SGD(), max_iter=3, lr_policy=LRPolicy.Fixed(10.0))
    with pytest.raises(mochac.NumericalError) as raised:
        Solver(SGD(), params, progress=False).solve(net)
    message = str(raised.value)
    assert "of layer 'ip_b'" in message
    assert "gradient from the last backward pass is finite" in message
    assert "'ip1a'" not in message


def test_solve_rejects_what_is_not_a_net():
    import types

    solver = Solver(SGD(), make_solver_parameters(SGD(), max_iter=1), progress=False)
    with pytest.raises(mochac.ConfigError, match="expected a Net to train, got 'net'"):
        solver.solve("net")
    package = types.ModuleType("lenet_pkg")
    package.net = object()
    with pytest.raises(
        mochac.ConfigError, match="pass the package's net, lenet_pkg.net"
    ):
        solver.solve(package)
    assert not solver._running


def test_run_from_scratch_warns_of_other_runs_files(tmp_path, caplog):
    """A second run from scratch (load_from misspelled) into the first run's
    snapshot folder and statistics file warns that it mixes with them."""
    folder = tmp_path / "snaps"

    def run(max_iter, load_from, seed):
        x, y = toy_data()
        net = Net(
            "run", CPUBackend(dtype=np.float64, seed=seed), classifier_layers(x, y)
        )
        params = make_solver_parameters(
            SGD(), max_iter=max_iter, load_from=str(load_from)
        )
        solver = Solver(SGD(), params, progress=False)
        solver.setup_coffee_lounge(save_into=folder / "statistics.h5", every_n_iter=2)
        solver.add_coffee_break(TrainingSummary(), every_n_iter=2)
        solver.add_coffee_break(Snapshot(folder), every_n_iter=2)
        solver.solve(net)

    with caplog.at_level(logging.WARNING, logger="mochac.runtime.solver"):
        run(6, folder, seed=1)
        assert "another run" not in caplog.text
        # A resume of the finished run finds nothing later than its start.
        run(8, folder, seed=1)
        assert "another run" not in caplog.text
        run(4, tmp_path / "snapz", seed=2)
    assert (
        f"Snapshot folder {folder} contains snapshots up to iteration 8" in caplog.text
    )
    assert "statistics file" in caplog.text
    assert "contains values up to iteration 8 from another run" in caplog.text


def test_missing_jld_names_h5_beside_it(tmp_path):
    """A script ported from Mocha names snapshot-000002.jld; mochac wrote
    snapshot-000002.h5."""
    x, y = toy_data()
    net = Net("jld", CPUBackend(dtype=np.float64, seed=1), classifier_layers(x, y))
    first = Solver(SGD(), make_solver_parameters(SGD(), max_iter=2), progress=False)
    first.add_coffee_break(Snapshot(tmp_path), every_n_iter=2)
    first.solve(net)
    jld = tmp_path / "snapshot-000002.jld"
    params = make_solver_parameters(SGD(), max_iter=4, load_from=str(jld))
    with pytest.raises(mochac.SnapshotError, match="HDF5 files: name .*000002.h5"):
        Solver(SGD(), params, progress=False).solve(net)


def test_coffee_lounge_is_mochas_name_for_the_lounge():
    solver = Solver(SGD(), make_solver_parameters(SGD(), max_iter=1), progress=False)
    assert solver.coffee_lounge is solver.lounge
    solver.setup_coffee_lounge(every_n_iter=2)
    assert solver.coffee_lounge is solver.lounge
    assert solver.coffee_lounge.every_n_iter == 2


def test_resume_from_iteration_zero_snapshot_keeps_quiet(tmp_path, caplog):
    """A run stopped after its iteration-0 snapshot resumes at iteration 0
    from it: the statistics file it merges into is its own."""
    folder = tmp_path / "snaps"

    class StopAt(mochac.CoffeeBreak):
        def enjoy(self, solver, net):
            if solver.state.iter == 3:
                raise KeyboardInterrupt

    def run(stop):
        x, y = toy_data()
        net = Net("run", CPUBackend(dtype=np.float64, seed=1), classifier_layers(x, y))
        params = make_solver_parameters(SGD(), max_iter=8, load_from=str(folder))
        solver = Solver(SGD(), params, progress=False)
        solver.setup_coffee_lounge(save_into=folder / "statistics.h5", every_n_iter=2)
        solver.add_coffee_break(TrainingSummary(), every_n_iter=2)
        solver.add_coffee_break(Snapshot(folder), every_n_iter=5)
        if stop:
            solver.add_coffee_break(StopAt(), every_n_iter=1)
        solver.solve(net)

    with pytest.raises(KeyboardInterrupt):
        run(stop=True)
    with caplog.at_level(logging.WARNING, logger="mochac.runtime.solver"):
        run(stop=False)
    assert "another run" not in caplog.text


def test_rollback_warning_names_the_resumed_snapshot(tmp_path, caplog):
    folder = tmp_path / "snaps"
    x, y = toy_data()

    def run(max_iter, load_from=None):
        net = Net("run", CPUBackend(dtype=np.float64, seed=1), classifier_layers(x, y))
        params = make_solver_parameters(SGD(), max_iter=max_iter, load_from=load_from)
        solver = Solver(SGD(), params, progress=False)
        solver.add_coffee_break(Snapshot(folder), every_n_iter=2)
        solver.solve(net)

    run(6)
    with caplog.at_level(logging.WARNING, logger="mochac.runtime.solver"):
        run(8, load_from=str(folder / "snapshot-000002.h5"))
    assert "past iteration 2 of snapshot-000002.h5, which this run resumed" in (
        caplog.text
    )
    assert "another run" not in caplog.text


def test_folder_named_two_ways_warns_once(tmp_path, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)
    x, y = toy_data()

    def run(max_iter, *folders):
        net = Net("run", CPUBackend(dtype=np.float64, seed=1), classifier_layers(x, y))
        solver = Solver(
            SGD(), make_solver_parameters(SGD(), max_iter=max_iter), progress=False
        )
        for folder in folders:
            solver.add_coffee_break(Snapshot(folder), every_n_iter=2)
        solver.solve(net)

    run(4, "snaps")
    with caplog.at_level(logging.WARNING, logger="mochac.runtime.solver"):
        run(2, "snaps", tmp_path / "snaps")
    assert caplog.text.count("contains snapshots up to iteration 4") == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [("save_into", 1), ("save_into", 2.5), ("file_exists", np.array(["merge"] * 2))],
)
def test_lounge_rejects_odd_arguments(tmp_path, field, value):
    solver = Solver(SGD(), make_solver_parameters(SGD(), max_iter=1))
    arguments = {"save_into": tmp_path / "stats.h5", field: value}
    with pytest.raises(mochac.ConfigError, match=rf"coffee lounge: invalid {field}="):
        solver.setup_coffee_lounge(**arguments)


class MochaStyleBreak(CoffeeBreak):
    def enjoy(self, lounge, coffee, net, state):
        pass


class ExtraArgumentBreak(CoffeeBreak):
    def enjoy(self, solver, net, extra):
        pass


class DefaultArgumentBreak(CoffeeBreak):
    def enjoy(self, solver, net, verbose=False):
        pass


@pytest.mark.parametrize("coffee_break", [MochaStyleBreak(), ExtraArgumentBreak()])
def test_add_coffee_break_checks_enjoy_arguments(coffee_break):
    solver = Solver(SGD(), make_solver_parameters(SGD(), max_iter=1))
    with pytest.raises(mochac.ConfigError) as raised:
        solver.add_coffee_break(coffee_break, every_n_iter=1)
    message = str(raised.value)
    name = type(coffee_break).__name__
    assert f"{name}.enjoy(" in message
    assert "cannot be called as enjoy(solver, net)" in message
    assert "Define enjoy(self, solver, net)" in message
    assert solver.breaks == []


def test_add_coffee_break_accepts_default_arguments():
    solver = Solver(SGD(), make_solver_parameters(SGD(), max_iter=1))
    coffee_break = DefaultArgumentBreak()
    solver.add_coffee_break(coffee_break, every_n_iter=1)
    assert solver.breaks[0][0] is coffee_break
