"""ConvolutionLayer as generated direct code (templates/c/convolution_direct.c.j2).

Stride-1 convolutions with filters (and, when the bottom takes a diff,
channels) in multiples of 16 skip im2col and GEMM. These nets reach both
vector blockings (one and two vectors of filters) and blocks cut short at
the right and bottom edges. They also reach lanes with two images, a fused
neuron, two bottoms sharing the filters, and a bottom diff that two layers
add into.
"""

import numpy as np
import pytest
from gradcheck import build_net, check_gradients, check_net_gradients
from test_convolution import reference_convolution

from mochac import (
    ConvolutionLayer,
    CPUBackend,
    GaussianInitializer,
    MemoryDataLayer,
    Net,
    Neurons,
    SquareLossLayer,
)
from mochac.codegen import c_source, lowering

RNG = np.random.default_rng(21)
BATCH = 9
RANDOM_BIAS = GaussianInitializer(std=0.5)
INPUTS = {
    "x_pad": RNG.normal(size=(BATCH, 16, 5, 7)),
    "x_relu": RNG.normal(size=(BATCH, 32, 4, 3)),
    "x_first": RNG.normal(size=(BATCH, 16, 3, 3)),
    "x_second": RNG.normal(size=(BATCH, 16, 3, 3)),
    "x_round": RNG.normal(size=(BATCH, 24, 5, 4)),
    "x_image": RNG.normal(size=(BATCH, 3, 6, 6)),
}
# Geometry tuples are Mocha's (width, height).
LAYERS = [
    ConvolutionLayer(
        name="conv_pad",
        bottoms=["x_pad"],
        tops=["y_pad"],
        kernel=(5, 3),
        pad=(2, 1),
        n_filter=32,
        bias_init=RANDOM_BIAS,
    ),
    ConvolutionLayer(
        name="conv_relu",
        bottoms=["x_relu"],
        tops=["y_relu"],
        kernel=2,
        pad=1,
        n_filter=48,
        neuron=Neurons.ReLU(),
        bias_init=RANDOM_BIAS,
    ),
    ConvolutionLayer(
        name="conv_two",
        bottoms=["x_first", "x_second"],
        tops=["y_first", "y_second"],
        kernel=3,
        pad=1,
        n_filter=16,
        bias_init=RANDOM_BIAS,
    ),
    # 24 filters and channels: rounded up to 32, with zero filters and
    # channels in the last vector block.
    ConvolutionLayer(
        name="conv_round",
        bottoms=["x_round"],
        tops=["y_round"],
        kernel=3,
        pad=1,
        n_filter=24,
        neuron=Neurons.ReLU(),
        bias_init=RANDOM_BIAS,
    ),
]
NAMES = [layer.name for layer in LAYERS]


@pytest.fixture(scope="module", autouse=True)
def small_nets_run_direct():
    """These nets have far fewer output positions than direct code needs to
    pay for packing its filters; lower the bound so they run it anyway."""
    saved = lowering.DIRECT_MIN_POSITIONS
    lowering.DIRECT_MIN_POSITIONS = 0
    yield
    lowering.DIRECT_MIN_POSITIONS = saved


def image_layer(bottom="x_image", neuron=None, pad=1):
    """A first layer: three channels, but its bottom is data and takes no diff."""
    return ConvolutionLayer(
        name="conv_image",
        bottoms=[bottom],
        tops=["y_image"],
        kernel=3,
        pad=pad,
        n_filter=16,
        neuron=neuron or Neurons.Identity(),
        bias_init=RANDOM_BIAS,
    )


def data_net(name, dtype, threads, direct=True):
    """The three layers above, with force_backward so every bottom takes a diff."""
    saved = lowering.DIRECT_CONVOLUTION, c_source.PARALLEL_MIN_FLOPS
    lowering.DIRECT_CONVOLUTION = direct
    # These nets are far below the size at which the generated code starts
    # using threads; lower the threshold so the lanes run in parallel.
    c_source.PARALLEL_MIN_FLOPS = 0
    try:
        inputs = {key: value.astype(dtype) for key, value in INPUTS.items()}
        inputs.pop("x_image")
        return build_net(name, LAYERS, inputs, dtype=dtype, seed=3, threads=threads)
    finally:
        lowering.DIRECT_CONVOLUTION, c_source.PARALLEL_MIN_FLOPS = saved


