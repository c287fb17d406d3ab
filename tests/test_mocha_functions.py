"""Mocha's free functions and names: DefaultBackend, registry_reset, net2dot,
get_layer, reset_statistics, TrainingSummary's keyword and MOCHA_CUDA_DEVICE."""

import io
import re
import shutil
import subprocess

import numpy as np
import pytest

import mochac
from mochac import (
    CPUBackend,
    DefaultBackend,
    InnerProductLayer,
    MemoryDataLayer,
    Net,
    SoftmaxLossLayer,
    TrainingSummary,
    get_layer,
    net2dot,
    registry_reset,
    reset_statistics,
)


def layers():
    x = np.zeros((4, 3))
    y = np.zeros((4, 1))
    data = MemoryDataLayer(batch_size=2, data=[x, y])
    ip = InnerProductLayer(name="ip", output_dim=2, bottoms=["data"], tops=["ip"])
    loss = SoftmaxLossLayer(name="loss", bottoms=["ip", "label"])
    return [data, ip, loss]


@pytest.mark.parametrize("flag", [None, "", "false", "0"])
def test_default_backend_cpu(monkeypatch, flag):
    if flag is None:
        monkeypatch.delenv("MOCHA_USE_CUDA", raising=False)
    else:
        monkeypatch.setenv("MOCHA_USE_CUDA", flag)
    backend = DefaultBackend(dtype=np.float64, seed=3)
    assert isinstance(backend, CPUBackend)
    assert backend.dtype == np.float64


def test_default_backend_invalid_flag(monkeypatch):
    monkeypatch.setenv("MOCHA_USE_CUDA", "yes please")
    with pytest.raises(mochac.ConfigError, match="MOCHA_USE_CUDA"):
        DefaultBackend()


def test_default_backend_cuda_flag(monkeypatch):
    # Without CuPy or a device, GPUBackend raises its own error; with them,
    # the flag gives a GPUBackend.
    monkeypatch.setenv("MOCHA_USE_CUDA", "true")
    try:
        backend = DefaultBackend()
    except mochac.MochacError as error:
        assert "GPUBackend" in str(error)
    else:
        assert isinstance(backend, mochac.GPUBackend)


def test_registry_reset_forgets_parameters():
    backend = CPUBackend(dtype=np.float64, seed=1)
    first = Net("first", backend, layers())
    first.params["ip"]["weight"][...] = 7.0
    shared = Net("shared", backend, layers())
    assert np.all(shared.params["ip"]["weight"] == 7.0)
    registry_reset(backend)
    fresh = Net("fresh", backend, layers())
    assert not np.all(fresh.params["ip"]["weight"] == 7.0)


def test_net2dot_file_object():
    net = Net("drawn", CPUBackend(dtype=np.float64), layers())
    out = io.StringIO()
    net2dot(out, net)
    text = out.getvalue()
    assert text.startswith("digraph net {")
    assert text.rstrip().endswith("}")
    assert "InnerProductLayer" in text
    assert "SoftmaxLossLayer" in text


