"""Layer fields: NumPy numbers, misspelled names and values that give NaN."""

import numpy as np
import pytest

import mochac
from mochac import (
    ChannelPoolingLayer,
    ConfigError,
    ConvolutionLayer,
    CPUBackend,
    InnerProductLayer,
    LRNLayer,
    MemoryDataLayer,
    Net,
    ReshapeLayer,
    SoftmaxLayer,
    SoftmaxLossLayer,
)
from mochac.ir.graph import build_ir


def data_layer(x, y=None, batch_size=2):
    arrays = [x] if y is None else [x, y]
    tops = ["data"] if y is None else ["data", "label"]
    return MemoryDataLayer(name="d", batch_size=batch_size, tops=tops, data=arrays)


# --- NumPy integers in layer fields -------------------------------------------


def test_layer_ints_accept_numpy_integers():
    ip = InnerProductLayer(
        name="ip", output_dim=np.int64(3), bottoms=["data"], tops=["ip"]
    )
    assert ip.output_dim == 3
    assert type(ip.output_dim) is int
    conv = ConvolutionLayer(
        name="conv",
        kernel=(np.int32(3), np.int64(2)),
        stride=np.int64(1),
        n_filter=np.uint8(4),
        bottoms=["data"],
        tops=["conv"],
    )
    assert conv.kernel_hw == (2, 3)
    assert type(conv.n_filter) is int
    reshape = ReshapeLayer(shape=(np.int64(4), np.int64(2)), bottoms=["a"], tops=["b"])
    assert reshape.shape == (4, 2)
    assert all(type(size) is int for size in reshape.shape)
    softmax = SoftmaxLayer(dim=np.int64(-2), bottoms=["a"], tops=["b"])
    assert type(softmax.dim) is int
    pooling = ChannelPoolingLayer(
        kernel=np.int64(3), pad=np.int64(1), bottoms=["a"], tops=["b"]
    )
    assert pooling.pad_pair == (1, 1)


def test_layer_number_accepts_numpy_float():
    lrn = LRNLayer(shift=np.float32(2.0), bottoms=["a"], tops=["b"])
    assert type(lrn.shift) is float
    assert lrn.shift == 2.0


def test_layer_int_rejects_bool_and_float():
    with pytest.raises(ConfigError, match="invalid output_dim=True"):
        InnerProductLayer(name="ip", output_dim=True, bottoms=["a"], tops=["b"])
    with pytest.raises(ConfigError, match=r"invalid output_dim=np.float64\(3.0\)"):
        InnerProductLayer(
            name="ip", output_dim=np.float64(3.0), bottoms=["a"], tops=["b"]
        )


def test_net_builds_from_numpy_integers():
    x = np.ones((4, 3), np.float32)
    net = Net(
        "numpy-ints",
        CPUBackend(threads=np.int64(1), seed=0),
        [
            data_layer(x, batch_size=np.int64(2)),
            InnerProductLayer(
                name="ip", output_dim=np.int64(2), bottoms=["data"], tops=["ip"]
            ),
        ],
    )
    net.forward()
    assert net.blobs["ip"].shape == (2, 2)


# --- misspelled fields --------------------------------------------------------


def test_misspelled_field_suggests_closest():
    with pytest.raises(ConfigError, match=r"ConvolutionLayer 'c'.*kernal=3.*kernel\?"):
        ConvolutionLayer(name="c", kernal=3, bottoms=["data"], tops=["c"])


def test_unknown_field_lists_fields():
    with pytest.raises(ConfigError, match=r"unknown field zzz=1; the fields are name"):
        InnerProductLayer(output_dim=3, zzz=1, bottoms=["data"], tops=["ip"])


def test_replace_with_misspelled_field():
    layer = InnerProductLayer(name="ip", output_dim=3, bottoms=["data"], tops=["ip"])
    assert layer.replace(output_dim=4).output_dim == 4
    with pytest.raises(ConfigError, match="did you mean output_dim"):
        layer.replace(outputdim=4)


# --- LRN parameters that give NaN ---------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"), [("shift", 0.0), ("shift", -5.0), ("scale", -1.0)]
)
def test_lrn_nan_parameters_rejected(field, value):
    with pytest.raises(ConfigError, match=rf"'lrn': invalid {field}={value}"):
        LRNLayer(name="lrn", bottoms=["data"], tops=["out"], **{field: value})


# --- loss class weights -------------------------------------------------------