@pytest.fixture(scope="module")
def nets():
    return {
        (dtype.__name__, threads): data_net(
            f"conv-direct-{dtype.__name__}-{threads}", dtype, threads
        )
        for dtype in (np.float64, np.float32)
        for threads in (1, 3)
    }


@pytest.fixture(scope="module")
def im2col_net():
    return data_net("conv-im2col", np.float64, 3, direct=False)


def kernel_of(net, name):
    return next(k for k in net.kernels if k.context["fn"] == name)


def test_layers_run_as_direct_code(nets, im2col_net):
    for net in nets.values():
        assert "mochac_parallel = 1;" in net.source
        for name in NAMES:
            assert kernel_of(net, name).template == "c/convolution_direct.c.j2"
    for name in NAMES:
        assert kernel_of(im2col_net, name).template == "c/convolution.c.j2"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", NAMES)
def test_forward_matches_reference(nets, dtype, name):
    net = nets[dtype, 3]
    net.forward_layer(name)
    layer = net.get_layer(name)
    params = net.params[name]
    for bottom, top in zip(layer.bottoms, layer.tops):
        expected = reference_convolution(
            net.blobs[bottom].astype(np.float64),
            params["filter"].astype(np.float64),
            params["bias"].astype(np.float64),
            layer,
        )
        if not layer.neuron.is_identity:
            expected = np.maximum(expected, 0.0)
        tolerance = 1e-12 if dtype == "float64" else 1e-5
        np.testing.assert_allclose(
            net.blobs[top], expected, rtol=tolerance, atol=tolerance
        )


@pytest.mark.parametrize("name", NAMES)
def test_gradients(nets, name):
    layer = nets["float64", 3].get_layer(name)
    checked = check_gradients(nets["float64", 3], name)
    assert checked == [*layer.bottoms, "filter", "bias"]


def run_layer(net, name, params, seed):
    """Forward and backward of one layer with the given parameters and a
    random top diff; return the tops, bottom diffs and gradients."""
    layer = net.get_layer(name)
    for param, values in params.items():
        net.params[name][param][...] = values
    net.forward_layer(name)
    rng = np.random.default_rng(seed)
    for top in layer.tops:
        net.diffs[top][...] = rng.normal(size=net.diffs[top].shape)
    net.backward_layer(name)
    return [
        *(net.blobs[top].copy() for top in layer.tops),
        *(net.diffs[bottom].copy() for bottom in layer.bottoms),
        *(grad.copy() for grad in net.grads[name].values()),
    ]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", NAMES)
def test_same_bits_for_any_thread_count(nets, dtype, name):
    params = nets[dtype, 1].params[name]
    single = run_layer(nets[dtype, 1], name, params, seed=2)
    three = run_layer(nets[dtype, 3], name, params, seed=2)
    for a, b in zip(single, three):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_same_results_as_im2col(nets, im2col_net, name):
    params = {
        key: value.copy() for key, value in nets["float64", 3].params[name].items()
    }
    direct = run_layer(nets["float64", 3], name, params, seed=4)
    im2col = run_layer(im2col_net, name, params, seed=4)
    for a, b in zip(direct, im2col):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_float32_backward_near_float64(nets, name):
    params = nets["float64", 3].params[name]
    wide = run_layer(nets["float64", 3], name, params, seed=6)
    narrow = run_layer(nets["float32", 3], name, params, seed=6)
    for a, b in zip(wide, narrow):
        scale = np.abs(a).max()
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * scale)


