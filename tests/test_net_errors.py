"""Errors a user meets when building, training or reusing a net."""

import copy
import os
import pickle
import stat

import numpy as np
import pytest

from mochac import (
    SGD,
    AccuracyLayer,
    AsyncHDF5DataLayer,
    BinaryCrossEntropyLossLayer,
    CoffeeBreak,
    ConfigError,
    CPUBackend,
    DataError,
    DropoutLayer,
    HDF5DataLayer,
    InnerProductLayer,
    MemoryDataLayer,
    MochacError,
    MultinomialLogisticLossLayer,
    Net,
    Neurons,
    NotFoundError,
    NumericalError,
    PowerLayer,
    RandomNormalLayer,
    Snapshot,
    SnapshotError,
    SoftmaxLayer,
    SoftmaxLossLayer,
    Solver,
    SquareLossLayer,
    make_solver_parameters,
)


def classifier(labels):
    x = np.arange(len(labels) * 2, dtype=np.float64).reshape(len(labels), 2)
    y = np.asarray(labels, dtype=np.float64).reshape(-1, 1)
    return [
        MemoryDataLayer(name="data", batch_size=2, data=[x, y]),
        InnerProductLayer(name="ip", output_dim=3, bottoms=["data"], tops=["ip"]),
        SoftmaxLossLayer(name="loss", bottoms=["ip", "label"]),
    ]


def test_empty_net():
    with pytest.raises(ConfigError, match="has no layers"):
        Net("empty", CPUBackend(), [])


def test_single_layer_not_list():
    layer = InnerProductLayer(name="ip", output_dim=3, bottoms=["x"], tops=["y"])
    with pytest.raises(ConfigError, match=r"wrap a single layer in \[\.\.\.\]"):
        Net("single", CPUBackend(), layer)


def test_solve_without_loss():
    x = np.zeros((4, 2))
    layers = [
        MemoryDataLayer(name="data", batch_size=2, tops=["data"], data=[x]),
        InnerProductLayer(name="ip", output_dim=3, bottoms=["data"], tops=["ip"]),
        SoftmaxLayer(name="prob", bottoms=["ip"], tops=["prob"]),
    ]
    net = Net("no-loss", CPUBackend(dtype=np.float64), layers)
    solver = Solver(SGD(), make_solver_parameters(SGD(), max_iter=5))
    with pytest.raises(ConfigError, match="no loss layer"):
        solver.solve(net)


def test_destroyed_net_raises():
    net = Net("gone", CPUBackend(dtype=np.float64), classifier([0, 1, 2, 0]))
    net.destroy()
    with pytest.raises(MochacError, match="destroyed"):
        net.forward()
    with pytest.raises(MochacError, match="destroyed"):
        net.backward()


def test_bad_label_names_data_row():
    # Batch 2: the second batch holds rows 2 and 3; row 3 has label 7.
    net = Net("labels", CPUBackend(dtype=np.float64), classifier([0, 1, 2, 7]))
    net.forward()
    with pytest.raises(DataError) as caught:
        net.forward()
    message = str(caught.value)
    assert "7.0" in message
    assert "sample 1 of the batch" in message
    assert "row 3 of data layer 'data'" in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write read-only folders")
def test_readonly_snapshot_folder(tmp_path):
    folder = tmp_path / "snapshots"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    net = Net("ro", CPUBackend(dtype=np.float64), classifier([0, 1, 2, 0]))
    solver = Solver(SGD(), make_solver_parameters(SGD(), max_iter=1))
    solver.add_coffee_break(Snapshot(folder), every_n_iter=1)
    with pytest.raises(SnapshotError, match="cannot write"):
        solver.solve(net)


def test_snapshot_folder_is_file(tmp_path):
    blocker = tmp_path / "snapshots"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError) as raised:
        Snapshot(blocker)
    assert f"Snapshot folder {blocker} is a file, not a folder" in str(raised.value)
    assert "pass a folder path" in str(raised.value)
    assert blocker.read_text() == "not a folder"


