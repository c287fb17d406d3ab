"""Checks on snapshot contents: solver buffers, attributes, data layers, dtypes.

Each test edits one item of a valid snapshot with h5py and deletes the
SHA-256 sidecar, as a snapshot of an older mochac version would lack it,
so that the checks behind the digest are what rejects the file.
"""

import json
import logging

import h5py
import numpy as np
import pytest

import mochac
from mochac import (
    SGD,
    Adam,
    ConfigError,
    CPUBackend,
    DropoutLayer,
    HDF5DataLayer,
    InnerProductLayer,
    LRPolicy,
    MemoryDataLayer,
    MomPolicy,
    Nesterov,
    Net,
    NumericalError,
    Snapshot,
    SnapshotError,
    SoftmaxLossLayer,
    Solver,
    make_solver_parameters,
)
from mochac.runtime.file_digest import digest_path
from mochac.runtime.snapshot import (
    load_solver_state,
    open_model,
    read_solver_attributes,
    read_solver_buffers,
    save_snapshot,
)


def toy_data(n=10, features=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features))
    y = rng.integers(0, 3, size=(n, 1)).astype(np.float64)
    return x, y


def shuffled_source(folder, x, y):
    """Write ``x`` and ``y`` to an HDF5 file in ``folder``; return its list file."""
    folder.mkdir(exist_ok=True)
    with h5py.File(folder / "train.h5", "w") as handle:
        handle["data"] = x
        handle["label"] = y
    (folder / "train.txt").write_text("train.h5\n")
    return str(folder / "train.txt")


def make_net(n=10, dropout=False, shuffle_in=None, seed=5, dtype=np.float64):
    """Build the test net; with ``shuffle_in``, a folder, its data layer is a
    shuffling HDF5DataLayer reading files written there."""
    x, y = toy_data(n)
    if shuffle_in is None:
        data = MemoryDataLayer(name="data", batch_size=4, data=[x, y])
    else:
        source = shuffled_source(shuffle_in, x, y)
        data = HDF5DataLayer(name="data", source=source, batch_size=4, shuffle=True)
    layers = [
        data,
        InnerProductLayer(name="ip1", output_dim=3, bottoms=["data"], tops=["ip1"]),
    ]
    scores = "ip1"
    if dropout:
        layers.append(DropoutLayer(name="drop", bottoms=["ip1"], tops=["dropped"]))
        scores = "dropped"
    layers.append(SoftmaxLossLayer(name="loss", bottoms=[scores, "label"]))
    return Net("checks", CPUBackend(dtype=dtype, seed=seed), layers)


def train(folder, max_iter, snapshot_every=None, method=None, **net_options):
    net = make_net(**net_options)
    method = method or SGD()
    policies = {"lr_policy": LRPolicy.Fixed(0.1)}
    if "mom_policy" in method.parameter_names:
        policies["mom_policy"] = MomPolicy.Fixed(0.9)
    params = make_solver_parameters(
        method, max_iter=max_iter, load_from=str(folder), **policies
    )
    solver = Solver(method, params, progress=False)
    if snapshot_every:
        solver.add_coffee_break(Snapshot(folder), every_n_iter=snapshot_every)
    solver.solve(net)
    return net, solver


def edit_snapshot(path, edit):
    """Apply ``edit(handle)`` to the snapshot and delete its digest sidecar."""
    with h5py.File(path, "r+") as handle:
        edit(handle)
    digest_path(path).unlink()


def replace(handle, name, data):
    del handle[name]
    handle.create_dataset(name, data=data)


def snapshot_of_two_steps(tmp_path, **options):
    train(tmp_path, 2, snapshot_every=2, **options)
    return tmp_path / "snapshot-000002.h5"


# --- solver buffers ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (np.zeros(1), "has shape (1,), but the parameter has shape (3, 5)"),
        (np.ones((30, 5)), "has shape (30, 5), but the parameter has shape (3, 5)"),
        (np.full((3, 5), np.nan), "NaN or infinite"),
        (np.full((3, 5), -np.inf), "NaN or infinite"),
        (np.ones((3, 5), np.int64), "datatype int64"),
        (np.full((3, 5), b"a"), "datatype |S1"),
    ],
)
def test_invalid_history_rejected(tmp_path, data, problem):
    path = snapshot_of_two_steps(tmp_path)
    edit_snapshot(path, lambda h: replace(h, "solver/history/ip1___weight", data))
    with pytest.raises(SnapshotError) as raised:
        train(tmp_path, 4)
    message = str(raised.value)
    assert problem in message
    assert "solver buffer 'history' of layer 'ip1', parameter 'weight'" in message
    assert str(path) in message