def shared_bottom_net(opt_level):
    """x feeds two direct convolutions; with the passes on, the split is
    gone and both add their bottom diffs into x's diff."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(5, 16, 4, 4))
    target = rng.normal(size=(5, 16, 4, 4))
    layers = [
        MemoryDataLayer(name="data", batch_size=5, data=[x, target], tops=["x", "t"]),
        ConvolutionLayer(
            name="conv_a",
            bottoms=["x"],
            tops=["a"],
            kernel=3,
            pad=1,
            n_filter=16,
            neuron=Neurons.ReLU(),
            bias_init=RANDOM_BIAS,
        ),
        ConvolutionLayer(
            name="conv_b",
            bottoms=["x"],
            tops=["b"],
            kernel=3,
            pad=1,
            n_filter=16,
            bias_init=RANDOM_BIAS,
        ),
        ConvolutionLayer(
            name="conv_c",
            bottoms=["a"],
            tops=["c"],
            kernel=1,
            n_filter=16,
            bias_init=RANDOM_BIAS,
        ),
        SquareLossLayer(name="loss_c", bottoms=["c", "t"]),
        SquareLossLayer(name="loss_b", bottoms=["b", "t"]),
    ]
    backend = CPUBackend(dtype=np.float64, seed=9, threads=2)
    net = Net(
        f"conv-direct-shared-{opt_level}",
        backend,
        layers,
        force_backward=True,
        opt_level=opt_level,
    )
    net.load_batch()
    return net


def test_optimized_net_matches_unoptimized():
    plain, optimized = shared_bottom_net(0), shared_bottom_net(1)
    assert any(
        pair["acc"]
        for kernel in optimized.kernels
        if kernel.template == "c/convolution_direct.c.j2"
        for pair in kernel.context["pairs"]
    ), "no direct convolution adds into a shared bottom diff"
    for name in plain.params:
        for key, values in plain.params[name].items():
            optimized.params[name][key][...] = values
    assert optimized.forward(load_data=False) == pytest.approx(
        plain.forward(load_data=False), rel=1e-12
    )
    plain.backward()
    optimized.backward()
    for name in plain.grads:
        for key, values in plain.grads[name].items():
            np.testing.assert_allclose(
                optimized.grads[name][key], values, rtol=1e-11, atol=1e-12
            )
    np.testing.assert_allclose(
        optimized.diffs["x"], plain.diffs["x"], rtol=1e-11, atol=1e-12
    )
    assert len(check_net_gradients(optimized)) == 6


def fits(layer, shape, force_backward=True):
    """Whether ``layer`` on a bottom of ``shape`` lowers to direct code."""
    net = Net(
        "conv-direct-fits",
        CPUBackend(dtype=np.float64, threads=1),
        [
            MemoryDataLayer(
                name="data", batch_size=shape[0], data=[np.zeros(shape)], tops=["x"]
            ),
            layer,
        ],
        force_backward=force_backward,
    )
    return kernel_of(net, layer.name).template == "c/convolution_direct.c.j2"


def conv(**options):
    values = {
        "name": "conv",
        "bottoms": ["x"],
        "tops": ["y"],
        "kernel": 3,
        "pad": 1,
        "n_filter": 16,
    }
    values.update(options)
    return ConvolutionLayer(**values)


def test_which_convolutions_run_direct():
    assert fits(conv(), (2, 16, 6, 6))
    assert fits(conv(pad=2), (2, 16, 6, 6))
    # The bottom is data: no bottom diff, so three channels are fine.
    assert fits(image_layer("x"), (2, 3, 6, 6), force_backward=False)
    assert not fits(conv(), (2, 3, 6, 6))
    assert not fits(conv(stride=2), (2, 16, 6, 6))
    # 24 of 32 filters are real: enough; 20 of 32 are not.
    assert fits(conv(n_filter=24), (2, 24, 6, 6))
    assert not fits(conv(n_filter=20), (2, 16, 6, 6))
    # A small valid convolution: its bottom diff would compute 144 positions
    # for 64 top positions.
    assert not fits(conv(kernel=5, pad=0), (2, 16, 12, 12))
    assert fits(conv(kernel=5, pad=0), (2, 16, 12, 12), force_backward=False)
    assert not fits(conv(n_filter=32, n_group=2), (2, 16, 6, 6))
    # The bottom diff would need a negative padding; without one, it runs.
    assert not fits(conv(pad=3), (2, 16, 6, 6))
    assert fits(conv(pad=3), (2, 16, 6, 6), force_backward=False)


# Pad 3 with a 3 x 3 kernel gives border positions that see only padding.
@pytest.mark.parametrize("pad", [1, 3])
@pytest.mark.parametrize("neuron", [Neurons.Identity(), Neurons.ReLU()])
def test_image_layer_forward_and_filter_gradient(neuron, pad):
    net = build_net(
        "conv-direct-image",
        [image_layer()],
        {"x_image": INPUTS["x_image"]},
        seed=4,
    )
    # force_backward gives x_image a diff, so this layer computes it through
    # im2col; the same layer without a bottom diff runs direct (above).
    assert kernel_of(net, "conv_image").template == "c/convolution.c.j2"
    side = 6 + 2 * pad - 2
    layers = [
        MemoryDataLayer(
            name="data",
            batch_size=BATCH,
            data=[INPUTS["x_image"], RNG.normal(size=(BATCH, 16, side, side))],
            tops=["x_image", "t"],
        ),
        image_layer(neuron=neuron, pad=pad),
        SquareLossLayer(name="loss", bottoms=["y_image", "t"]),
    ]
    direct = Net(
        f"conv-direct-image-loss-{type(neuron).__name__}-{pad}",
        CPUBackend(dtype=np.float64, seed=4, threads=2),
        layers,
        keep=["y_image"],
    )
    direct.load_batch()
    assert kernel_of(direct, "conv_image").template == "c/convolution_direct.c.j2"
    direct.forward(load_data=False)
    params = direct.params["conv_image"]
    expected = reference_convolution(
        direct.blobs["x_image"], params["filter"], params["bias"], image_layer(pad=pad)
    )
    if not neuron.is_identity:
        expected = np.maximum(expected, 0.0)
    np.testing.assert_allclose(
        direct.blobs["y_image"], expected, rtol=1e-12, atol=1e-12
    )
    assert check_net_gradients(direct) == ["conv_image.filter", "conv_image.bias"]


def has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return " avx512f" in cpuinfo.read()
    except OSError:
        return False


@pytest.mark.skipif(not has_avx512(), reason="this CPU already runs the 32-byte path")
def test_32_byte_vector_path(monkeypatch):
    """Without AVX-512 the kernels use 32-byte vectors and smaller blocks;
    building with -mno-avx512f reaches that path on an AVX-512 machine."""
    from mochac.codegen import build

    monkeypatch.setattr(build, "COMPILE_ARGS", [*build.COMPILE_ARGS, "-mno-avx512f"])
    net = data_net("conv-direct-avx2", np.float64, 2)
    for name in NAMES:
        assert kernel_of(net, name).template == "c/convolution_direct.c.j2"
        net.forward_layer(name)
        layer = net.get_layer(name)
        params = net.params[name]
        for bottom, top in zip(layer.bottoms, layer.tops):
            expected = reference_convolution(
                net.blobs[bottom], params["filter"], params["bias"], layer
            )
            if not layer.neuron.is_identity:
                expected = np.maximum(expected, 0.0)
            np.testing.assert_allclose(net.blobs[top], expected, rtol=1e-12, atol=1e-12)
        assert check_gradients(net, name) == [*layer.bottoms, "filter", "bias"]


def test_single_image_net_shares_rows():
    """A batch of one gives each direct convolution one lane, so its forward
    pass shares the image's row blocks between threads instead, and the
    CIFAR-10 net at batch 1 runs on threads."""
    from mochac.bench.nets import cifar10_full

    single = Net("cifar-batch-1", CPUBackend(threads=2), cifar10_full(1))
    assert "mochac_parallel = 1;" in single.source
    assert "(filter block, row block) pairs" in single.source


def one_image_net(x, dtype, threads) -> Net:
    """A direct convolution with a ReLU over one image of ``x``."""
    layers = [
        MemoryDataLayer(name="data", batch_size=1, data=[x], tops=["x"]),
        ConvolutionLayer(
            name="conv",
            bottoms=["x"],
            tops=["y"],
            kernel=3,
            pad=1,
            n_filter=48,
            neuron=Neurons.ReLU(),
            bias_init=RANDOM_BIAS,
        ),
    ]
    backend = CPUBackend(dtype=dtype, threads=threads, seed=3)
    return Net(f"one-image-{threads}", backend, layers)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_single_image_same_bits_for_any_thread_count(dtype, monkeypatch):
    """Rows shared between threads: every output is still computed whole by
    one thread, so 1 and 3 threads give the same bits."""
    # The net is far below the size that runs on threads by default.
    monkeypatch.setattr(c_source, "PARALLEL_MIN_FLOPS", 0)
    x = np.random.default_rng(5).normal(size=(1, 16, 13, 11))
    outputs = []
    for threads in (1, 3):
        net = one_image_net(x, dtype, threads)
        kernel = net.kernels_by_layer[1]
        assert kernel.template == "c/convolution_direct.c.j2"
        assert kernel.context["LANES"] == 1
        assert "mochac_parallel = 1;" in net.source
        net.forward()
        outputs.append(net.blobs["y"].copy())

    assert np.array_equal(outputs[0], outputs[1])

    conv = net.get_layer("conv")
    params = net.params["conv"]
    expected = reference_convolution(x, params["filter"], params["bias"], conv)
    tolerance = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(
        outputs[0], np.maximum(expected, 0), rtol=tolerance, atol=tolerance
    )


def test_pair_without_top_diff():
    """Two pairs share the filters: the one with a bottom diff has no top
    diff (its top reaches no loss), so backward only zeroes that diff."""
    rng = np.random.default_rng(1)
    x1, x2 = rng.normal(size=(2, 16, 5, 5)), rng.normal(size=(2, 16, 5, 5))
    t = rng.normal(size=(2, 16, 5, 5))

    def build(direct):
        saved = lowering.DIRECT_CONVOLUTION
        lowering.DIRECT_CONVOLUTION = direct
        try:
            layers = [
                MemoryDataLayer(
                    name="data", batch_size=2, data=[x1, x2, t], tops=["x1", "x2", "t"]
                ),
                conv(name="pre", bottoms=["x1"], tops=["h1"]),
                conv(name="shared", bottoms=["h1", "x2"], tops=["y1", "y2"]),
                SquareLossLayer(name="loss", bottoms=["y2", "t"]),
            ]
            net = Net(
                f"conv-direct-no-top-diff-{direct}",
                CPUBackend(dtype=np.float64, seed=2),
                layers,
                opt_level=0,
            )
        finally:
            lowering.DIRECT_CONVOLUTION = saved
        net.load_batch()
        return net

    direct, im2col = build(True), build(False)
    kernel = kernel_of(direct, "shared")
    assert kernel.template == "c/convolution_direct.c.j2"
    assert [(p["dx"] is None, p["dy"] is None) for p in kernel.context["pairs"]] == [
        (False, True),
        (True, False),
    ]
    assert not kernel.context["dx_needed"]
    assert "diff_tile" not in kernel.context
    for layer, params in direct.params.items():
        for key, value in params.items():
            im2col.params[layer][key][...] = value
    assert direct.forward(load_data=False) == pytest.approx(
        im2col.forward(load_data=False), rel=1e-12
    )
    direct.backward()
    im2col.backward()
    for layer in direct.grads:
        for key in direct.grads[layer]:
            np.testing.assert_allclose(
                direct.grads[layer][key],
                im2col.grads[layer][key],
                rtol=1e-11,
                atol=1e-12,
            )


def test_few_output_positions_stay_im2col(monkeypatch):
    """Every call packs the filters, so direct code needs enough positions."""
    monkeypatch.setattr(lowering, "DIRECT_MIN_POSITIONS", 256)
    # 4 x 4 positions per image: 2 images are too few, 16 are enough.
    assert not fits(conv(), (2, 16, 4, 4), force_backward=False)
    assert fits(conv(), (16, 16, 4, 4), force_backward=False)