def test_snapshot_folder_made_file_fails_at_start(tmp_path):
    """A file that takes the folder's path after the Snapshot break was
    created fails solve() before the first forward pass."""
    blocker = tmp_path / "snapshots"
    net = Net("file", CPUBackend(dtype=np.float64), classifier([0, 1, 2, 0]))
    solver = Solver(SGD(), make_solver_parameters(SGD(), max_iter=1))
    breaks_run = []
    solver.add_coffee_break(RecordIterations(breaks_run), every_n_iter=1)
    solver.add_coffee_break(Snapshot(blocker), every_n_iter=1)
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="is a file, not a folder; pass a folder"):
        solver.solve(net)
    # The break before the Snapshot break would run at iteration 0.
    assert breaks_run == []
    assert blocker.read_text() == "not a folder"


class RecordIterations(CoffeeBreak):
    def __init__(self, iterations):
        self.iterations = iterations

    def enjoy(self, solver, net):
        self.iterations.append(solver.state.iter)


def test_unnamed_layer_message():
    with pytest.raises(
        ConfigError, match=r"MemoryDataLayer \(unnamed\): invalid batch_size"
    ):
        MemoryDataLayer(batch_size=0, data=[np.zeros((2, 2)), np.zeros((2, 1))])


def test_unknown_data_layer_lists_names():
    x = np.zeros((4, 3), np.float32)
    y = np.zeros((4, 1), np.float32)
    net = Net(
        "data-names",
        CPUBackend(),
        [
            MemoryDataLayer(batch_size=2, data=[x, y]),
            InnerProductLayer(name="ip", output_dim=2, bottoms=["data"], tops=["o"]),
            SoftmaxLossLayer(name="loss", bottoms=["o", "label"]),
        ],
    )
    with pytest.raises(KeyError, match="its data layers are: 'MemoryDataLayer-0'"):
        net.data_source("")
    assert net.data_source("MemoryDataLayer-0") is not None
    # The same lookups as mochac errors, whose text is not quoted like a key.
    with pytest.raises(NotFoundError) as caught:
        net.data_source("ip")
    assert str(caught.value).startswith("net 'data-names' has no data layer named")
    with pytest.raises(MochacError, match="has no layer named 'conv'"):
        net.ir.layer("conv")
    with pytest.raises(MochacError, match="no blob named 'nothing'"):
        net.blobs["nothing"]


@pytest.mark.parametrize(
    ("name", "backend", "match"),
    [
        (None, "cpu", "name"),
        ("", "cpu", "name"),
        ("n", None, "invalid backend None"),
        ("n", "CPUBackend", "invalid backend 'CPUBackend'"),
    ],
)
def test_net_arguments_checked(name, backend, match):
    x = np.zeros((4, 3), np.float32)
    y = np.zeros((4, 1), np.float32)
    layers = [
        MemoryDataLayer(batch_size=2, data=[x, y]),
        InnerProductLayer(name="ip", output_dim=2, bottoms=["data"], tops=["ip"]),
    ]
    if backend == "cpu":
        backend = CPUBackend(threads=1)
    with pytest.raises(ConfigError, match=match):
        Net(name, backend, layers)


def sqrt_net(opt_level, x, shift=-1.0):
    """Dropout, a ReLU, then sqrt(h + shift), which is NaN where h + shift < 0."""
    y = np.zeros((len(x), 1))
    layers = [
        MemoryDataLayer(name="data", batch_size=4, data=[x, y]),
        DropoutLayer(name="drop", ratio=0.5, bottoms=["data"], tops=["dropped"]),
        InnerProductLayer(
            name="ip1",
            output_dim=3,
            neuron=Neurons.ReLU(),
            bottoms=["dropped"],
            tops=["h"],
        ),
        PowerLayer(name="sqrt", power=0.5, shift=shift, bottoms=["h"], tops=["s"]),
        InnerProductLayer(name="ip2", output_dim=2, bottoms=["s"], tops=["out"]),
        AccuracyLayer(name="acc", bottoms=["out", "label"]),
        SoftmaxLossLayer(name="loss", bottoms=["out", "label"]),
    ]
    return Net(
        f"sqrt-{opt_level}",
        CPUBackend(dtype=np.float64, seed=3),
        layers,
        opt_level=opt_level,
    )


@pytest.mark.parametrize("opt_level", [0, 1])
def test_nan_loss_names_first_layer(opt_level):
    """sqrt(h - 1) is NaN where the ReLU output h is below 1."""
    x = np.random.default_rng(0).normal(size=(8, 5))
    net = sqrt_net(opt_level, x)
    with pytest.raises(NumericalError) as caught:
        net.forward()
    message = str(caught.value)
    assert "loss layer 'loss' computed nan" in message
    assert "layer 'sqrt' (PowerLayer) is the first to output NaN" in message
    assert "in its top 's'" in message