@pytest.mark.parametrize(
    ("method", "buffer", "data", "problem"),
    [
        (Adam, "first_moment", np.zeros(1), "has shape (1,)"),
        (Adam, "second_moment", np.full((3, 5), np.nan), "NaN or infinite"),
        (Adam, "second_moment", np.ones((3, 5), np.int32), "datatype int32"),
        (Nesterov, "history", np.ones((30, 5)), "has shape (30, 5)"),
    ],
)
def test_invalid_method_buffer_rejected(tmp_path, method, buffer, data, problem):
    path = snapshot_of_two_steps(tmp_path, method=method())
    dataset = f"solver/{buffer}/ip1___weight"
    edit_snapshot(path, lambda h: replace(h, dataset, data))
    with pytest.raises(SnapshotError) as raised:
        train(tmp_path, 4, method=method())
    message = str(raised.value)
    assert f"solver buffer '{buffer}' of layer 'ip1', parameter 'weight'" in message
    assert problem in message
    assert str(path) in message


def test_history_group_rejected(tmp_path):
    path = snapshot_of_two_steps(tmp_path)

    def make_group(handle):
        del handle["solver/history/ip1___weight"]
        handle.create_group("solver/history/ip1___weight")

    edit_snapshot(path, make_group)
    with pytest.raises(SnapshotError, match=r"ip1___weight\) is a group"):
        train(tmp_path, 4)
    with (
        h5py.File(path, "r") as handle,
        pytest.raises(SnapshotError, match=r"ip1___weight\) is a group"),
    ):
        read_solver_buffers(handle["solver"], path)


def test_missing_history_warns(tmp_path, caplog):
    path = snapshot_of_two_steps(tmp_path)
    with caplog.at_level(logging.WARNING, logger="mochac"):
        train(tmp_path, 3)
    assert "no solver buffer" not in caplog.text
    caplog.clear()
    edit_snapshot(
        path, lambda handle: handle.__delitem__("solver/history/ip1___weight")
    )
    with caplog.at_level(logging.WARNING, logger="mochac"):
        train(tmp_path, 3)
    assert (
        "has no solver buffer 'history' for layer 'ip1', parameter 'weight'"
        in caplog.text
    )
    assert "parameter 'bias'" not in caplog.text


def test_float32_history_converted(tmp_path):
    path = snapshot_of_two_steps(tmp_path)
    with h5py.File(path, "r") as handle:
        stored = handle["solver/history/ip1___weight"][()]
    edit_snapshot(
        path,
        lambda h: replace(h, "solver/history/ip1___weight", stored.astype(np.float32)),
    )
    _, solver = train(tmp_path, 2)
    loaded = solver.method.history[("ip1", "weight")]
    assert loaded.dtype == np.float64
    np.testing.assert_array_equal(loaded, stored.astype(np.float32))


def test_decay_reload_checks_buffers(tmp_path):
    """LRPolicy.DecayOnValidation reloads without the net's shapes, so the
    buffers are checked against the parameters stored in the same file."""
    _, solver = train(tmp_path, 2, snapshot_every=2)
    path = tmp_path / "snapshot-000002.h5"
    edit_snapshot(
        path, lambda h: replace(h, "solver/history/ip1___weight", np.zeros(1))
    )
    policy = LRPolicy.DecayOnValidation(0.1, "accuracy-accuracy", 0.5)
    policy.best_iter = 2
    with pytest.raises(SnapshotError, match=r"shape \(1,\), but the parameter"):
        policy.reload_best_snapshot(solver)
    with (
        h5py.File(path, "r") as handle,
        pytest.raises(SnapshotError, match="ip1___weight"),
    ):
        read_solver_buffers(handle["solver"], path)


