"""PoolingLayer's neuron: forward against NumPy, gradients, passes and CUDA.

Every check runs on both forms of the neuron: a kernel of its own (-O0, or
fuse_neurons disabled) and fused into the pooling kernels (-O1).
"""

import math
import os
import shutil
import subprocess

import numpy as np
import pytest
from cuda_emulator import HostRun, compile_for_host
from gradcheck import build_net, check_gradients, preserved
from numpy.lib.stride_tricks import sliding_window_view

from mochac import (
    SGD,
    ConfigError,
    ConstantInitializer,
    ConvolutionLayer,
    CPUBackend,
    InnerProductLayer,
    MemoryDataLayer,
    Net,
    Neurons,
    Pooling,
    PoolingLayer,
    PowerLayer,
    SoftmaxLossLayer,
)
from mochac.codegen.build import blas_location
from mochac.codegen.cuda import build_cuda_program
from mochac.passes.pipeline import PASS_NAMES

RNG = np.random.default_rng(23)
TOLERANCE = 1e-10
FORMS = ("separate", "fused")


def distinct_values(shape, negative_share):
    """Return values at least 0.06 apart and at least 0.01 away from 0, about
    ``negative_share`` of them negative.

    The gap keeps max pooling's choice fixed under the gradient check's
    perturbations, and the distance from 0 keeps inputs off ReLU's kink.
    """
    size = math.prod(shape)
    ranks = RNG.permutation(size).reshape(shape)
    grid = (ranks - round(negative_share * size)) * 0.1
    return grid + RNG.uniform(0.01, 0.04, size=shape)


# Every layer has two bottoms of different shapes. Geometry tuples are Mocha's
# (width, height). The maximum of a window is larger than most of its
# values, so max pooling's inputs are mostly negative to give ReLU outputs
# of both signs.
INPUTS = {
    "a_max_relu": distinct_values((2, 2, 6, 6), 0.8),
    "b_max_relu": distinct_values((1, 3, 5, 7), 0.8),
    "a_mean_relu": distinct_values((2, 2, 5, 6), 0.5),
    "b_mean_relu": distinct_values((1, 2, 4, 4), 0.5),
    "a_max_sigmoid": distinct_values((2, 2, 5, 5), 0.8),
    "b_max_sigmoid": distinct_values((1, 1, 6, 4), 0.8),
    "a_mean_sigmoid": distinct_values((2, 2, 6, 6), 0.5),
    "b_mean_sigmoid": distinct_values((1, 3, 5, 5), 0.5),
}


def two_bottom_layer(kind, neuron, **geometry):
    name = f"{kind}_{type(neuron).__name__.lower()}"
    return PoolingLayer(
        name=name,
        bottoms=[f"a_{name}", f"b_{name}"],
        tops=[f"y_a_{name}", f"y_b_{name}"],
        pooling=Pooling.Max() if kind == "max" else Pooling.Mean(),
        neuron=neuron,
        **geometry,
    )


LAYERS = [
    two_bottom_layer("max", Neurons.ReLU(), kernel=3, stride=2, pad=1),
    two_bottom_layer("mean", Neurons.ReLU(), kernel=(3, 2), stride=(2, 1), pad=(1, 1)),
    two_bottom_layer("max", Neurons.Sigmoid(), kernel=(2, 3), stride=2, pad=(1, 1)),
    two_bottom_layer("mean", Neurons.Sigmoid(), kernel=3, stride=(1, 2), pad=1),
]
LAYER_NAMES = [layer.name for layer in LAYERS]


def height_width(value):
    """Return a Mocha (width, height) value, or one int for both, as (height, width)."""
    if isinstance(value, int):
        return value, value
    width, height = value
    return height, width


def pooled_size(size, kernel, stride, pad):
    """Round up, then drop a last window that starts past the input and its pad."""
    out = math.ceil((size + 2 * pad - kernel) / stride) + 1
    if (out - 1) * stride >= size + pad:
        out -= 1
    return out