def test_net2dot_path(tmp_path):
    net = Net("drawn", CPUBackend(dtype=np.float64), layers())
    path = tmp_path / "net.dot"
    net2dot(path, net)
    text = path.read_text()
    assert "InnerProductLayer" in text
    if shutil.which("dot") is not None:
        result = subprocess.run(
            ["dot", "-Tsvg", str(path)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr


def test_log_to_console_twice_one_handler():
    import logging

    from mochac import log_to_console

    root = logging.getLogger("mochac")
    before = list(root.handlers)
    try:
        first = log_to_console()
        second = log_to_console()
        added = [handler for handler in root.handlers if handler not in before]
        assert added == [second]
        assert first not in root.handlers
    finally:
        for handler in list(root.handlers):
            if handler not in before:
                root.removeHandler(handler)


def test_save_snapshot_exported(tmp_path):
    import numpy as np

    import mochac

    x = np.zeros((4, 2))
    layers = [
        mochac.MemoryDataLayer(batch_size=2, data=[x], tops=["x"]),
        mochac.InnerProductLayer(name="ip", output_dim=3, bottoms=["x"], tops=["y"]),
    ]
    saved = mochac.Net("saved", mochac.CPUBackend(dtype=np.float64, seed=1), layers)
    path = mochac.save_snapshot(tmp_path / "model.h5", saved)
    loaded = mochac.Net("loaded", mochac.CPUBackend(dtype=np.float64, seed=2), layers)
    mochac.load_snapshot(loaded, path)
    np.testing.assert_array_equal(
        loaded.params["ip"]["weight"], saved.params["ip"]["weight"]
    )


def test_get_layer_data_feeds_forward():
    """As in Mocha's prediction tutorial: writing into the data layer's array
    changes what the next forward pass reads."""
    x = np.zeros((1, 3))
    y = np.zeros((1, 1))
    layers = [
        MemoryDataLayer(name="data", batch_size=1, data=[x, y]),
        InnerProductLayer(name="ip", output_dim=2, bottoms=["data"], tops=["ip"]),
    ]
    net = Net("predict", CPUBackend(dtype=np.float64, seed=1), layers)
    get_layer(net, "data").data[0][0] = [1.0, 2.0, 3.0]
    net.forward()
    weight = net.params["ip"]["weight"]
    bias = net.params["ip"]["bias"]
    expected = weight @ np.array([1.0, 2.0, 3.0]) + bias
    np.testing.assert_allclose(net.output_blobs["ip"][0], expected, rtol=1e-12)


def test_get_layer_unknown_name():
    net = Net("named", CPUBackend(dtype=np.float64), layers())
    with pytest.raises(mochac.NotFoundError) as caught:
        get_layer(net, "ipp")
    message = str(caught.value)
    assert message.startswith("net 'named' has no layer named 'ipp'")
    assert "(close matches: 'ip')" in message
    assert "its layers are: 'MemoryDataLayer-0', 'ip', 'loss'" in message
    assert "pass one of these names" in message
    # Handlers of the ConfigError it raised before, and of KeyError, catch it.
    assert isinstance(caught.value, mochac.ConfigError)
    assert isinstance(caught.value, KeyError)
    with pytest.raises(mochac.NotFoundError, match="no layer named 'prob'"):
        net.get_layer("prob")


def test_reset_statistics_function():
    net = Net("stats", CPUBackend(dtype=np.float64), layers())
    net.forward()
    assert net.statistics()["loss-count"] == 2
    reset_statistics(net)
    assert net.statistics()["loss-count"] == 0


def test_training_summary_keyword():
    summary = TrainingSummary(statistic_names=["iter", "learning_rate"])
    assert summary.statistic_names == ("iter", "learning_rate")


@pytest.mark.parametrize(
    ("args", "kwargs", "problem"),
    [
        (("iter",), {"statistic_names": ["obj_val"]}, "pass them one way"),
        ((), {"statistic_names": "obj_val"}, "expected a list of names"),
        ((), {"statistic_names": ["loss"]}, "unknown statistic 'loss'"),
    ],
)
def test_training_summary_invalid_names(args, kwargs, problem):
    with pytest.raises(mochac.ConfigError, match=problem):
        TrainingSummary(*args, **kwargs)


@pytest.fixture
def host_cupy_module(monkeypatch):
    """Install the host stand-in for CuPy, which reports one device."""
    import sys

    import host_cupy

    monkeypatch.setitem(sys.modules, "cupy", host_cupy.module())
    monkeypatch.setitem(sys.modules, "cupyx", host_cupy.cupyx_module())


@pytest.mark.parametrize("value", [None, "", "0", " 0 "])
def test_cuda_device_variable_picks_device_0(monkeypatch, host_cupy_module, value):
    if value is None:
        monkeypatch.delenv("MOCHA_CUDA_DEVICE", raising=False)
    else:
        monkeypatch.setenv("MOCHA_CUDA_DEVICE", value)
    monkeypatch.setenv("MOCHA_USE_CUDA", "true")
    backend = DefaultBackend()
    assert isinstance(backend, mochac.GPUBackend)
    assert backend.device == 0


def test_cuda_device_variable_beyond_devices(monkeypatch, host_cupy_module):
    monkeypatch.setenv("MOCHA_CUDA_DEVICE", "1")
    with pytest.raises(
        mochac.DeviceError,
        match=r"device=1 \(from MOCHA_CUDA_DEVICE\); this machine has 1 CUDA",
    ):
        mochac.GPUBackend()


@pytest.mark.parametrize("value", ["gpu1", "-1", "1.5", "+1", "1_0"])
def test_cuda_device_variable_invalid(monkeypatch, value):
    # Checked before CuPy is imported, so this runs without it.
    monkeypatch.setenv("MOCHA_CUDA_DEVICE", value)
    with pytest.raises(mochac.ConfigError, match=re.escape(f"DEVICE='{value}'")):
        mochac.GPUBackend()


def test_cuda_device_argument_overrides_variable(monkeypatch, host_cupy_module):
    monkeypatch.setenv("MOCHA_CUDA_DEVICE", "5")
    assert mochac.GPUBackend(device=0).device == 0


def test_solver_parameters_read_as_attributes():
    """Mocha's scripts write setup(params.lr_policy, ...) and
    copy(params, load_from=...)."""
    from mochac import SGD, LRPolicy, make_solver_parameters

    policy = LRPolicy.Fixed(0.1)
    params = make_solver_parameters(SGD(), max_iter=10, lr_policy=policy)
    assert params.lr_policy is policy
    assert params.max_iter == 10
    resumed = params.copy(load_from="snapshots")
    assert resumed.load_from == "snapshots"
    assert params.load_from is None
    assert dict(resumed) == {**params, "load_from": "snapshots"}
    with pytest.raises(AttributeError, match="no 'lr'"):
        _ = params.lr
    with pytest.raises(mochac.ConfigError, match="unknown key.*max_iters"):
        params.copy(max_iters=5)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"max_iter": -5}, "invalid max_iter=-5"),
        ({"max_iter": 2.5}, "invalid max_iter=2.5"),
        ({"regu_coef": -1.0}, "invalid regu_coef=-1.0"),
        ({"lr_policy": 0.1}, "invalid lr_policy=0.1"),
        ({"mom_policy": 0.9}, "invalid mom_policy=0.9"),
        ({"load_from": 5}, "invalid load_from=5"),
    ],
)
def test_solver_parameters_copy_checks_values(changes, match):
    from mochac import SGD, make_solver_parameters

    params = make_solver_parameters(SGD(), max_iter=10)
    with pytest.raises(mochac.ConfigError, match=match):
        params.copy(**changes)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("max_iter", -1, "invalid max_iter=-1"),
        ("lr_policy", "abc", "invalid lr_policy='abc'"),
        ("beta1", 1.5, "invalid beta1=1.5"),
    ],
)
def test_solver_checks_changed_parameters(key, value, match):
    """A value written into the dict after make_solver_parameters is checked
    when the Solver is built, not deep inside solve()."""
    from mochac import Adam, Solver, make_solver_parameters

    params = make_solver_parameters(Adam(), max_iter=10)
    params[key] = value
    with pytest.raises(mochac.ConfigError, match=match):
        Solver(Adam(), params)