def test_decay_reload_changes_nothing_on_error(tmp_path):
    """A damaged buffer stops the reload before the parameters change."""
    net, solver = train(tmp_path, 2, snapshot_every=2)
    path = tmp_path / "snapshot-000002.h5"
    edit_snapshot(
        path, lambda h: replace(h, "solver/history/ip1___weight", np.zeros(1))
    )
    net.params["ip1"]["weight"][...] = 7.0
    history = solver.method.history[("ip1", "weight")].copy()
    policy = LRPolicy.DecayOnValidation(0.1, "accuracy-accuracy", 0.5)
    policy.best_iter = 2
    with pytest.raises(SnapshotError, match="solver buffer 'history'"):
        policy.reload_best_snapshot(solver)
    np.testing.assert_array_equal(net.params["ip1"]["weight"], 7.0)
    np.testing.assert_array_equal(solver.method.history[("ip1", "weight")], history)


def test_buffer_without_parameter_rejected(tmp_path):
    path = snapshot_of_two_steps(tmp_path)
    edit_snapshot(path, lambda h: h.create_dataset("solver/history/x___w", data=[1.0]))
    with (
        h5py.File(path, "r") as handle,
        pytest.raises(SnapshotError, match="belongs to no parameter"),
    ):
        read_solver_buffers(handle["solver"], path)


def test_mismatched_buffer_stops_update():
    """A buffer that does not fit its parameter never reaches the compiled
    update, which would read and write past its end."""
    net = make_net()
    method = SGD()
    method.buffers["history"][("ip1", "weight")] = np.zeros(1)
    net.forward()
    net.backward()
    with pytest.raises(SnapshotError, match=r"'history'.*\(1,\).*\(3, 5\)"):
        method.update(net, 0.1, 0.9, 0.0)


# --- attributes and layout -----------------------------------------------------------


def delete_attribute(name, key):
    def edit(handle):
        del handle[name].attrs[key]

    return edit


def set_attribute(name, key, value):
    def edit(handle):
        handle[name].attrs[key] = value

    return edit


def turn_into_dataset(name):
    def edit(handle):
        del handle[name]
        handle.create_dataset(name, data=[0.0])

    return edit


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (delete_attribute("solver", "iter"), "'iter'"),
        (delete_attribute("solver", "method"), "'method'"),
        (delete_attribute("solver", "learning_rate"), "'learning_rate'"),
        (set_attribute("solver", "iter", -2), "'iter'"),
        (set_attribute("solver", "iter", "two"), "'iter'"),
        (set_attribute("solver", "learning_rate", np.nan), "'learning_rate'"),
        (set_attribute("solver", "momentum", [0.9, 0.9]), "'momentum'"),
        (turn_into_dataset("solver"), "/solver is a dataset"),
        (turn_into_dataset("rng"), "/rng is a dataset"),
        (turn_into_dataset("data_layers"), "/data_layers is a dataset"),
        (turn_into_dataset("data_layers/data"), "is a dataset"),
        (turn_into_dataset("solver/history"), "'history' is a dataset"),
        (delete_attribute("data_layers/data", "epoch"), "attribute 'epoch'"),
        (delete_attribute("data_layers/data", "rng"), "attribute 'rng'"),
    ],
)
def test_damaged_layout_rejected(tmp_path, edit, problem):
    path = snapshot_of_two_steps(tmp_path)
    edit_snapshot(path, edit)
    net = make_net()
    with open_model(path) as handle, pytest.raises(SnapshotError) as raised:
        load_solver_state(handle, net, path)
    message = str(raised.value)
    assert problem in message
    assert str(path) in message
    assert "older snapshot" in message


def test_solver_attributes_read_checked(tmp_path):
    path = snapshot_of_two_steps(tmp_path)
    with open_model(path) as handle:
        attrs = read_solver_attributes(handle, path)
    assert attrs["method"] == "SGD"
    assert attrs["iter"] == 2
    assert type(attrs["iter"]) is int
    model = save_snapshot(tmp_path / "model.h5", make_net())
    with open_model(model) as handle:
        assert read_solver_attributes(handle, model) is None
    edit_snapshot(path, delete_attribute("solver", "method"))
    with open_model(path) as handle, pytest.raises(SnapshotError) as raised:
        read_solver_attributes(handle, path)
    assert "/solver lacks the attribute 'method'" in str(raised.value)


