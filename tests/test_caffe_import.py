"""Importing Caffe parameters exported to HDF5 (Mocha's dump_network_hdf5 layout)."""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import pytest

from mochac import (
    SGD,
    ConfigError,
    ConstantInitializer,
    ConvolutionLayer,
    CPUBackend,
    InnerProductLayer,
    LRPolicy,
    MemoryDataLayer,
    Net,
    SnapshotError,
    SoftmaxLossLayer,
    Solver,
    load_snapshot,
    make_solver_parameters,
)
from mochac.caffe import load_caffe_hdf5, load_network
from mochac.runtime.snapshot import save_snapshot
from mochac.runtime.snapshot_checks import shapes_match

RNG = np.random.default_rng(0)
# (N, C, H, W) = (2, 3, 6, 6); conv1 has 4 filters of 3x3, so ip1 has 4*4*4 = 64 inputs.
X = RNG.normal(size=(2, 3, 6, 6))
Y = np.array([[0.0], [2.0]])


def caffe_blobs(ip_outputs=5):
    """Return parameters in the shapes Caffe's exporter writes (4-D everywhere)."""
    rng = np.random.default_rng(1)
    return {
        "conv1___filter": rng.normal(size=(4, 3, 3, 3)),
        "conv1___bias": rng.normal(size=(1, 1, 1, 4)),
        "ip1___weight": rng.normal(size=(1, 1, ip_outputs, 64)),
        "ip1___bias": rng.normal(size=(1, 1, 1, ip_outputs)),
    }


def write_model(path: Path, blobs: dict) -> Path:
    with h5py.File(path, "w") as handle:
        for key, value in blobs.items():
            handle.create_dataset(key, data=value.astype(np.float32))
    return path


def build_net(ip_outputs=5, ip_bias=0.0):
    layers = [
        MemoryDataLayer(name="data", batch_size=2, data=[X, Y]),
        ConvolutionLayer(
            name="conv1", n_filter=4, kernel=(3, 3), bottoms=["data"], tops=["conv1"]
        ),
        InnerProductLayer(
            name="ip1",
            output_dim=ip_outputs,
            bias_init=ConstantInitializer(ip_bias),
            bottoms=["conv1"],
            tops=["ip1"],
        ),
        SoftmaxLossLayer(name="loss", bottoms=["ip1", "label"]),
    ]
    return Net("caffe", CPUBackend(dtype=np.float64, seed=0), layers, keep=["ip1"])


@pytest.fixture(scope="module")
def net():
    return build_net()


def snapshot_params(net):
    return {
        layer: {name: array.copy() for name, array in params.items()}
        for layer, params in net.params.items()
    }


# --- loading -------------------------------------------------------------------------


def test_caffe_parameters_loaded(tmp_path, net):
    blobs = caffe_blobs()
    path = write_model(tmp_path / "model.hdf5", blobs)
    result = load_caffe_hdf5(net, path)

    assert sorted(result["loaded"]) == sorted(blobs)
    assert result["initialized"] == []
    for key, value in blobs.items():
        layer, _, name = key.partition("___")
        expected = value.astype(np.float32).astype(np.float64)
        np.testing.assert_array_equal(
            net.params[layer][name], expected.reshape(net.params[layer][name].shape)
        )


def test_caffe_forward_uses_loaded_weights(tmp_path, net):
    blobs = caffe_blobs()
    load_caffe_hdf5(net, write_model(tmp_path / "model.hdf5", blobs))
    net.forward()

    # Valid 3x3 cross-correlation, then the inner product, in NumPy.
    weights = blobs["conv1___filter"].astype(np.float32).astype(np.float64)
    conv_bias = blobs["conv1___bias"].astype(np.float32).ravel()
    conv = np.zeros((2, 4, 4, 4))
    for row in range(4):
        for col in range(4):
            patch = X[:, :, row : row + 3, col : col + 3]
            conv[:, :, row, col] = np.einsum("nchw,fchw->nf", patch, weights)
    conv += conv_bias.reshape(1, 4, 1, 1)
    ip_weight = blobs["ip1___weight"].astype(np.float32).reshape(5, 64)
    ip_bias = blobs["ip1___bias"].astype(np.float32).ravel()
    expected = conv.reshape(2, 64) @ ip_weight.T + ip_bias

    np.testing.assert_allclose(net.blobs["ip1"], expected, rtol=1e-6, atol=1e-6)