@pytest.mark.parametrize("loss", ["binary-cross-entropy", "multinomial-logistic"])
def test_nan_probability_loss_names_first_layer(loss):
    """A NaN probability must reach the loss: C's fmax(NaN, 1e-20) would
    return 1e-20 and make the loss finite."""
    x = np.linspace(0, 1, 12).reshape(4, 3)
    y = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    if loss == "binary-cross-entropy":
        head = [BinaryCrossEntropyLossLayer(name="loss", bottoms=["s", "label"])]
    else:
        y = y[:, :1]
        head = [
            SoftmaxLayer(name="softmax", bottoms=["s"], tops=["prob"]),
            MultinomialLogisticLossLayer(name="loss", bottoms=["prob", "label"]),
        ]
    layers = [
        MemoryDataLayer(name="data", batch_size=4, data=[x, y]),
        # sqrt(x - 0.5) is NaN for x below 0.5 and in [0, 1) elsewhere.
        PowerLayer(name="sqrt", power=0.5, shift=-0.5, bottoms=["data"], tops=["s"]),
        *head,
    ]
    net = Net(f"nan-{loss}", CPUBackend(dtype=np.float64), layers)
    with pytest.raises(NumericalError) as caught:
        net.forward()
    message = str(caught.value)
    assert "loss layer 'loss' computed nan" in message
    assert "layer 'sqrt' (PowerLayer) is the first to output NaN" in message


def test_nan_origin_trace_changes_nothing():
    x = np.random.default_rng(0).normal(size=(8, 5))
    net = sqrt_net(1, x)
    with pytest.raises(NumericalError):
        net.forward()
    streams = {key: array.copy() for key, array in net.rng_states.items()}
    statistics = net.statistics()
    assert "sqrt" in net._non_finite_origin()
    for key, array in streams.items():
        np.testing.assert_array_equal(net.rng_states[key], array)
    assert net.statistics() == statistics


def test_finite_net_has_no_nan_origin():
    x = np.random.default_rng(0).normal(size=(8, 5))
    net = sqrt_net(1, x, shift=1.0)
    net.forward()
    assert net._non_finite_origin() == ""


@pytest.mark.parametrize("opt_level", [0, 1])
def test_nan_origin_after_earlier_loss(opt_level):
    """A loss on another branch comes first in forward order; the trace
    goes on past it to the layer that made the NaN."""
    x = np.random.default_rng(0).normal(size=(8, 5))
    y = np.zeros((8, 1))
    layers = [
        MemoryDataLayer(name="data", batch_size=4, data=[x, y]),
        InnerProductLayer(name="side", output_dim=2, bottoms=["data"], tops=["a"]),
        SoftmaxLossLayer(name="side-loss", bottoms=["a", "label"]),
        InnerProductLayer(
            name="ip1",
            output_dim=3,
            neuron=Neurons.ReLU(),
            bottoms=["data"],
            tops=["h"],
        ),
        PowerLayer(name="sqrt", power=0.5, shift=-1.0, bottoms=["h"], tops=["s"]),
        InnerProductLayer(name="ip2", output_dim=2, bottoms=["s"], tops=["out"]),
        SoftmaxLossLayer(name="loss", bottoms=["out", "label"]),
    ]
    net = Net("two-losses", CPUBackend(dtype=np.float64, seed=3), layers)
    with pytest.raises(NumericalError, match="layer 'sqrt' .* is the first"):
        net.forward()


def test_nan_origin_draws_same_noise():
    """Whether sqrt(noise) is NaN depends on the one noise value drawn, so
    the trace must draw the failed pass's value again."""
    y = np.zeros((1, 1))
    failures = 0
    for seed in range(16):
        layers = [
            MemoryDataLayer(name="data", tops=["data"], batch_size=1, data=[y]),
            RandomNormalLayer(
                name="noise",
                tops=["n"],
                output_dims=(1,),
                batch_sizes=(1,),
                eltype=np.float64,
            ),
            PowerLayer(name="sqrt", power=0.5, bottoms=["n"], tops=["s"]),
            SquareLossLayer(name="loss", bottoms=["s", "data"]),
        ]
        net = Net("noise", CPUBackend(dtype=np.float64, seed=seed), layers)
        try:
            net.forward()
        except NumericalError as error:
            failures += 1
            assert "layer 'sqrt' (PowerLayer) is the first" in str(error)
    # About half of the seeds draw a negative value.
    assert 3 <= failures <= 13