def test_resume_missing_iteration(tmp_path):
    path = snapshot_of_two_steps(tmp_path)
    edit_snapshot(path, delete_attribute("solver", "iter"))
    with pytest.raises(SnapshotError) as raised:
        train(tmp_path, 4)
    assert "'iter'" in str(raised.value)
    assert str(path) in str(raised.value)


def test_parameter_group_rejected(tmp_path):
    path = snapshot_of_two_steps(tmp_path)

    def make_group(handle):
        del handle["ip1___weight"]
        handle.create_group("ip1___weight")

    edit_snapshot(path, make_group)
    with pytest.raises(SnapshotError, match=r"ip1___weight\) is a group"):
        mochac.load_snapshot(make_net(), path)


def test_parameter_strings_rejected(tmp_path):
    path = snapshot_of_two_steps(tmp_path)
    edit_snapshot(path, lambda h: replace(h, "ip1___weight", np.full((3, 5), b"a")))
    with pytest.raises(SnapshotError, match=r"datatype \|S1, where IEEE float32"):
        mochac.load_snapshot(make_net(), path)


def test_non_ieee_float_rejected(tmp_path):
    """A changed exponent bias in the datatype message reads as float64 at
    half the value; only the datatype check can tell."""
    path = snapshot_of_two_steps(tmp_path)

    def write_odd_float(handle):
        del handle["ip1___weight"]
        datatype = h5py.h5t.IEEE_F32LE.copy()
        datatype.set_ebias(128)
        space = h5py.h5s.create_simple((3, 5))
        h5py.h5d.create(handle.id, b"ip1___weight", datatype, space)

    edit_snapshot(path, write_odd_float)
    with h5py.File(path, "r") as handle:
        assert handle["ip1___weight"].dtype == np.float64
    net = make_net()
    before = net.params["ip1"]["weight"].copy()
    with pytest.raises(SnapshotError, match="non-IEEE layout"):
        mochac.load_snapshot(net, path)
    np.testing.assert_array_equal(net.params["ip1"]["weight"], before)


def test_float32_parameters_load_into_float64(tmp_path):
    path = tmp_path / "model.h5"
    save_snapshot(path, make_net(dtype=np.float32, seed=1))
    net = make_net(seed=2)
    mochac.load_snapshot(net, path)
    with h5py.File(path, "r") as handle:
        stored = handle["ip1___weight"][()]
    np.testing.assert_array_equal(net.params["ip1"]["weight"], stored)


def test_load_changes_nothing_on_error(tmp_path):
    path = snapshot_of_two_steps(tmp_path)
    edit_snapshot(
        path, lambda h: replace(h, "ip1___bias", np.full(3, np.nan, np.float64))
    )
    net = make_net(seed=11)
    before = net.params["ip1"]["weight"].copy()
    with pytest.raises(SnapshotError, match="NaN or infinite"):
        mochac.load_snapshot(net, path)
    np.testing.assert_array_equal(net.params["ip1"]["weight"], before)


def test_random_stream_shape_checked(tmp_path):
    path = snapshot_of_two_steps(tmp_path, dropout=True)
    edit_snapshot(path, lambda h: replace(h, "rng/drop.stream", np.zeros(4, np.int64)))
    with pytest.raises(SnapshotError) as raised:
        train(tmp_path, 4, dropout=True)
    assert "random stream 'drop.stream'" in str(raised.value)
    assert "has shape (4,)" in str(raised.value)


def test_random_stream_floats_rejected(tmp_path):
    path = snapshot_of_two_steps(tmp_path, dropout=True)
    edit_snapshot(path, lambda h: replace(h, "rng/drop.stream", np.zeros(1)))
    with pytest.raises(SnapshotError, match="not a dataset of integers"):
        train(tmp_path, 4, dropout=True)


# --- data layers -------------------------------------------------------------------


def test_resume_with_fewer_samples(tmp_path):
    train(tmp_path, 2, snapshot_every=2, n=10)
    with pytest.raises(SnapshotError) as raised:
        train(tmp_path, 4, n=6)
    message = str(raised.value)
    assert str(tmp_path / "snapshot-000002.h5") in message
    assert "does not fit" in message
    assert "position 8" in message