def test_solver_parameters_attribute_assignment():
    """params.max_iter = n writes the key that Solver reads."""
    from mochac import SGD, make_solver_parameters

    params = make_solver_parameters(SGD(), max_iter=10)
    params.max_iter = 20
    assert params["max_iter"] == 20
    assert params.max_iter == 20
    with pytest.raises(AttributeError, match="no 'max_iters'"):
        params.max_iters = 5
    assert "max_iters" not in params


def test_forward_epoch_runs_one_epoch():
    # 4 samples in batches of 2: the second pass ends the epoch.
    net = Net("epoch", CPUBackend(dtype=np.float64), layers())
    mochac.forward_epoch(net)
    assert net.statistics()["loss-count"] == 4
    # Mocha's forward_epoch starts where the data layer is and adds up.
    mochac.forward_epoch(net)
    assert net.statistics()["loss-count"] == 8


def test_forward_epoch_without_data_layer():
    # RandomNormalLayer is no data source, so no pass would end an epoch.
    noise = mochac.RandomNormalLayer(
        name="noise", tops=["x"], output_dims=(3,), batch_sizes=(2,), eltype=np.float64
    )
    ip = InnerProductLayer(name="ip", output_dim=2, bottoms=["x"], tops=["ip"])
    net = Net("no-data", CPUBackend(dtype=np.float64), [noise, ip])
    with pytest.raises(mochac.ConfigError, match="no data layer"):
        mochac.forward_epoch(net)