def test_keep_single_blob_name():
    """keep="ip" names one blob, as disable="plan_memory" names one pass."""
    net = Net("keep-one", CPUBackend(threads=1), classifier([0, 1]), keep="ip")
    assert net.keep >= {"ip"}
    net.forward()
    assert net.blobs["ip"].shape == (2, 3)


def test_keep_unknown_blob_not_found():
    with pytest.raises(NotFoundError) as caught:
        Net("keep-unknown", CPUBackend(threads=1), classifier([0, 1]), keep=["ipp"])
    message = str(caught.value)
    assert message.startswith("net 'keep-unknown': keep= names unknown blob(s) 'ipp'")
    assert "(close matches: 'ip')" in message
    assert "its blobs are: 'data', 'label', 'ip'" in message
    # Handlers of the ConfigError it raised before still catch it.
    assert isinstance(caught.value, ConfigError)


def test_layer_lookups_not_found():
    net = Net("lookups", CPUBackend(threads=1), classifier([0, 1]))
    for lookup in (net.get_layer, net.forward_layer, net.backward_layer):
        with pytest.raises(NotFoundError, match="no layer named 'IP'") as caught:
            lookup("IP")
        assert "its layers are: 'data', 'ip', 'loss'" in str(caught.value)
    with pytest.raises(NotFoundError, match=r"no entry 'ip1' \(close matches: 'ip'\)"):
        net.params["ip1"]
    with pytest.raises(NotFoundError, match="the blobs in net.blobs are: 'data'"):
        net.blobs["nothing"]


@pytest.mark.parametrize("keep", [5, ["ip", 5]])
def test_keep_rejects_non_names(keep):
    with pytest.raises(ConfigError, match="invalid keep="):
        Net("keep-bad", CPUBackend(threads=1), classifier([0, 1]), keep=keep)


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_force_backward_not_bool(value):
    with pytest.raises(ConfigError, match=r"net 'flag': invalid force_backward="):
        Net("flag", CPUBackend(), classifier([0, 1]), force_backward=value)


@pytest.mark.parametrize(
    ("loss", "hint"),
    [
        (BinaryCrossEntropyLossLayer, "a Sigmoid neuron on the layer that computes"),
        (MultinomialLogisticLossLayer, "give this layer a SoftmaxLayer's output"),
    ],
)
def test_computed_probability_out_of_range_hint(loss, hint):
    """Probabilities that a layer computed out of [0, 1] get advice on the
    layer to compute them with."""
    x = np.full((2, 3), 0.5)
    y = np.full((2, 3), 1.0) if loss is BinaryCrossEntropyLossLayer else np.ones((2, 1))
    layers = [
        MemoryDataLayer(name="data", batch_size=2, data=[x, y]),
        PowerLayer(name="triple", scale=3.0, bottoms=["data"], tops=["p"]),
        loss(name="loss", bottoms=["p", "label"]),
    ]
    net = Net(f"hint-{loss.__name__}", CPUBackend(dtype=np.float64), layers)
    with pytest.raises(DataError) as caught:
        net.forward()
    message = str(caught.value)
    assert "prediction blob 'p' contains 1.5 at sample 0 of the batch;" in message
    assert hint in message


def test_unnamed_data_layer_same_name_in_errors():
    """The label check and the data source's own check name an unnamed data
    layer by the name the net gives it, 'MemoryDataLayer-0'."""
    x = np.zeros((4, 3))
    y = np.array([[0.0], [7.0], [0.0], [1.0]])
    data = MemoryDataLayer(batch_size=2, data=[x, y])
    layers = [
        data,
        InnerProductLayer(name="ip", output_dim=3, bottoms=["data"], tops=["ip"]),
        SoftmaxLossLayer(name="loss", bottoms=["ip", "label"]),
    ]
    net = Net("unnamed-data", CPUBackend(dtype=np.float64), layers)
    with pytest.raises(DataError) as label_error:
        net.forward()
    x[2, 0] = np.nan
    with pytest.raises(DataError) as value_error:
        net.forward()

    label_message = str(label_error.value)
    value_message = str(value_error.value)
    assert "7.0" in label_message
    assert "data layer 'MemoryDataLayer-0'" in label_message
    assert "has NaN or infinite values" in value_message
    assert value_message.startswith("MemoryDataLayer 'MemoryDataLayer-0': ")