def test_caffe_extra_layers_ignored(tmp_path, net):
    blobs = caffe_blobs()
    blobs["ip2___weight"] = np.ones((1, 1, 10, 5))
    result = load_caffe_hdf5(net, write_model(tmp_path / "model.hdf5", blobs))

    assert "ip2___weight" not in result["loaded"]
    assert len(result["loaded"]) == 4


def test_caffe_exact_shapes_accepted(tmp_path, net):
    blobs = caffe_blobs()
    blobs["ip1___weight"] = blobs["ip1___weight"].reshape(5, 64)
    blobs["ip1___bias"] = blobs["ip1___bias"].reshape(5)
    load_caffe_hdf5(net, write_model(tmp_path / "model.hdf5", blobs))
    np.testing.assert_array_equal(
        net.params["ip1"]["bias"], blobs["ip1___bias"].astype(np.float32)
    )


def test_caffe_missing_bias_uses_initializer(tmp_path, caplog):
    net = build_net(ip_bias=0.5)
    net.params["ip1"]["bias"][...] = 7.0
    blobs = caffe_blobs()
    del blobs["ip1___bias"]
    caplog.set_level(logging.WARNING, logger="mochac.caffe")
    result = load_caffe_hdf5(net, write_model(tmp_path / "model.hdf5", blobs))

    assert result["initialized"] == ["ip1___bias"]
    np.testing.assert_array_equal(net.params["ip1"]["bias"], np.full(5, 0.5))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "ip1___bias" in warnings[0]


def test_load_network_mocha_signature(tmp_path, net):
    blobs = caffe_blobs()
    del blobs["conv1___filter"]
    path = write_model(tmp_path / "model.hdf5", blobs)
    with h5py.File(path, "r") as handle:
        with pytest.raises(SnapshotError, match="conv1___filter"):
            load_network(handle, net)
        result = load_network(handle, net, False)
    assert "conv1___filter" in result["initialized"]


# --- errors ---------------------------------------------------------------------------


def test_caffe_wrong_shape_names_everything(tmp_path):
    # Mocha's case: ip1 saved with 500 outputs, loaded into ip1 with 400.
    net = build_net(ip_outputs=400)
    before = snapshot_params(net)
    path = write_model(tmp_path / "model.hdf5", caffe_blobs(ip_outputs=500))
    with pytest.raises(SnapshotError) as raised:
        load_caffe_hdf5(net, path)
    message = str(raised.value)

    assert "layer 'ip1'" in message
    assert "parameter 'weight'" in message
    assert str(path) in message
    assert "(1, 1, 500, 64)" in message
    assert "(400, 64)" in message
    # conv1 came first in the file and fitted, but nothing was copied.
    np.testing.assert_array_equal(
        net.params["conv1"]["filter"], before["conv1"]["filter"]
    )


def test_caffe_missing_layer_raises(tmp_path, net):
    before = snapshot_params(net)
    blobs = caffe_blobs()
    del blobs["ip1___weight"]
    path = write_model(tmp_path / "model.hdf5", blobs)
    with pytest.raises(SnapshotError) as raised:
        load_caffe_hdf5(net, path)
    message = str(raised.value)

    assert "layer 'ip1': parameter 'weight' of shape (5, 64)" in message
    assert "ip1___weight" in message
    assert str(path) in message
    assert "allow_missing=True" in message
    np.testing.assert_array_equal(
        net.params["conv1"]["filter"], before["conv1"]["filter"]
    )


@pytest.mark.parametrize("opened", [False, True])
def test_load_network_missing_names_its_option(tmp_path, net, opened):
    blobs = caffe_blobs()
    del blobs["ip1___weight"]
    path = write_model(tmp_path / "model.hdf5", blobs)
    with pytest.raises(SnapshotError) as raised:
        if opened:
            with h5py.File(path, "r") as handle:
                load_network(handle, net)
        else:
            load_network(path, net)
    message = str(raised.value)

    # load_network has no allow_missing argument, so the error names its own.
    assert "die_if_not_found=False" in message
    assert "allow_missing" not in message