def class_weight_layers(weights, normalize):
    x = np.ones((4, 5), np.float32)
    y = np.array([[0], [1], [2], [1]], np.float32)
    return [
        data_layer(x, y, batch_size=4),
        InnerProductLayer(name="ip", output_dim=3, bottoms=["data"], tops=["ip"]),
        SoftmaxLossLayer(
            name="loss",
            weights=weights,
            normalize=normalize,
            bottoms=["ip", "label"],
        ),
    ]


@pytest.mark.parametrize("normalize", ["local", "global"])
def test_class_weights_sum_overflow(normalize):
    layers = class_weight_layers([1e308] * 3, normalize)
    with pytest.raises(ConfigError, match=r"'loss': weights sum to more than"):
        build_ir("weights", layers, {0: [(4, 5), (4, 1)]})


@pytest.mark.parametrize("normalize", ["local", "global"])
def test_class_weights_rescale_overflow(normalize):
    layers = class_weight_layers([1e-320] * 3, normalize)
    with pytest.raises(ConfigError, match=r"'loss': weights rescaled .* not finite"):
        build_ir("weights", layers, {0: [(4, 5), (4, 1)]})


def test_class_weights_large_but_summable():
    layers = class_weight_layers([1e300] * 3, "local")
    ir = build_ir("weights", layers, {0: [(4, 5), (4, 1)]})
    assert ir.layer("loss").layer.weights == (1e300, 1e300, 1e300)


def test_numpy_numbers_in_helpers():
    # Regularizers, constraints, neurons and Adam's betas take NumPy scalars
    # as they take Python numbers, and store plain Python values.
    import mochac

    cons = mochac.L2Cons(np.float32(2.0), np.int64(3))
    assert cons.threshold == 2.0
    assert type(cons.every_n_iter) is int
    regu = mochac.L2Regu(np.float32(0.5))
    assert type(regu.coefficient) is float
    relu = mochac.Neurons.ReLU(np.float64(0.1))
    assert relu.epsilon == pytest.approx(0.1)
    params = mochac.make_solver_parameters(
        mochac.Adam(), max_iter=np.int64(3), beta1=np.float32(0.5)
    )
    assert params["beta1"] == 0.5
    with pytest.raises(mochac.ConfigError, match="beta1"):
        mochac.make_solver_parameters(mochac.Adam(), max_iter=1, beta1=np.bool_(True))


def test_numpy_bool_fields():
    import mochac

    layer = mochac.HDF5DataLayer(source="x.txt", batch_size=2, shuffle=np.bool_(True))
    assert layer.shuffle is True
    drop = mochac.DropoutLayer(bottoms=["a"], tops=["b"], auto_scale=np.bool_(False))
    assert drop.auto_scale is False
    with pytest.raises(mochac.ConfigError, match="shuffle=1; expected True or False"):
        mochac.HDF5DataLayer(source="x.txt", batch_size=2, shuffle=1)


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (
            lambda: mochac.InnerProductLayer(name="ip", bottoms=["x"], tops=["y"]),
            "output_dim",
        ),
        (
            lambda: mochac.MemoryDataLayer(name="d", data=[np.zeros((2, 1))] * 2),
            "batch_size",
        ),
        (
            lambda: mochac.Index2OnehotLayer(name="o", bottoms=["x"], tops=["y"]),
            "n_class",
        ),
    ],
)
def test_required_field_left_out(make, field):
    with pytest.raises(mochac.ConfigError, match=f"invalid {field}=0; .* is required"):
        make()


@pytest.mark.parametrize("field", ["bottoms", "tops"])
@pytest.mark.parametrize("value", [True, None, 3, object()])
def test_blob_names_not_a_list(field, value):
    with pytest.raises(ConfigError, match=rf"'ip': invalid {field}=.*blob names"):
        InnerProductLayer(name="ip", output_dim=2, **{field: value})


@pytest.mark.parametrize("name", [np.array(["a", "b"]), 3, None])
def test_layer_name_not_a_string(name):
    with pytest.raises(
        ConfigError, match=r"InnerProductLayer \(unnamed\): invalid name="
    ):
        InnerProductLayer(name=name, output_dim=2, bottoms=["x"], tops=["y"])


def test_loss_normalize_array_rejected():
    with pytest.raises(ConfigError, match=r"'loss': invalid normalize="):
        SoftmaxLossLayer(name="loss", bottoms=["p", "l"], normalize=np.array([1, 2]))