def reference_pooling(x, layer):
    """Pool (N, C, H, W) ``x`` with NumPy windows, before the neuron.

    Max pooling pads with -inf, so padding never wins. Mean pooling pads
    with zeros and divides by the window clipped to the padded input.
    """
    _, _, height, width = x.shape
    (kernel_h, kernel_w), (stride_h, stride_w), (pad_h, pad_w) = (
        height_width(layer.kernel),
        height_width(layer.stride),
        height_width(layer.pad),
    )
    out_h = pooled_size(height, kernel_h, stride_h, pad_h)
    out_w = pooled_size(width, kernel_w, stride_w, pad_w)
    # Rounding up may let the last window reach past the padded input.
    past_h = max(0, (out_h - 1) * stride_h + kernel_h - (height + 2 * pad_h))
    past_w = max(0, (out_w - 1) * stride_w + kernel_w - (width + 2 * pad_w))
    widths = ((0, 0), (0, 0), (pad_h, pad_h + past_h), (pad_w, pad_w + past_w))
    is_max = isinstance(layer.pooling, Pooling.Max)
    padded = np.pad(x, widths, constant_values=-np.inf if is_max else 0.0)
    windows = sliding_window_view(padded, (kernel_h, kernel_w), axis=(2, 3))
    windows = windows[:, :, ::stride_h, ::stride_w][:, :, :out_h, :out_w]
    if is_max:
        return windows.max(axis=(-2, -1))
    inside = np.pad(
        np.ones((height + 2 * pad_h, width + 2 * pad_w)), ((0, past_h), (0, past_w))
    )
    counts = sliding_window_view(inside, (kernel_h, kernel_w))
    counts = counts[::stride_h, ::stride_w][:out_h, :out_w].sum(axis=(-2, -1))
    return windows.sum(axis=(-2, -1)) / counts


def apply_neuron(neuron, v):
    if isinstance(neuron, Neurons.ReLU):
        return np.maximum(v, 0.0)
    assert isinstance(neuron, Neurons.Sigmoid)
    return 1.0 / (1.0 + np.exp(-v))


def build_fused_net(name, layers, inputs):
    """Compile like gradcheck.build_net, but at -O1 without plan_memory, so
    fuse_neurons runs and every blob stays readable."""
    feeds = [
        MemoryDataLayer(
            name=f"data-{blob}", batch_size=len(array), data=[array], tops=[blob]
        )
        for blob, array in inputs.items()
    ]
    net = Net(
        name,
        CPUBackend(dtype=np.float64, seed=0, threads=2),
        feeds + list(layers),
        force_backward=True,
        opt_level=1,
        disable=("plan_memory",),
    )
    net.load_batch()
    return net


@pytest.fixture(scope="module", params=FORMS)
def shared_net(request):
    if request.param == "fused":
        return build_fused_net("pooling-neuron-fused", LAYERS, INPUTS)
    return build_net("pooling-neuron", LAYERS, INPUTS)