def test_load_network_closed_file(tmp_path, net):
    path = write_model(tmp_path / "model.hdf5", caffe_blobs())
    handle = h5py.File(path, "r")
    handle.close()
    with pytest.raises(ConfigError) as raised:
        load_network(handle, net)
    message = str(raised.value)

    assert "the h5py.File passed as file is closed" in message
    assert "pass an open h5py.File or the path of the file" in message


def test_load_from_model_missing_names_load_network(tmp_path):
    blobs = caffe_blobs()
    del blobs["ip1___weight"]
    path = write_model(tmp_path / "model.hdf5", blobs)
    method = SGD()
    params = make_solver_parameters(
        method, max_iter=1, lr_policy=LRPolicy.Fixed(0.1), load_from=str(path)
    )
    with pytest.raises(SnapshotError) as raised:
        Solver(method, params).solve(build_net())
    message = str(raised.value)

    assert "load_network(path, net, die_if_not_found=False)" in message
    assert "allow_missing" not in message


def test_caffe_allow_missing_initializes(tmp_path, caplog):
    net = build_net()
    blobs = caffe_blobs()
    del blobs["ip1___weight"]
    caplog.set_level(logging.INFO, logger="mochac.caffe")
    result = load_caffe_hdf5(
        net, write_model(tmp_path / "model.hdf5", blobs), allow_missing=True
    )

    assert result["initialized"] == ["ip1___weight"]
    # The default initializer is Xavier: uniform on +-sqrt(3 / fan_in).
    weight = net.params["ip1"]["weight"]
    assert np.abs(weight).max() <= np.sqrt(3 / 64)
    assert np.abs(weight).max() > 0
    infos = [r.getMessage() for r in caplog.records if "lacks" in r.getMessage()]
    assert len(infos) == 1
    assert "ip1___weight" in infos[0]


def test_caffe_file_not_found(tmp_path, net):
    with pytest.raises(SnapshotError) as raised:
        load_caffe_hdf5(net, tmp_path / "absent.hdf5")
    assert str(tmp_path / "absent.hdf5") in str(raised.value)


def test_caffe_group_instead_of_dataset(tmp_path, net):
    path = write_model(tmp_path / "model.hdf5", caffe_blobs())
    with h5py.File(path, "a") as handle:
        del handle["conv1___bias"]
        handle.create_group("conv1___bias")
    with pytest.raises(SnapshotError) as raised:
        load_caffe_hdf5(net, path)
    message = str(raised.value)
    assert "layer 'conv1'" in message
    assert "(dataset conv1___bias) is a group" in message


def write_damaged_ip_weight(path: Path, weight) -> Path:
    """Write Caffe's blobs with ``weight`` as ip1___weight, written last, so a
    load that copied before checking would change conv1 first."""
    blobs = caffe_blobs()
    with h5py.File(path, "w") as handle:
        for key in ("conv1___filter", "conv1___bias", "ip1___bias"):
            handle.create_dataset(key, data=blobs[key].astype(np.float32))
        handle.create_dataset("ip1___weight", data=weight, chunks=True, fletcher32=True)
    return path


@pytest.mark.parametrize(
    ("weight", "problem"),
    [
        (np.full((1, 1, 5, 64), np.nan, np.float32), "NaN or infinite"),
        (np.full((1, 1, 5, 64), np.inf, np.float32), "NaN or infinite"),
        (np.full((1, 1, 5, 64), b"a"), "datatype |S1"),
        (np.ones((1, 1, 5, 64), np.int32), "has the integer dtype int32"),
    ],
)
def test_caffe_invalid_values_change_nothing(tmp_path, weight, problem):
    net = build_net()
    before = snapshot_params(net)
    path = write_damaged_ip_weight(tmp_path / "model.hdf5", weight)
    with pytest.raises(SnapshotError) as raised:
        load_caffe_hdf5(net, path)
    message = str(raised.value)

    assert problem in message
    assert "layer 'ip1': parameter 'weight'" in message
    assert str(path) in message
    for layer, params in before.items():
        for name, array in params.items():
            np.testing.assert_array_equal(net.params[layer][name], array)