def negative_generator_state(handle):
    """Set the PCG64 state in the data layer's generator state to -1, which
    NumPy rejects with OverflowError."""
    item = handle["data_layers/data"]
    state = json.loads(item.attrs["rng"])
    state["state"]["state"] = -1
    item.attrs["rng"] = json.dumps(state)


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (set_attribute("data_layers/data", "position", 100), "position 100"),
        (set_attribute("data_layers/data", "position", -3), "position -3"),
        (set_attribute("data_layers/data", "epoch", -1), "epoch -1"),
        (set_attribute("data_layers/data", "rng", "x"), "not valid JSON"),
        (negative_generator_state, "numpy rejects the generator state"),
        (
            lambda h: replace(h, "data_layers/data/order", np.zeros(10, np.int64)),
            "not a permutation",
        ),
        (
            lambda h: replace(h, "data_layers/data/order", np.arange(10.0)),
            "order is not a dataset of sample indices",
        ),
    ],
)
def test_data_layer_state_checked(tmp_path, edit, problem):
    folder = tmp_path / "snapshots"
    path = snapshot_of_two_steps(folder, shuffle_in=tmp_path / "data", seed=5)
    edit_snapshot(path, edit)
    # Another seed, so that parameters loaded from the snapshot would show.
    net = make_net(shuffle_in=tmp_path / "data", seed=6)
    before = net.params["ip1"]["weight"].copy()
    source = net.sources[0].state_dict()
    params = make_solver_parameters(
        SGD(), max_iter=4, lr_policy=LRPolicy.Fixed(0.1), load_from=str(folder)
    )
    with pytest.raises(SnapshotError) as raised:
        Solver(SGD(), params, progress=False).solve(net)
    assert problem in str(raised.value)
    assert str(path) in str(raised.value)
    # The resume checks every part of the snapshot before it changes the net.
    np.testing.assert_array_equal(net.params["ip1"]["weight"], before)
    after = net.sources[0].state_dict()
    assert after["position"] == source["position"]
    assert after["rng"] == source["rng"]


# --- snapshots without solver state ------------------------------------------------


def test_snapshot_without_solver_rejected(tmp_path):
    path = snapshot_of_two_steps(tmp_path)
    edit_snapshot(path, lambda h: h.move("solver", "solvfr"))
    with pytest.raises(SnapshotError) as raised:
        train(tmp_path, 4)
    assert "no solver state" in str(raised.value)
    assert str(path) in str(raised.value)


def test_model_file_without_solver_loads(tmp_path, caplog):
    model = tmp_path / "model.h5"
    save_snapshot(model, make_net(seed=1))
    with caplog.at_level(logging.INFO, logger="mochac"):
        _, solver = train(model, 0)
    assert solver.state.iter == 0
    assert "contains no solver state" in caplog.text


# --- writing -----------------------------------------------------------------------


def test_nan_parameter_not_saved(tmp_path):
    net = make_net()
    net.params["ip1"]["bias"][1] = np.nan
    path = tmp_path / "model.h5"
    with pytest.raises(NumericalError) as raised:
        save_snapshot(path, net)
    assert "layer 'ip1': parameter 'bias'" in str(raised.value)
    assert "1 NaN or infinite values of 3" in str(raised.value)
    assert list(tmp_path.iterdir()) == []


def test_infinite_buffer_not_saved(tmp_path):
    net, solver = train(tmp_path / "run", 1)
    solver.method.history[("ip1", "weight")][0, 0] = np.inf
    path = tmp_path / "snapshot-000001.h5"
    with pytest.raises(NumericalError, match="solver buffer 'history' of layer 'ip1'"):
        save_snapshot(path, net, solver.state, buffers=solver.method.buffers)
    assert not path.exists()
    assert not digest_path(path).exists()


def test_snapshot_break_rejects_nan(tmp_path):
    net, solver = train(tmp_path / "run", 1)
    net.params["ip1"]["weight"][0, 0] = np.nan
    folder = tmp_path / "snapshots"
    with pytest.raises(NumericalError, match="layer 'ip1': parameter 'weight'"):
        Snapshot(folder).enjoy(solver, net)
    assert not folder.exists()