def test_show_statistics_prints_each_layer():
    net = Net("show", CPUBackend(dtype=np.float64), layers())
    mochac.forward_epoch(net)
    out = io.StringIO()
    stats = mochac.show_statistics(net, title="Test", file=out)
    text = out.getvalue()
    assert stats == net.statistics()
    assert text.startswith("## Test\n")
    assert "loss-softmax-loss (avg over 4) = " in text


def test_dump_statistics_into_dict():
    # Zero inputs and a zero bias give uniform probabilities over 2 classes.
    net = Net("dump", CPUBackend(dtype=np.float64), layers())
    mochac.forward_epoch(net)
    storage = {}
    stats = mochac.dump_statistics(storage, net)
    assert stats == net.statistics()
    assert list(storage) == ["loss-softmax-loss"]
    np.testing.assert_allclose(storage["loss-softmax-loss"], np.log(2), rtol=1e-12)


def test_dump_statistics_into_solver_lounge(capsys):
    from mochac import SGD, CoffeeBreak, LRPolicy, Solver, make_solver_parameters

    class Dump(CoffeeBreak):
        def enjoy(self, solver, net):
            mochac.forward_epoch(net)
            mochac.dump_statistics(solver, net, show=True)
            net.reset_statistics()

    net = Net("dump-solve", CPUBackend(dtype=np.float64), layers())
    params = make_solver_parameters(SGD(), max_iter=4, lr_policy=LRPolicy.Fixed(0.0))
    solver = Solver(SGD(), params, progress=False)
    solver.add_coffee_break(Dump(), every_n_iter=2)
    solver.solve(net)
    series = solver.lounge.statistics["loss-softmax-loss"]
    # Iteration 0 runs the breaks too; a zero learning rate keeps the loss.
    assert sorted(series) == [0, 2, 4]
    np.testing.assert_allclose(list(series.values()), np.log(2), rtol=1e-12)
    assert capsys.readouterr().out.count("loss-softmax-loss (avg over") == 3


def test_dump_statistics_lounge_needs_iteration():
    from mochac.runtime.coffee_lounge import CoffeeLounge

    net = Net("dump-lounge", CPUBackend(dtype=np.float64), layers())
    mochac.forward_epoch(net)
    lounge = CoffeeLounge()
    with pytest.raises(mochac.ConfigError, match="missing iteration"):
        mochac.dump_statistics(lounge, net)
    mochac.dump_statistics(lounge, net, iteration=7)
    assert list(lounge.statistics["loss-softmax-loss"]) == [7]
    with pytest.raises(mochac.ConfigError, match="invalid storage type list"):
        mochac.dump_statistics([], net)


def test_dump_statistics_rejects_non_net():
    with pytest.raises(mochac.ConfigError, match="dump_statistics: expected a Net"):
        mochac.dump_statistics({}, "net")


@pytest.mark.parametrize("iteration", ["7", 1.5, True, -1])
def test_dump_statistics_rejects_bad_iteration(iteration):
    from mochac.runtime.coffee_lounge import CoffeeLounge

    net = Net("dump-iteration", CPUBackend(dtype=np.float64), layers())
    lounge = CoffeeLounge()
    with pytest.raises(
        mochac.ConfigError, match=r"dump_statistics: invalid iteration="
    ):
        mochac.dump_statistics(lounge, net, iteration=iteration)
    assert lounge.statistics == {}


@pytest.mark.parametrize("out", [1, np.int8(-3), None])
def test_net2dot_rejects_non_path(out):
    net = Net("drawn", CPUBackend(dtype=np.float64), layers())
    with pytest.raises(mochac.ConfigError, match=r"net2dot: invalid out="):
        net2dot(out, net)


@pytest.mark.parametrize("file", ["stats.txt", 2.5])
def test_show_statistics_rejects_non_file(file):
    net = Net("shown", CPUBackend(dtype=np.float64), layers())
    net.forward()
    with pytest.raises(mochac.ConfigError, match="show_statistics: invalid file="):
        mochac.show_statistics(net, file=file)