@pytest.mark.parametrize("dtype", [np.int64, np.uint8])
def test_caffe_integer_dataset_not_damaged(tmp_path, dtype):
    """An integer dataset is a valid file of the wrong dtype, not a damaged one."""
    path = write_damaged_ip_weight(
        tmp_path / "model.hdf5", np.ones((1, 1, 5, 64), dtype)
    )
    with pytest.raises(SnapshotError) as raised:
        load_caffe_hdf5(build_net(), path)
    message = str(raised.value)

    assert f"has the integer dtype {np.dtype(dtype).name}" in message
    assert "a float dtype (float32 or float64) is expected" in message
    assert "values.astype(np.float32)" in message
    assert "damaged" not in message


def test_caffe_failed_checksum_changes_nothing(tmp_path):
    net = build_net()
    before = snapshot_params(net)
    path = write_damaged_ip_weight(
        tmp_path / "model.hdf5", np.ones((1, 1, 5, 64), np.float32)
    )
    with h5py.File(path, "r") as handle:
        start = handle["ip1___weight"].id.get_chunk_info(0).byte_offset
    raw = bytearray(path.read_bytes())
    raw[start + 5] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(SnapshotError) as raised:
        load_caffe_hdf5(net, path)

    assert "ip1___weight cannot be read" in str(raised.value)
    np.testing.assert_array_equal(
        net.params["conv1"]["filter"], before["conv1"]["filter"]
    )


@pytest.mark.parametrize(
    ("stored", "expected", "fits"),
    [
        ((1, 1, 5, 64), (5, 64), True),
        ((1, 1, 1, 5), (5,), True),
        ((4, 3, 3, 3), (4, 3, 3, 3), True),
        ((1, 1, 1, 1), (1,), True),
        ((5, 64), (64, 5), False),
        ((1, 1, 1, 320), (5, 64), False),
        ((2, 5), (5,), False),
    ],
)
def test_shapes_match_table(stored, expected, fits):
    assert shapes_match(stored, expected) is fits


def tied_net():
    from mochac import TiedInnerProductLayer

    x = RNG.normal(size=(2, 4))
    layers = [
        MemoryDataLayer(name="data", batch_size=2, data=[x], tops=["x"]),
        InnerProductLayer(name="enc", output_dim=3, bottoms=["x"], tops=["code"]),
        TiedInnerProductLayer(
            name="dec", tied_param_key="enc", bottoms=["code"], tops=["out"]
        ),
    ]
    return Net("tied", CPUBackend(dtype=np.float64, seed=2), layers)


@pytest.mark.parametrize("allow_missing", [False, True])
def test_caffe_tied_decoder_uses_encoder_weight(tmp_path, allow_missing):
    rng = np.random.default_rng(5)
    blobs = {
        "enc___weight": rng.normal(size=(3, 4)),
        "enc___bias": rng.normal(size=(3,)),
        "dec___bias": rng.normal(size=(4,)),
    }
    path = write_model(tmp_path / "tied.h5", blobs)
    net = tied_net()
    result = load_caffe_hdf5(net, path, allow_missing=allow_missing)
    assert sorted(result["loaded"]) == sorted(blobs)
    assert result["initialized"] == []
    np.testing.assert_allclose(
        net.params["enc"]["weight"], blobs["enc___weight"].astype(np.float32)
    )
    assert net.params["dec"]["weight"] is net.params["enc"]["weight"]


# --- the solver's load_from and load_snapshot ------------------------------------------


def assert_loaded(net, blobs):
    for key, value in blobs.items():
        layer, _, name = key.partition("___")
        target = net.params[layer][name]
        expected = value.astype(np.float32).astype(np.float64).reshape(target.shape)
        np.testing.assert_array_equal(target, expected, err_msg=key)


def test_load_snapshot_reads_4d_model(tmp_path):
    """Mocha's HDF5 format stores each parameter as a 4-D tensor."""
    blobs = caffe_blobs()
    net = build_net()
    load_snapshot(net, write_model(tmp_path / "model.hdf5", blobs))
    assert_loaded(net, blobs)


def test_load_from_fine_tunes_4d_model(tmp_path):
    blobs = caffe_blobs()
    path = write_model(tmp_path / "model.hdf5", blobs)
    net = build_net()
    params = make_solver_parameters(SGD(), max_iter=0, load_from=str(path))
    state = Solver(SGD(), params, progress=False).solve(net)
    assert state.iter == 0
    assert_loaded(net, blobs)