def test_snapshot_name_needs_solver_state(tmp_path):
    """A resume reads snapshot-NNNNNN.h5 as a snapshot with a solver state,
    so a model saved under that name would be rejected there."""
    path = tmp_path / "snapshot-000005.h5"
    with pytest.raises(mochac.ConfigError, match="no solver state was given"):
        save_snapshot(path, make_net())
    assert list(tmp_path.iterdir()) == []


def test_snapshot_path_is_folder(tmp_path):
    path = tmp_path / "model.h5"
    path.mkdir()
    with pytest.raises(SnapshotError) as raised:
        save_snapshot(path, make_net())
    message = str(raised.value)
    assert "is an existing folder, not a file" in message
    assert "writable" not in message


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("/ip", "'/' at either end"),
        ("ip/", "'/' at either end"),
        ("a//b", "empty or '.' part"),
        ("a/./b", "empty or '.' part"),
        (".", "current group"),
        ("ip\0", "NUL"),
        ("rng/x", "/rng group"),
        ("solver/ip", "/solver group"),
        ("data_layers/d", "/data_layers group"),
    ],
)
def test_layer_name_hdf5_path_rejected(name, problem):
    with pytest.raises(ConfigError) as raised:
        InnerProductLayer(name=name, output_dim=3, bottoms=["data"], tops=["ip"])
    message = str(raised.value)
    assert message.startswith("InnerProductLayer")
    assert f"invalid name={name!r}" in message
    assert problem in message


def test_layer_names_with_slashes_saved(tmp_path):
    """Names with '/' (Caffe's "inception_3a/1x1"), '..' and C comment
    ends save and resume as nested HDF5 groups."""
    x, y = toy_data()
    names = {"data": "in/..", "ip": "inception_3a/1x1 */ x", "out": "out"}
    layers = [
        MemoryDataLayer(name=names["data"], batch_size=4, data=[x, y]),
        InnerProductLayer(name=names["ip"], output_dim=3, bottoms=["data"], tops=["a"]),
        InnerProductLayer(name="ip", output_dim=3, bottoms=["a"], tops=["b"]),
        SoftmaxLossLayer(name="loss", bottoms=["b", "label"]),
    ]

    def solve(max_iter, seed):
        net = Net("slash", CPUBackend(dtype=np.float64, seed=seed), layers)
        method = SGD()
        params = make_solver_parameters(
            method, max_iter=max_iter, load_from=str(tmp_path)
        )
        solver = Solver(method, params, progress=False)
        solver.add_coffee_break(Snapshot(tmp_path), every_n_iter=2)
        solver.solve(net)
        return net, solver

    trained, _ = solve(2, seed=1)
    with h5py.File(tmp_path / "snapshot-000002.h5", "r") as handle:
        assert "inception_3a/1x1 */ x___weight" in handle
        assert "solver/history/inception_3a/1x1 */ x___weight" in handle
        assert "data_layers/in/.." in handle
        buffers = read_solver_buffers(handle["solver"], "snapshot-000002.h5")
    assert buffers["history"][(names["ip"], "weight")].shape == (3, 5)
    resumed, solver = solve(2, seed=2)
    assert solver.state.iter == 2
    np.testing.assert_array_equal(
        resumed.params[names["ip"]]["weight"], trained.params[names["ip"]]["weight"]
    )
    assert solver.method.history[(names["ip"], "weight")].shape == (3, 5)


def test_clashing_layer_paths_rejected(tmp_path):
    x, y = toy_data()
    layers = [
        MemoryDataLayer(name="data", batch_size=4, data=[x, y]),
        InnerProductLayer(name="ip", output_dim=3, bottoms=["data"], tops=["a"]),
        InnerProductLayer(
            name="ip___weight/x", output_dim=3, bottoms=["a"], tops=["b"]
        ),
        SoftmaxLossLayer(name="loss", bottoms=["b", "label"]),
    ]
    net = Net("clash", CPUBackend(dtype=np.float64, seed=1), layers)
    with pytest.raises(SnapshotError, match="rename one of the layers"):
        save_snapshot(tmp_path / "model.h5", net)
    assert list(tmp_path.iterdir()) == []


def test_save_snapshot_rejects_non_state(tmp_path):
    net = make_net()
    path = tmp_path / "model.h5"
    with pytest.raises(ConfigError, match="save_snapshot: invalid solver_state='3'"):
        save_snapshot(path, net, solver_state="3")
    assert not path.exists()