@pytest.fixture
def net(shared_net):
    with preserved(shared_net):
        yield shared_net


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_pool_neuron_form(net, name):
    info = net.ir.layer(name)
    fused = net.ir.name.endswith("fused")
    assert info.fuse_neuron == fused
    assert (f"{info.name}_neuron_forward" in net.source) != fused


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_pool_neuron_forward(net, name):
    layer = net.get_layer(name)
    net.forward_layer(name)
    for bottom, top in zip(layer.bottoms, layer.tops):
        pooled = reference_pooling(net.blobs[bottom], layer)
        expected = apply_neuron(layer.neuron, pooled)
        assert net.blobs[top].shape == expected.shape
        np.testing.assert_allclose(net.blobs[top], expected, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("name", [n for n in LAYER_NAMES if "relu" in n])
def test_pool_relu_clips_some_outputs(net, name):
    """The ReLU layers' inputs give both signs, so the neuron is exercised."""
    layer = net.get_layer(name)
    for bottom in layer.bottoms:
        pooled = reference_pooling(net.blobs[bottom], layer)
        assert (pooled < 0).any()
        assert (pooled > 0).any()
        # The gradient check perturbs by 1e-6, so no output may sit at the kink.
        assert np.abs(pooled).min() > 1e-4


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_pool_neuron_gradients(net, name):
    layer = net.get_layer(name)
    assert check_gradients(net, name) == list(layer.bottoms)


def test_pool_neuron_default_identity():
    layer = PoolingLayer(name="pool", bottoms=["x"], tops=["y"], kernel=2)
    assert layer.neuron == Neurons.Identity()
    assert not layer.backward_reads_top_data()
    relu = PoolingLayer(
        name="pool", bottoms=["x"], tops=["y"], kernel=2, neuron=Neurons.ReLU()
    )
    assert relu.backward_reads_top_data()


@pytest.mark.parametrize("value", ["relu", Neurons.ReLU, None])
def test_pool_invalid_neuron(value):
    with pytest.raises(ConfigError, match=r"'pool1'.*invalid neuron=.*Neurons\.ReLU"):
        PoolingLayer(name="pool1", bottoms=["x"], tops=["y"], neuron=value)


# --- whole nets: passes, counts and the example's ReLU placement --------------


def training_layers(pool_neuron=None, batch=4):
    """Return a two-branch net whose pooling layers have two bottoms each.

    ``pool_neuron`` is the neuron of the max pooling layer, default ReLU.
    pool's top p1 feeds a PowerLayer that fuse_inplace could write over p1
    when nothing reads p1 in backward, but pool's neuron reads it.
    """
    if pool_neuron is None:
        pool_neuron = Neurons.ReLU()
    rng = np.random.default_rng(7)
    x1 = rng.normal(size=(batch, 3, 7, 7))
    x2 = rng.normal(size=(batch, 2, 6, 5))
    label = rng.integers(0, 3, size=(batch, 1)).astype(np.float64)
    return [
        MemoryDataLayer(
            name="data",
            batch_size=batch,
            tops=["x1", "x2", "label"],
            data=[x1, x2, label],
        ),
        # The negative bias leaves about half of pool's windows without a
        # positive value, so its ReLU outputs 0 there and has derivative 0.
        ConvolutionLayer(
            name="conv",
            n_filter=3,
            kernel=(3, 3),
            pad=(1, 1),
            bias_init=ConstantInitializer(-1.5),
            bottoms=["x1"],
            tops=["c"],
        ),
        PoolingLayer(
            name="pool",
            kernel=(3, 3),
            stride=(2, 2),
            pad=(1, 1),
            neuron=pool_neuron,
            bottoms=["c", "x2"],
            tops=["p1", "p2"],
        ),
        PowerLayer(name="scale", scale=2.0, shift=0.5, bottoms=["p1"], tops=["q1"]),
        PoolingLayer(
            name="pool_mean",
            kernel=(3, 2),
            stride=(2, 1),
            pad=(1, 1),
            pooling=Pooling.Mean(),
            neuron=Neurons.Sigmoid(),
            bottoms=["q1", "p2"],
            tops=["m1", "m2"],
        ),
        InnerProductLayer(name="ip_a", output_dim=3, bottoms=["m1"], tops=["out_a"]),
        InnerProductLayer(name="ip_b", output_dim=3, bottoms=["m2"], tops=["out_b"]),
        SoftmaxLossLayer(name="loss_a", bottoms=["out_a", "label"]),
        SoftmaxLossLayer(name="loss_b", bottoms=["out_b", "label"]),
    ]


def run_steps(layers, opt_level, disable=(), steps=3):
    """Return the net, its objectives, first gradients and parameters after SGD."""
    net = Net(
        "pool-neuron-train",
        CPUBackend(dtype=np.float64, seed=11),
        layers,
        opt_level=opt_level,
        disable=disable,
    )
    objectives = [net.forward()]
    net.backward()
    grads = {(l, n): g.copy() for l, gs in net.grads.items() for n, g in gs.items()}
    for _ in range(steps):
        SGD().update(net, 0.05, 0.9, 0.001)
        objectives.append(net.forward())
        net.backward()
    params = {(l, n): p.copy() for l, ps in net.params.items() for n, p in ps.items()}
    return net, objectives, grads, params


def assert_same_run(reference, other):
    _, ref_objectives, ref_grads, ref_params = reference
    _, objectives, grads, params = other
    np.testing.assert_allclose(
        objectives, ref_objectives, rtol=TOLERANCE, atol=TOLERANCE
    )
    assert grads.keys() == ref_grads.keys()
    for key in ref_grads:
        np.testing.assert_allclose(
            grads[key], ref_grads[key], rtol=0, atol=TOLERANCE, err_msg=str(key)
        )
    for key in ref_params:
        np.testing.assert_allclose(
            params[key], ref_params[key], rtol=0, atol=TOLERANCE, err_msg=str(key)
        )


# -O1, -O1 with neurons in kernels of their own, and each pass alone.
PASS_VARIANTS = [("O1", ()), ("no_fuse_neurons", ("fuse_neurons",))] + [
    (name, tuple(other for other in PASS_NAMES if other != name)) for name in PASS_NAMES
]


@pytest.fixture(scope="module")
def unoptimized_run():
    return run_steps(training_layers(), 0)


@pytest.mark.parametrize(
    "disable", [d for _, d in PASS_VARIANTS], ids=[n for n, _ in PASS_VARIANTS]
)
def test_pool_neuron_passes_keep_results(unoptimized_run, disable):
    assert_same_run(unoptimized_run, run_steps(training_layers(), 1, disable))


def test_pool_neuron_blocks_inplace():
    """pool's neuron reads p1 in backward, so the PowerLayer gets its own top."""
    with_neuron = Net("with", CPUBackend(dtype=np.float64), training_layers())
    assert with_neuron.ir.data_root("q1") == "q1"
    without = Net(
        "without",
        CPUBackend(dtype=np.float64),
        training_layers(pool_neuron=Neurons.Identity()),
    )
    assert without.ir.data_root("q1") == "p1"


def test_pool_neuron_kernel_counts():
    unfused = Net("o0", CPUBackend(dtype=np.float64), training_layers(), opt_level=0)
    fused = Net("o1", CPUBackend(dtype=np.float64), training_layers())
    report = {r.name: r for r in fused.pass_reports}["fuse_neurons"]
    assert len(report.changes) == 2
    # Both pooling layers lose a forward and a backward neuron kernel.
    assert report.before["kernels"] - report.after["kernels"] == 4
    for name in ("pool", "pool_mean"):
        assert f"{name}_neuron_forward" in unfused.source
        assert f"{name}_neuron_backward" in unfused.source
        assert f"{name}_neuron_forward" not in fused.source


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
@pytest.mark.parametrize("opt_level", [0, 1])
def test_pool_neuron_c_has_no_warnings(opt_level, tmp_path):
    net = Net(
        "pool-neuron",
        CPUBackend(dtype=np.float64),
        training_layers(),
        opt_level=opt_level,
    )
    path = tmp_path / "pool_neuron.c"
    path.write_text(net.source)
    command = ["gcc", "-fsyntax-only", "-std=c99", "-fopenmp", "-Wall", "-Wextra"]
    command += ["-Wno-unused-function", "-I", blas_location()[0], str(path)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr, result.stderr


def relu_placement_layers(relu_on_pool):
    """conv -> max pool, with the ReLU on the convolution or on the pooling."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4, 2, 8, 8))
    label = rng.integers(0, 3, size=(4, 1)).astype(np.float64)
    relu, identity = Neurons.ReLU(), Neurons.Identity()
    return [
        MemoryDataLayer(name="data", batch_size=4, data=[x, label]),
        ConvolutionLayer(
            name="conv",
            n_filter=4,
            kernel=(3, 3),
            pad=(1, 1),
            neuron=identity if relu_on_pool else relu,
            bottoms=["data"],
            tops=["conv"],
        ),
        PoolingLayer(
            name="pool",
            kernel=(3, 3),
            stride=(2, 2),
            neuron=relu if relu_on_pool else identity,
            bottoms=["conv"],
            tops=["pool"],
        ),
        InnerProductLayer(name="ip", output_dim=3, bottoms=["pool"], tops=["out"]),
        SoftmaxLossLayer(name="loss", bottoms=["out", "label"]),
    ]


@pytest.mark.parametrize("opt_level", [0, 1])
def test_relu_moves_past_max_pool(opt_level):
    """ReLU is monotonic, so max pooling then ReLU trains as ReLU then max
    pooling; examples/cifar10/full_net.py relies on this for pool1."""
    before = run_steps(relu_placement_layers(False), opt_level, steps=5)
    after = run_steps(relu_placement_layers(True), opt_level, steps=5)
    assert_same_run(before, after)


# --- CUDA program, run on the host -------------------------------------------


@pytest.mark.parametrize("opt_level", [0, 1])
def test_pool_neuron_cuda_steps(opt_level):
    _, program = build_cuda_program(
        "pool-neuron", training_layers(), dtype=np.float64, opt_level=opt_level
    )
    assert program.problems() == []
    names = set(program.kernel_names())
    for name in ("pool", "pool_mean"):
        for top in (0, 1):
            separate = {
                f"{name}_neuron_forward_{top}",
                f"{name}_neuron_backward_{top}",
            }
            if opt_level == 0:
                assert separate <= names
            else:
                assert not separate & names


NVCC = shutil.which("nvcc") or (
    "/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None
)


@pytest.mark.skipif(
    NVCC is None,
    reason="nvcc is neither on PATH nor in /usr/local/cuda/bin; install the CUDA "
    "toolkit to compile the generated kernels",
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("opt_level", [0, 1])
def test_pool_neuron_nvcc_compiles(opt_level, dtype, tmp_path):
    """tests/cuda_nets.py's vision net compiles the separate form; this
    compiles the fused one too."""
    _, program = build_cuda_program(
        "pool-neuron", training_layers(), dtype=dtype, opt_level=opt_level
    )
    source = tmp_path / "pool_neuron.cu"
    source.write_text(program.source)
    result = subprocess.run(
        [NVCC, "-ptx", "-arch=sm_90", str(source), "-o", str(tmp_path / "out.ptx")],
        capture_output=True,
        text=True,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "warning" not in output, output


@pytest.mark.skipif(
    shutil.which("g++") is None, reason="g++ is needed to compile kernels for the host"
)
@pytest.mark.parametrize("opt_level", [0, 1])
def test_pool_neuron_cuda_host_run(opt_level, tmp_path):
    """The CUDA kernels, emulated on the host, match the CPU net blob by blob."""
    batch = 4
    options = {
        "opt_level": opt_level,
        "disable": ("plan_memory",),
        "force_backward": True,
    }
    cpu = Net(
        "pool-neuron",
        CPUBackend(dtype=np.float64, seed=5, threads=1),
        training_layers(batch=batch),
        **options,
    )
    _, program = build_cuda_program(
        "pool-neuron", training_layers(batch=batch), dtype=np.float64, **options
    )
    library = compile_for_host(program, tmp_path, "pool_neuron", races=True)
    run = HostRun(program, library)
    for slot in program.slots.slots:
        if slot.kind == "param":
            run.arrays[slot.index][...] = cpu.backend.registry[slot.owner][slot.name]
    for order in ("forward", "reverse", "shuffle"):
        run.order = order
        cpu.forward()
        for source in cpu.sources.values():
            for top in source.layer.tops:
                run.array("data", top)[...] = cpu.blobs[top]
        assert run.run(program.forward, batch).code == 0
        cpu.backward()
        run.run(program.backward, batch)
        for kind, views in (("data", cpu.blobs), ("diff", cpu.diffs)):
            for blob, expected in views.items():
                np.testing.assert_allclose(
                    run.array(kind, blob).reshape(expected.shape),
                    expected,
                    rtol=1e-10,
                    atol=1e-12,
                    err_msg=f"{order}: {kind} of {blob}",
                )
        for layer, grads in cpu.grads.items():
            for name, expected in grads.items():
                np.testing.assert_allclose(
                    run.array("grad", layer, name),
                    expected,
                    rtol=1e-10,
                    atol=1e-12,
                    err_msg=f"{order}: gradient {layer}.{name}",
                )