def test_load_snapshot_4d_model_wrong_size(tmp_path):
    blobs = caffe_blobs(ip_outputs=6)
    path = write_model(tmp_path / "model.hdf5", blobs)
    with pytest.raises(SnapshotError, match=r"\(1, 1, 6, 64\), but the net expects"):
        load_snapshot(build_net(), path)


def test_load_from_model_without_biases(tmp_path, caplog):
    """Caffe's exporter may leave biases out; load_from then keeps their
    initial values, as load_network does."""
    blobs = {key: value for key, value in caffe_blobs().items() if "bias" not in key}
    path = write_model(tmp_path / "model.hdf5", blobs)
    net = build_net(ip_bias=0.25)
    params = make_solver_parameters(SGD(), max_iter=0, load_from=str(path))
    with caplog.at_level(logging.WARNING, logger="mochac"):
        Solver(SGD(), params, progress=False).solve(net)
    assert_loaded(net, blobs)
    np.testing.assert_array_equal(net.params["ip1"]["bias"], 0.25)
    assert "has no conv1___bias, ip1___bias" in caplog.text


def test_load_from_model_without_weight_fails(tmp_path):
    blobs = {k: v for k, v in caffe_blobs().items() if k != "ip1___weight"}
    path = write_model(tmp_path / "model.hdf5", blobs)
    params = make_solver_parameters(SGD(), max_iter=0, load_from=str(path))
    with pytest.raises(SnapshotError, match="ip1___weight"):
        Solver(SGD(), params, progress=False).solve(build_net())


def shared_key_net():
    x = np.zeros((4, 1, 2, 2), np.float32)
    layers = [
        MemoryDataLayer(name="d", batch_size=4, data=[x], tops=["data"]),
        InnerProductLayer(
            name="a1", output_dim=3, param_key="s", bottoms=["data"], tops=["a1"]
        ),
        InnerProductLayer(
            name="a2", output_dim=3, param_key="s", bottoms=["data"], tops=["a2"]
        ),
    ]
    return Net("shared-key", CPUBackend(seed=1), layers)


def test_param_key_sharing_layers_read_either_dataset(tmp_path):
    """a1 and a2 share one array: a1's datasets fill it without a2's."""
    net = shared_key_net()
    path = tmp_path / "one.h5"
    with h5py.File(path, "w") as handle:
        handle["a1___weight"] = np.full((3, 4), 1.5, np.float32)
        handle["a1___bias"] = np.zeros(3, np.float32)
    load_caffe_hdf5(net, path)
    assert np.all(net.params["a2"]["weight"] == 1.5)


def test_param_key_sharing_layers_reject_different_values(tmp_path):
    net = shared_key_net()
    before = net.params["a1"]["weight"].copy()
    path = tmp_path / "two.h5"
    with h5py.File(path, "w") as handle:
        handle["a1___weight"] = np.ones((3, 4), np.float32)
        handle["a2___weight"] = np.full((3, 4), 2.0, np.float32)
        handle["a1___bias"] = handle["a2___bias"] = np.zeros(3, np.float32)
    with pytest.raises(SnapshotError, match="a1___weight and a2___weight hold"):
        load_caffe_hdf5(net, path)
    np.testing.assert_array_equal(net.params["a1"]["weight"], before)


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (
            lambda net, path: load_network(net, path),
            r"\(Net, str\).*load_network\(file, net\)",
        ),
        (
            lambda net, path: load_caffe_hdf5(path, net),
            r"\(str, Net\).*load_caffe_hdf5\(net, path\)",
        ),
        (
            lambda net, path: load_snapshot(path, net),
            r"\(str, Net\).*load_snapshot\(net, path\)",
        ),
        (
            lambda net, path: save_snapshot(net, path),
            r"\(Net, str\).*save_snapshot\(path, net\)",
        ),
    ],
)
def test_swapped_arguments_name_order(tmp_path, net, call, expected):
    path = str(write_model(tmp_path / "model.h5", caffe_blobs()))
    before = snapshot_params(net)
    with pytest.raises(ConfigError, match=expected):
        call(net, path)
    for layer, params in before.items():
        for name, array in params.items():
            np.testing.assert_array_equal(net.params[layer][name], array)