@pytest.mark.parametrize("layer_class", [HDF5DataLayer, AsyncHDF5DataLayer])
def test_unnamed_hdf5_layer_error_uses_net_name(tmp_path, layer_class):
    missing = tmp_path / "missing.txt"
    layers = [
        layer_class(source=str(missing), batch_size=2),
        InnerProductLayer(name="ip", output_dim=3, bottoms=["data"], tops=["ip"]),
        SoftmaxLossLayer(name="loss", bottoms=["ip", "label"]),
    ]
    with pytest.raises(DataError) as caught:
        Net("files", CPUBackend(dtype=np.float64), layers)
    expected = f"{layer_class.__name__} '{layer_class.__name__}-0': "
    assert str(caught.value).startswith(expected)


@pytest.mark.parametrize(
    "duplicate",
    [copy.copy, copy.deepcopy, pickle.dumps],
    ids=["copy", "deepcopy", "pickle"],
)
def test_net_copy_names_net_and_snapshot(duplicate):
    net = Net("copied", CPUBackend(seed=0), classifier([0, 1]))
    with pytest.raises(TypeError) as error:
        duplicate(net)
    message = str(error.value)
    assert "net 'copied' cannot be pickled or copied" in message
    assert "save_snapshot(path, net)" in message


def deploy_layers():
    x = np.arange(8, dtype=np.float64).reshape(4, 2)
    return [
        MemoryDataLayer(name="data", batch_size=2, tops=["data"], data=[x]),
        InnerProductLayer(name="ip1", output_dim=3, bottoms=["data"], tops=["ip1"]),
        InnerProductLayer(name="ip2", output_dim=2, bottoms=["ip1"], tops=["ip2"]),
    ]


@pytest.mark.parametrize("phase", ["test", "train"])
def test_diffs_of_net_without_loss(phase):
    net = Net("deploy", CPUBackend(), deploy_layers(), phase=phase)
    with pytest.raises(NotFoundError) as raised:
        net.diffs["ip2"]
    message = str(raised.value)
    assert message.startswith("net.diffs['ip2']: net 'deploy' has no loss layer")
    assert "so it runs no backward pass and has no diffs or gradients" in message
    assert "build the net with a loss layer" in message
    assert "force_backward=True" in message
    assert "are: none" not in message


def test_grads_of_net_without_loss():
    net = Net("deploy", CPUBackend(), deploy_layers())
    for layer in ("ip1", "data"):
        with pytest.raises(NotFoundError) as raised:
            net.grads[layer]
        message = str(raised.value)
        assert message.startswith(f"net.grads['{layer}']: net 'deploy' has no loss")
        assert "build the net with a loss layer" in message


def test_loss_reaching_no_parameters():
    x = np.zeros((4, 2))
    y = np.zeros((4, 1))
    layers = [
        MemoryDataLayer(name="data", batch_size=2, data=[x, y]),
        SoftmaxLossLayer(name="loss", bottoms=["data", "label"]),
    ]
    net = Net("no-backward", CPUBackend(), layers)
    with pytest.raises(NotFoundError) as raised:
        net.diffs["data"]
    message = str(raised.value)
    assert "net 'no-backward' runs no backward pass" in message
    assert "its loss layers send no gradient to a layer with parameters" in message


def test_untrained_layer_grads_advice():
    x = np.zeros((4, 2))
    y = np.zeros((4, 1))
    layers = [
        MemoryDataLayer(name="data", batch_size=2, data=[x, y]),
        InnerProductLayer(name="ip", output_dim=3, bottoms=["data"], tops=["ip"]),
        InnerProductLayer(name="side", output_dim=2, bottoms=["ip"], tops=["side"]),
        SoftmaxLossLayer(name="loss", bottoms=["ip", "label"]),
    ]
    net = Net("side-branch", CPUBackend(), layers)
    assert "ip" in net.grads
    with pytest.raises(NotFoundError) as raised:
        net.grads["side"]
    message = str(raised.value)
    assert "layer 'side' has no gradients: no loss layer reads its outputs" in message
    assert "connect its outputs to a loss layer through layers that" in message
