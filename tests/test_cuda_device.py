"""The CUDA backend against the CPU backend on a CUDA device: in float64 to
tight tolerances, and in float32, the dtype of the benchmark, to float32
rounding.

Every test skips without CuPy or a visible device. The nets of cuda_nets.py
use every layer family; comparing every blob, diff and gradient of them
checks each layer's forward and backward.
"""

import numpy as np
import pytest
from cuda_nets import NETS

from mochac import neurons as Neurons
from mochac.bench.nets import lenet
from mochac.errors import DataError, DeviceError, NumericalError
from mochac.layers import (
    AccuracyLayer,
    DropoutLayer,
    HDF5DataLayer,
    InnerProductLayer,
    MemoryDataLayer,
    MemoryOutputLayer,
    MultinomialLogisticLossLayer,
    PowerLayer,
    SoftmaxLayer,
    SoftmaxLossLayer,
    SquareLossLayer,
    TiedInnerProductLayer,
)
from mochac.mocha_api import get_layer
from mochac.runtime import gpu_update
from mochac.runtime.backend import CPUBackend
from mochac.runtime.freeze import freeze
from mochac.runtime.gpu_backend import GPUBackend
from mochac.runtime.gpu_net import GPUNet
from mochac.runtime.lr_policy import LRPolicy
from mochac.runtime.mom_policy import MomPolicy
from mochac.runtime.net import Net
from mochac.runtime.solver import (
    SGD,
    Adam,
    Nesterov,
    Solver,
    make_solver_parameters,
)

RTOL, ATOL = 1e-10, 1e-12


@pytest.fixture(scope="module")
def cupy():
    try:
        backend = GPUBackend(dtype=np.float64, seed=0)
    except DeviceError:
        pytest.skip("no CUDA device")
    return backend.cupy


def twin_nets(layers_factory, dtype=np.float64, **options):
    """Return a CPU net and a GPU net with the same layers and parameters."""
    cpu = Net(
        "cpu", CPUBackend(dtype=dtype, seed=5, threads=1), layers_factory(), **options
    )
    gpu = GPUNet("gpu", GPUBackend(dtype=dtype, seed=5), layers_factory(), **options)
    for layer, params in cpu.params.items():
        for name, array in params.items():
            gpu.params[layer][name][...] = gpu.cupy.asarray(array)
    for key, state in cpu.rng_states.items():
        gpu.rng_states[key][...] = gpu.cupy.asarray(state)
    return cpu, gpu


def assert_same_views(cpu_views, gpu_views, what, rtol=RTOL, atol=ATOL):
    assert set(cpu_views) == set(gpu_views)
    for name, array in cpu_views.items():
        np.testing.assert_allclose(
            gpu_views[name].get(), array, rtol=rtol, atol=atol, err_msg=f"{what} {name}"
        )


def assert_same_grads(cpu, gpu, rtol=RTOL, atol=ATOL):
    for layer, grads in cpu.grads.items():
        for name, array in grads.items():
            np.testing.assert_allclose(
                gpu.grads[layer][name].get(),
                array,
                rtol=rtol,
                atol=atol,
                err_msg=f"gradient {layer}.{name}",
            )


@pytest.mark.parametrize("name", sorted(NETS))
def test_every_layer_matches_cpu(cupy, name):
    factory, opt_level = NETS[name]
    cpu, gpu = twin_nets(
        lambda: factory(np.float64),
        opt_level=opt_level,
        disable=("plan_memory",),
        force_backward=True,
    )
    for _ in range(2):
        assert gpu.forward() == pytest.approx(cpu.forward(), rel=RTOL)
        cpu.backward()
        gpu.backward()
        assert_same_views(cpu.blobs, gpu.blobs, "blob")
        assert_same_views(cpu.diffs, gpu.diffs, "diff")
        assert_same_grads(cpu, gpu)
        assert gpu.statistics() == pytest.approx(cpu.statistics(), rel=RTOL)


# Float32 nets against float32 CPU nets. Both round every layer's output to
# float32 (unit roundoff 2**-24, about 6e-8), and their sums run in other
# orders: a dot product of k terms may differ by about sqrt(k) roundings, and
# by up to k in the worst case. cuBLAS sums in float32 in its own blocking,
# and the CPU's BLAS in another. LeNet's longest sums have 800 terms and the
# errors pass through several layers, so differences of about 1e-6 of an
# array's largest value are expected (an estimate). F32_RTOL leaves a margin
# of ten above that. It scales the absolute tolerance too: an element near
# zero that is the difference of larger terms keeps only their error.
# NOTE: tests/fake_cublas.c sums float32 GEMMs in double, so runs on the host
# see less of cuBLAS's rounding than runs on a device: LeNet's steps differ
# there by up to 6e-7 of the largest value.
F32_RTOL = 1e-5


def assert_close_float32(expected, got, name):
    """Assert that float32 array ``got`` is within F32_RTOL of ``expected``,
    element by element and relative to the largest magnitude in it.
    ``name`` names the array in the failure message."""
    scale = float(np.abs(expected).max(initial=0.0))
    np.testing.assert_allclose(
        got, expected, rtol=F32_RTOL, atol=F32_RTOL * scale, err_msg=name
    )


def assert_same_draws(cpu_views, gpu_views, source, masked):
    """Assert that a dropout or random mask layer zeroed the same elements on
    both nets: ``masked`` is zero exactly where the mask dropped ``source``.
    Only elements of ``source`` that are nonzero on both nets count, so a
    value that rounds to zero on one of them cannot fail the check."""
    cpu_in, gpu_in = cpu_views[source], gpu_views[source].get()
    cpu_out, gpu_out = cpu_views[masked], gpu_views[masked].get()
    nonzero = (cpu_in != 0) & (gpu_in != 0)
    assert nonzero.any(), masked
    np.testing.assert_array_equal(
        gpu_out[nonzero] == 0, cpu_out[nonzero] == 0, err_msg=masked
    )


# The mask layers of the nets of cuda_nets.py as (views, source, masked) for
# assert_same_draws. In "vectors", -O1 runs the mask in place, so its blobs
# are gone and its diff shares a buffer with "root": the diff of "scores"
# reaches that buffer through the mask, scaled by sigma and 1 / sigma.
FLOAT32_MASKS = {
    "vision": [("blobs", "joined", "dropped")],
    "vectors": [("diffs", "scores", "root")],
}
# The tops of the nets' random normal layers.
FLOAT32_NORMALS = {"vision": [], "vectors": ["noise"]}


@pytest.mark.parametrize("name", sorted(NETS))
def test_every_layer_float32_close_to_cpu(cupy, name):
    """Every blob, diff and gradient of a float32 net within float32
    rounding of the CPU's, and the random layers draw the same numbers."""
    factory, opt_level = NETS[name]
    cpu, gpu = twin_nets(
        lambda: factory(np.float32),
        dtype=np.float32,
        opt_level=opt_level,
        disable=("plan_memory",),
        force_backward=True,
    )
    for _ in range(2):
        assert gpu.forward() == pytest.approx(cpu.forward(), rel=F32_RTOL)
        cpu.backward()
        gpu.backward()
        for blob, array in cpu.blobs.items():
            assert gpu.blobs[blob].dtype == np.float32, blob
            assert_close_float32(array, gpu.blobs[blob].get(), f"blob {blob}")
        for blob, array in cpu.diffs.items():
            assert_close_float32(array, gpu.diffs[blob].get(), f"diff {blob}")
        for layer, grads in cpu.grads.items():
            for param, array in grads.items():
                got = gpu.grads[layer][param].get()
                assert_close_float32(array, got, f"gradient {layer}.{param}")
        assert gpu.statistics() == pytest.approx(cpu.statistics(), rel=F32_RTOL)
        for views, source, masked in FLOAT32_MASKS[name]:
            assert_same_draws(getattr(cpu, views), getattr(gpu, views), source, masked)
        for top in FLOAT32_NORMALS[name]:
            # Both nets compute each sample in double from the same uniform
            # numbers and round it to float32. CUDA's log and cos may differ
            # from the C library's in the last bits of the double, which can
            # move the float32 result by at most one unit in the last place.
            np.testing.assert_array_max_ulp(
                gpu.blobs[top].get(), cpu.blobs[top], maxulp=1
            )


def test_lenet_iterations_match_cpu(cupy):
    cpu, gpu = twin_nets(lambda: lenet(8))
    cpu_method, gpu_method = SGD(), SGD()
    for _ in range(3):
        assert gpu.forward() == pytest.approx(cpu.forward(), rel=RTOL)
        cpu.backward()
        gpu.backward()
        assert_same_grads(cpu, gpu)
        cpu_method.update(cpu, 0.01, 0.9, 0.0005)
        # The compiled update is the CPU module's; a GPU net updates with
        # the NumPy reference, which CuPy arrays run on the device.
        gpu_method.numpy_update(gpu, 0.01, 0.9, 0.0005)
        for layer, params in cpu.params.items():
            for name, array in params.items():
                np.testing.assert_allclose(
                    gpu.params[layer][name].get(), array, rtol=RTOL, atol=ATOL
                )


def test_lenet_float32_iterations_close_to_cpu(cupy):
    """SGD steps of a float32 LeNet, with the device's update kernels, stay
    within float32 rounding of the CPU's steps with its compiled update."""
    cpu, gpu = twin_nets(lambda: lenet(8), dtype=np.float32)
    cpu_method, gpu_method = SGD(), SGD()
    for iteration in range(4):
        expected = cpu.train_step(cpu_method, 0.01, 0.9, 0.0005, iteration)
        got = gpu.train_step(gpu_method, 0.01, 0.9, 0.0005, iteration)
        assert got == pytest.approx(expected, rel=F32_RTOL)
        for layer, grads in cpu.grads.items():
            for name, array in grads.items():
                got_grad = gpu.grads[layer][name].get()
                assert_close_float32(array, got_grad, f"gradient {layer}.{name}")
        for layer, params in cpu.params.items():
            for name, array in params.items():
                got_param = gpu.params[layer][name].get()
                assert got_param.dtype == np.float32, f"{layer}.{name}"
                assert_close_float32(array, got_param, f"{layer}.{name}")
    assert gpu_update.tables_for(gpu, gpu_method, 0.0005) is not None


@pytest.mark.parametrize("kind", ["sgd", "nesterov", "adam"])
def test_float32_update_equals_cpu_bits(cupy, kind):
    """Fed the CPU's gradients, the device's float32 update gives the CPU's
    parameters bit for bit, with L1 and L2 terms, local learning rates and a
    shared array. Both run each element through the same float32
    operations in the same order. The device's products and sums are
    __fmul_rn and __fadd_rn, which the compiler never fuses into an FMA, and
    NVRTC divides and takes square roots correctly rounded by default. The
    CPU's C is compiled with -std=c99, where GCC fuses nothing either."""
    from test_native_update import layers, make_method

    cpu, gpu = twin_nets(layers, dtype=np.float32)
    cpu_method, gpu_method = make_method(kind), make_method(kind)
    for iteration in range(4):
        lr = 0.05 / (1 + iteration)
        for net in (cpu, gpu):
            net.forward()
            net.backward()
        for layer, grads in cpu.grads.items():
            for name, array in grads.items():
                gpu.grads[layer][name][...] = gpu.cupy.asarray(array)
        cpu.apply_update(cpu_method, lr, 0.9, 0.01, iteration)
        gpu.apply_update(gpu_method, lr, 0.9, 0.01, iteration)
        for layer, params in cpu.params.items():
            for name, array in params.items():
                np.testing.assert_array_equal(
                    gpu.params[layer][name].get(),
                    array,
                    err_msg=f"{layer}.{name} after update {iteration}",
                )
    assert gpu_update.tables_for(gpu, gpu_method, 0.01) is not None


@pytest.mark.parametrize("method", [SGD, Nesterov, Adam])
def test_solver_trains_like_cpu(cupy, method):
    cpu, gpu = twin_nets(lambda: lenet(8))
    for net in (cpu, gpu):
        params = make_solver_parameters(
            method(), max_iter=3, regu_coef=0.0005, lr_policy=LRPolicy.Fixed(0.01)
        )
        Solver(method(), params, progress=False).solve(net)
    for layer, params in cpu.params.items():
        for name, array in params.items():
            np.testing.assert_allclose(
                gpu.params[layer][name].get(), array, rtol=1e-9, atol=1e-12
            )


def test_bad_label_raises_data_error(cupy):
    """Labels above the range, negative, fractional or NaN raise the CPU
    backend's DataError, word for word."""
    x = np.zeros((4, 3))
    for bad in (7.0, -1.0, 1.5, float("nan")):
        y = np.array([[0.0], [1.0], [bad], [2.0]])

        def layers(y=y):
            return [
                MemoryDataLayer(name="data", batch_size=4, data=[x, y]),
                InnerProductLayer(
                    name="ip", output_dim=3, bottoms=["data"], tops=["out"]
                ),
                SoftmaxLossLayer(name="loss", bottoms=["out", "label"]),
            ]

        cpu, gpu = twin_nets(layers)
        with pytest.raises(DataError) as cpu_error:
            cpu.forward()
        with pytest.raises(DataError) as gpu_error:
            gpu.forward()
        message = str(gpu_error.value)
        assert message == str(cpu_error.value)
        assert "'label'" in message
        if np.isnan(bad):
            # The data layer rejects a NaN before the loss reads it.
            assert "data row 2" in message
        else:
            assert "'loss'" in message
            assert "at sample 2" in message
            assert "0..2" in message


def test_bad_label_in_train_step_leaves_parameters(cupy):
    """A label above the range in a training step, whose backward and update
    are enqueued behind the label check, raises DataError and leaves every
    parameter as it was. The loss's backward must not write at the label: at
    label 1e9 that address lies gigabytes past its diff, where the write
    faults on a device and on the host stand-in."""
    x = np.ones((4, 3))
    y = np.array([[0.0], [1.0], [2.0], [1e9]])

    def layers():
        return [
            MemoryDataLayer(name="data", batch_size=4, data=[x, y]),
            InnerProductLayer(name="ip", output_dim=3, bottoms=["data"], tops=["out"]),
            SoftmaxLayer(name="softmax", bottoms=["out"], tops=["prob"]),
            MultinomialLogisticLossLayer(name="loss", bottoms=["prob", "label"]),
        ]

    _, gpu = twin_nets(layers)
    before = {name: array.get() for name, array in gpu.params["ip"].items()}
    for _ in range(2):
        with pytest.raises(DataError, match="'loss'"):
            gpu.train_step(SGD(), 0.1, 0.9, 0.0, 0)
    for name, array in gpu.params["ip"].items():
        np.testing.assert_array_equal(array.get(), before[name], err_msg=name)


@pytest.mark.parametrize("frozen", [(), ("conv",)])
@pytest.mark.parametrize("kind", ["sgd", "nesterov", "adam"])
def test_device_update_matches_cpu(cupy, kind, frozen):
    """The device's update against the CPU backend's compiled one, with L1
    and L2 terms, local learning rates, a shared array and a frozen layer."""
    from test_native_update import layers, make_method

    cpu, gpu = twin_nets(layers)
    cpu_method, gpu_method = make_method(kind), make_method(kind)
    for net in (cpu, gpu):
        if frozen:
            freeze(net, *frozen)
            # The frozen conv has nothing trainable below it: training steps
            # skip its backward pass, so its gradients stay NaN.
            for array in net.grads["conv"].values():
                array[...] = np.nan
    start = {name: array.copy() for name, array in cpu.params["conv"].items()}
    for iteration in range(4):
        lr = 0.05 / (1 + iteration)
        expected = cpu.train_step(cpu_method, lr, 0.9, 0.01, iteration)
        got = gpu.train_step(gpu_method, lr, 0.9, 0.01, iteration)
        assert got == pytest.approx(expected, rel=RTOL)
    assert gpu_update.tables_for(gpu, gpu_method, 0.01) is not None
    for layer, params in cpu.params.items():
        for name, array in params.items():
            np.testing.assert_allclose(
                gpu.params[layer][name].get(),
                array,
                rtol=1e-9,
                atol=1e-12,
                err_msg=f"{layer}.{name}",
            )
    for name, array in start.items():
        moved = not np.array_equal(gpu.params["conv"][name].get(), array)
        assert moved != bool(frozen), f"conv.{name}"
        skipped = np.isnan(gpu.grads["conv"][name].get()).all()
        assert skipped == bool(frozen), f"conv.{name} gradient"
        assert np.isnan(cpu.grads["conv"][name]).all() == bool(frozen)


def tied_autoencoder_layers(learn_weights):
    """Return x (6 features) -> encoder (3) -> tied decoder -> loss against x."""
    x = np.random.default_rng(6).standard_normal((8, 6))
    return [
        MemoryDataLayer(name="data", batch_size=4, data=[x], tops=["x"]),
        InnerProductLayer(
            name="encoder",
            output_dim=3,
            neuron=Neurons.Tanh(),
            bottoms=["x"],
            tops=["code"],
        ),
        TiedInnerProductLayer(
            name="decoder",
            tied_param_key="encoder",
            neuron=Neurons.Sigmoid(),
            learn_weights=learn_weights,
            bottoms=["code"],
            tops=["decoded"],
        ),
        SquareLossLayer(name="loss", bottoms=["decoded", "x"]),
    ]


@pytest.mark.parametrize("learn_weights", [False, True])
def test_tied_weight_training_matches_cpu(cupy, learn_weights):
    """The device's tied decoder writes a weight gradient only with
    learn_weights=True, and its training steps update the shared weight as
    the CPU backend's do."""
    cpu, gpu = twin_nets(lambda: tied_autoencoder_layers(learn_weights))
    expected_names = {"bias", "weight"} if learn_weights else {"bias"}
    assert set(cpu.grads["decoder"]) == expected_names
    assert set(gpu.grads["decoder"]) == expected_names
    cpu_method, gpu_method = SGD(), SGD()
    for iteration in range(3):
        expected = cpu.train_step(cpu_method, 0.1, 0.0, 0.0, iteration)
        got = gpu.train_step(gpu_method, 0.1, 0.0, 0.0, iteration)
        assert got == pytest.approx(expected, rel=RTOL)
        assert_same_grads(cpu, gpu)
    for layer, params in cpu.params.items():
        for name, array in params.items():
            np.testing.assert_allclose(
                gpu.params[layer][name].get(),
                array,
                rtol=1e-9,
                atol=1e-12,
                err_msg=f"{layer}.{name}",
            )


def nan_row_gpu_net(samples, nan_row):
    """Return a GPU softmax net over batches of 4 whose sample ``nan_row``
    makes its loss NaN.

    Data layers reject NaN, so the sample is 1e308 instead, and an inner
    product of weights 10 and -10 turns it into infinite scores of both
    signs, which the softmax loss turns into NaN.
    """
    x = np.ones((samples, 3))
    x[nan_row] = 1e308
    y = np.zeros((samples, 1))

    def layers():
        return [
            MemoryDataLayer(name="data", batch_size=4, data=[x, y]),
            InnerProductLayer(name="ip", output_dim=3, bottoms=["data"], tops=["out"]),
            SoftmaxLossLayer(name="loss", bottoms=["out", "label"]),
        ]

    _, gpu = twin_nets(layers)
    weight = np.array([[10.0] * 3, [-10.0] * 3, [10.0] * 3])
    gpu.params["ip"]["weight"][...] = gpu.cupy.asarray(weight)
    return gpu


def test_nan_loss_leaves_parameters(cupy):
    gpu = nan_row_gpu_net(4, 2)
    before = gpu.params["ip"]["weight"].get()
    with pytest.raises(NumericalError, match="'loss'"):
        gpu.train_step(SGD(), 0.1, 0.9, 0.0, 0)
    np.testing.assert_array_equal(gpu.params["ip"]["weight"].get(), before)


def test_snapshot_resume_matches_cpu(cupy, tmp_path):
    """Train two iterations, snapshot, resume in a new GPU net for two more:
    the result equals four CPU iterations, and the restored solver buffers
    live on the device."""
    from mochac.runtime.coffee_breaks import Snapshot

    cpu, gpu = twin_nets(lambda: lenet(8))

    def solver(max_iter, load_from=None):
        params = make_solver_parameters(
            SGD(),
            max_iter=max_iter,
            regu_coef=0.0005,
            lr_policy=LRPolicy.Fixed(0.01),
            load_from=load_from,
        )
        return Solver(SGD(), params, progress=False)

    solver(4).solve(cpu)
    first = solver(2)
    first.add_coffee_break(Snapshot(tmp_path), every_n_iter=2)
    first.solve(gpu)
    _, resumed_net = twin_nets(lambda: lenet(8))
    second = solver(4, load_from=str(tmp_path))
    second.solve(resumed_net)
    assert second.state.iter == 4
    device_type = type(gpu.cupy.zeros(1))
    for array in second.method.buffers["history"].values():
        assert type(array) is device_type
    for layer, params in cpu.params.items():
        for name, array in params.items():
            np.testing.assert_allclose(
                resumed_net.params[layer][name].get(), array, rtol=1e-9, atol=1e-12
            )


def test_dropout_resume_after_extra_forward(cupy, tmp_path):
    """A coffee break that runs the training net moves its dropout stream,
    so the solver restores the stream from the device copy it captured
    before the step, and the snapshot stores that copy. A run resumed from
    it in a net of another seed equals the uninterrupted run."""
    from mochac.runtime.coffee_breaks import CoffeeBreak, Snapshot

    rng = np.random.default_rng(3)
    x = rng.normal(size=(10, 5))
    y = rng.integers(0, 3, size=(10, 1)).astype(float)

    class ExtraForward(CoffeeBreak):
        def enjoy(self, solver, net):
            net.forward()

    def train(max_iter, seed, folder=None):
        layers = [
            MemoryDataLayer(name="data", batch_size=4, data=[x, y]),
            InnerProductLayer(name="ip1", output_dim=6, bottoms=["data"], tops=["ip1"]),
            DropoutLayer(name="drop", ratio=0.5, bottoms=["ip1"], tops=["dropped"]),
            InnerProductLayer(
                name="ip2", output_dim=3, bottoms=["dropped"], tops=["ip2"]
            ),
            SoftmaxLossLayer(name="loss", bottoms=["ip2", "label"]),
        ]
        net = GPUNet("gpu", GPUBackend(dtype=np.float64, seed=seed), layers)
        params = make_solver_parameters(
            SGD(),
            max_iter=max_iter,
            mom_policy=MomPolicy.Fixed(0.9),
            lr_policy=LRPolicy.Fixed(0.1),
            load_from=None if folder is None else str(folder),
        )
        solver = Solver(SGD(), params, progress=False)
        if folder is not None:
            solver.add_coffee_break(ExtraForward(), every_n_iter=2)
            solver.add_coffee_break(Snapshot(folder), every_n_iter=3)
        solver.solve(net)
        return {name: array.get() for name, array in net.params["ip2"].items()}

    straight = train(6, seed=5)
    train(3, seed=5, folder=tmp_path)
    resumed = train(6, seed=9, folder=tmp_path)
    for name, array in straight.items():
        np.testing.assert_array_equal(resumed[name], array, err_msg=name)


def test_second_device_trains_like_first(cupy):
    """A net on device 1 trains as one on device 0 while device 0 is the
    current device: the update tables, solver buffers and kernels follow
    the backend's device."""
    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two CUDA devices")
    nets = [
        GPUNet(
            f"device{device}",
            GPUBackend(device=device, dtype=np.float64, seed=5),
            lenet(8),
        )
        for device in (0, 1)
    ]
    for net in nets:
        method = Nesterov()
        for iteration in range(3):
            net.train_step(method, 0.01, 0.9, 0.0005, iteration)
        net.apply_update(method, 0.01, 0.9, 0.0005, 3)
    first, second = nets
    for layer, params in first.params.items():
        for name, array in params.items():
            np.testing.assert_allclose(
                second.params[layer][name].get(),
                array.get(),
                rtol=RTOL,
                atol=ATOL,
                err_msg=f"{layer}.{name}",
            )


def test_graph_steps_match_step_by_step(cupy):
    """Training steps replayed from CUDA graphs give the same bits as steps
    launched one by one, across an epoch end where the batch is partial."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(10, 1, 28, 28))
    y = rng.integers(0, 10, size=(10, 1)).astype(float)

    def layers():
        return [
            MemoryDataLayer(name="data", batch_size=4, data=[x, y]),
            *lenet(4)[1:],
        ]

    _, graphed = twin_nets(layers)
    eager = GPUNet(
        "eager", GPUBackend(dtype=np.float64, seed=5, graphs=False), layers()
    )
    for layer, params in graphed.params.items():
        for name, array in params.items():
            eager.params[layer][name][...] = array
    methods = {"graphed": Nesterov(), "eager": Nesterov()}
    # Ten samples in batches of four: steps 3 and 8 are partial batches.
    for iteration in range(10):
        lr = 0.01 / (1 + iteration)
        a = graphed.train_step(methods["graphed"], lr, 0.9, 0.0005, iteration)
        b = eager.train_step(methods["eager"], lr, 0.9, 0.0005, iteration)
        assert a == b
    # Full batches and the partial one at each epoch end: two graphs.
    # lenet's steps have GEMMs, so this needs libcublas called directly
    # (mochac/runtime/cublas_direct.py): CuPy's wrapper rejects capture.
    assert graphed.cublas is not None
    assert graphed.graphs.enabled
    assert len(graphed.graphs.graphs) == 2
    assert not eager.graphs.graphs
    for layer, params in eager.params.items():
        for name, array in params.items():
            assert np.array_equal(graphed.params[layer][name].get(), array.get())


def test_solver_steps_match_cpu(cupy):
    """The solver's order (update, then forward and backward), replayed from
    CUDA graphs, with a separate update where constraints would run, gives
    the CPU's objectives and parameters."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=(10, 1, 28, 28))
    y = rng.integers(0, 10, size=(10, 1)).astype(float)

    def layers():
        return [
            MemoryDataLayer(name="data", batch_size=4, data=[x, y]),
            *lenet(4)[1:],
        ]

    cpu, gpu = twin_nets(layers)
    methods = {cpu: Nesterov(), gpu: Nesterov()}
    for net in (cpu, gpu):
        objectives = [net.forward_backward(methods[net], 0.0005)]
        # Six batches of four from ten samples: the third and sixth are
        # partial.
        for iteration in range(5):
            lr = 0.01 / (1 + iteration)
            if iteration == 2:
                net.apply_update(methods[net], lr, 0.9, 0.0005, iteration)
                objectives.append(net.forward_backward(methods[net], 0.0005))
            else:
                step = net.solver_step(methods[net], lr, 0.9, 0.0005, iteration)
                objectives.append(step)
        net.objectives = objectives
    np.testing.assert_allclose(gpu.objectives, cpu.objectives, rtol=RTOL)
    assert gpu.graphs.enabled
    kinds = {key[0] for key in gpu.graphs.graphs}
    assert "solver" in kinds
    for layer, params in cpu.params.items():
        for name, array in params.items():
            np.testing.assert_allclose(
                gpu.params[layer][name].get(), array, rtol=RTOL, atol=ATOL
            )


def test_uncounted_pass_keeps_statistics(cupy):
    """Net.uncounted, which the solver's gradient recompute uses, leaves the
    device-side accuracy counters, the loss sums and the output layers as
    they were, and the pass still computes the CPU's objective."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(8, 5))
    y = rng.integers(0, 3, size=(8, 1)).astype(float)

    def layers():
        return [
            MemoryDataLayer(name="data", batch_size=4, data=[x, y]),
            InnerProductLayer(name="ip", output_dim=3, bottoms=["data"], tops=["out"]),
            SoftmaxLossLayer(name="loss", bottoms=["out", "label"]),
            AccuracyLayer(name="acc", bottoms=["out", "label"]),
            MemoryOutputLayer(name="keep", bottoms=["out"]),
        ]

    cpu, gpu = twin_nets(layers)
    for net in (cpu, gpu):
        # The methods keep solver state on their net's device.
        method = SGD()
        net.forward_backward(method, 0.0)
        net.solver_step(method, 0.1, 0.9, 0.0, 0)
        net.counted = net.statistics()
        with net.uncounted():
            net.recomputed = net.forward_backward(method, 0.0)
        # A counted pass after the uncounted one adds to the counters again.
        net.solver_step(method, 0.1, 0.9, 0.0, 1)
    for net in (cpu, gpu):
        assert net.counted["acc-count"] == 8
        assert net.statistics()["acc-count"] == 12
        assert len(net.output_states["keep"].outputs[0]) == 3
    assert gpu.counted == pytest.approx(cpu.counted, rel=RTOL)
    assert gpu.statistics() == pytest.approx(cpu.statistics(), rel=RTOL)
    assert gpu.recomputed == pytest.approx(cpu.recomputed, rel=RTOL)


def test_nan_loss_in_graph_replay_leaves_parameters(cupy):
    # The third batch of four contains the NaN.
    gpu = nan_row_gpu_net(12, 9)
    method = SGD()
    gpu.train_step(method, 0.1, 0.9, 0.0, 0)
    gpu.train_step(method, 0.1, 0.9, 0.0, 1)
    assert gpu.graphs.graphs, "the second step should have been captured"
    before = gpu.params["ip"]["weight"].get()
    with pytest.raises(NumericalError, match="'loss'"):
        gpu.train_step(method, 0.1, 0.9, 0.0, 2)
    np.testing.assert_array_equal(gpu.params["ip"]["weight"].get(), before)


def sqrt_factory():
    """Dropout, a ReLU, then sqrt(h - 1), which is NaN where h is below 1:
    whether a sample's loss is NaN depends on the dropout mask drawn."""
    x = np.random.default_rng(0).normal(size=(8, 5))
    y = np.zeros((8, 1))
    return [
        MemoryDataLayer(name="data", batch_size=4, data=[x, y]),
        DropoutLayer(name="drop", ratio=0.5, bottoms=["data"], tops=["dropped"]),
        InnerProductLayer(
            name="ip1",
            output_dim=3,
            neuron=Neurons.ReLU(),
            bottoms=["dropped"],
            tops=["h"],
        ),
        PowerLayer(name="sqrt", power=0.5, shift=-1.0, bottoms=["h"], tops=["s"]),
        InnerProductLayer(name="ip2", output_dim=2, bottoms=["s"], tops=["out"]),
        AccuracyLayer(name="acc", bottoms=["out", "label"]),
        SoftmaxLossLayer(name="loss", bottoms=["out", "label"]),
    ]


def test_nan_loss_names_first_layer(cupy):
    """The GPU net names the layer that made the NaN, as the CPU net does,
    and the trace leaves the random streams and statistics as they were."""
    cpu, gpu = twin_nets(sqrt_factory)
    messages = []
    for net in (cpu, gpu):
        with pytest.raises(NumericalError) as caught:
            net.forward()
        messages.append(str(caught.value).replace(f"net '{net.name}'", "net"))
    assert "layer 'sqrt' (PowerLayer) is the first to output NaN" in messages[1]
    assert messages[1] == messages[0]
    streams = {key: array.get() for key, array in gpu.rng_states.items()}
    statistics = gpu.statistics()
    assert "layer 'sqrt'" in gpu._non_finite_origin()
    for key, array in streams.items():
        np.testing.assert_array_equal(gpu.rng_states[key].get(), array)
        np.testing.assert_array_equal(cpu.rng_states[key], array)
    assert gpu.statistics() == statistics


def test_nan_loss_in_graph_replay_names_first_layer(cupy):
    gpu = nan_row_gpu_net(12, 9)
    method = SGD()
    gpu.train_step(method, 0.1, 0.9, 0.0, 0)
    gpu.train_step(method, 0.1, 0.9, 0.0, 1)
    assert gpu.graphs.graphs, "the second step should have been captured"
    with pytest.raises(NumericalError) as caught:
        gpu.train_step(method, 0.1, 0.9, 0.0, 2)
    assert "layer 'ip' (InnerProductLayer) is the first to output NaN" in str(
        caught.value
    )


def test_diverged_update_message_leaves_out_overwritten_gradients(cupy):
    """The GPU step runs its backward pass after a failed loss check, so the
    solver's message names the parameter but not a gradient as the origin."""
    x = np.random.default_rng(3).normal(size=(8, 3))
    y = np.zeros((8, 1))

    def layers():
        return [
            MemoryDataLayer(batch_size=4, data=[x, y]),
            InnerProductLayer(name="ip1", output_dim=3, bottoms=["data"], tops=["h"]),
            InnerProductLayer(name="ip2", output_dim=2, bottoms=["h"], tops=["out"]),
            SoftmaxLossLayer(name="loss", bottoms=["out", "label"]),
        ]

    _, gpu = twin_nets(layers)
    params = make_solver_parameters(
        SGD(), max_iter=2, regu_coef=1e300, lr_policy=LRPolicy.Fixed(1e300)
    )
    with pytest.raises(NumericalError) as raised:
        Solver(SGD(), params, progress=False).solve(gpu)
    message = str(raised.value)
    assert "after the last update (iteration 1), parameter" in message
    assert "backward pass" not in message
    assert gpu.grads_overwritten


def shuffled_factory(folder):
    """Return a factory of a softmax net reading ten shuffled samples from
    an HDF5 file in batches of four: every epoch ends with a partial batch
    and draws a new order."""
    import h5py

    rng = np.random.default_rng(11)
    with h5py.File(folder / "samples.h5", "w") as handle:
        handle["data"] = rng.normal(size=(10, 3))
        handle["label"] = rng.integers(0, 3, size=(10, 1)).astype(float)
    (folder / "samples.txt").write_text("samples.h5\n")

    def layers():
        return [
            HDF5DataLayer(
                name="data",
                source=str(folder / "samples.txt"),
                batch_size=4,
                shuffle=True,
            ),
            InnerProductLayer(name="ip", output_dim=3, bottoms=["data"], tops=["out"]),
            SoftmaxLossLayer(name="loss", bottoms=["out", "label"]),
            AccuracyLayer(name="accuracy", bottoms=["out", "label"]),
        ]

    return layers


def shuffled_twins(folder):
    """CPU and GPU nets of shuffled_factory whose sources start alike."""
    cpu, gpu = twin_nets(shuffled_factory(folder))
    gpu.data_source("data").load_state_dict(cpu.data_source("data").state_dict())
    return cpu, gpu


def only_source(net):
    (source,) = net.sources.values()
    return source


def assert_same_source_state(cpu, gpu):
    expected, got = only_source(cpu).state_dict(), only_source(gpu).state_dict()
    assert (got["position"], got["epoch"]) == (expected["position"], expected["epoch"])
    assert got["rng"] == expected["rng"]
    np.testing.assert_array_equal(got["order"], expected["order"])
    np.testing.assert_array_equal(
        only_source(gpu).last_indices, only_source(cpu).last_indices
    )


def test_read_ahead_serves_the_cpu_batches(cupy, tmp_path):
    """train_step reads the next batch while the device runs: the batches,
    and the source state the solver and snapshots see, stay the CPU's."""
    cpu, gpu = shuffled_twins(tmp_path)
    cpu_method, gpu_method = SGD(), SGD()
    # Seven steps cross two epoch ends, each with a partial batch.
    for iteration in range(7):
        expected = cpu.train_step(cpu_method, 0.1, 0.9, 0.0, iteration)
        got = gpu.train_step(gpu_method, 0.1, 0.9, 0.0, iteration)
        assert got == pytest.approx(expected, rel=RTOL)
        assert only_source(gpu).pending is not None, "no batch was read ahead"
        np.testing.assert_array_equal(gpu.blobs["data"].get(), cpu.blobs["data"])
        assert_same_source_state(cpu, gpu)
    np.testing.assert_allclose(
        gpu.params["ip"]["weight"].get(), cpu.params["ip"]["weight"], rtol=RTOL
    )


def test_first_batch_reaches_data_top(cupy):
    """The first batch reaches the data layer's tops although the copy
    stream, which does not wait for CuPy's default stream, writes the
    staging buffers that cupy.zeros cleared there."""
    data = np.arange(1.0, 25.0).reshape(4, 6)
    labels = np.arange(4.0).reshape(4, 1)
    layers = [
        MemoryDataLayer(
            name="data", batch_size=2, data=[data, labels], tops=["data", "label"]
        )
    ]
    gpu = GPUNet("first_batch", GPUBackend(seed=1), layers)
    gpu.forward()
    np.testing.assert_array_equal(gpu.blobs["data"].get(), data[:2])
    np.testing.assert_array_equal(gpu.blobs["label"].get(), labels[:2])


def test_epoch_breaks_and_validation_as_on_cpu(cupy, tmp_path):
    """Coffee breaks every epoch fire at the CPU's iterations, and a
    validation pass after a read-ahead step still covers one whole epoch."""
    from mochac.runtime.coffee_breaks import CoffeeBreak, ValidationPerformance

    class Record(CoffeeBreak):
        def __init__(self):
            self.seen = []

        def enjoy(self, solver, net):
            source = only_source(net)
            self.seen.append((solver.state.iter, source.epoch, source.position))

    cpu, gpu = shuffled_twins(tmp_path)
    records = {}
    for net in (cpu, gpu):
        params = make_solver_parameters(
            SGD(), max_iter=9, regu_coef=0.0, lr_policy=LRPolicy.Fixed(0.1)
        )
        solver = Solver(SGD(), params, progress=False)
        records[net.name] = Record()
        solver.add_coffee_break(records[net.name], every_n_epoch=1)
        solver.solve(net)
    assert records["gpu"].seen == records["cpu"].seen
    assert len(records["gpu"].seen) >= 3
    # solve() ends before the batch that no update used, with nothing read
    # ahead; one more step reads the next batch ahead.
    assert only_source(gpu).pending is None
    for net in (cpu, gpu):
        net.train_step(SGD(), 0.1, 0.0, 0.0, 9)
    assert only_source(gpu).pending is not None
    # The train nets validate themselves: one epoch of the ten samples.
    statistics = {net.name: ValidationPerformance(net).evaluate() for net in (cpu, gpu)}
    assert statistics["gpu"] == pytest.approx(statistics["cpu"], rel=RTOL)
    assert statistics["gpu"]["accuracy-count"] == 10


def test_changed_arrays_reach_the_next_step(cupy, tmp_path):
    """Changing a data layer's arrays through data_source() drops the batch
    read ahead, so the change reaches the next step, as on the CPU."""
    rng = np.random.default_rng(12)
    x = rng.normal(size=(10, 3))
    y = rng.integers(0, 3, size=(10, 1)).astype(float)

    def layers():
        return [
            # Each net gets its own copy of the arrays.
            MemoryDataLayer(name="data", batch_size=4, data=[x.copy(), y]),
            *shuffled_factory(tmp_path)()[1:],
        ]

    cpu, gpu = twin_nets(layers)
    cpu_method, gpu_method = SGD(), SGD()
    for iteration in range(3):
        if iteration == 2:
            for net in (cpu, gpu):
                net.data_source("data").arrays[0][...] *= -3.0
        expected = cpu.train_step(cpu_method, 0.1, 0.9, 0.0, iteration)
        got = gpu.train_step(gpu_method, 0.1, 0.9, 0.0, iteration)
        assert got == pytest.approx(expected, rel=RTOL)
        np.testing.assert_array_equal(gpu.blobs["data"].get(), cpu.blobs["data"])


def test_replaced_arrays_other_count_reach_next_step(cupy, tmp_path):
    """Arrays of another sample count, assigned through data_source(),
    reach the next step after the read-ahead batch, as on the CPU."""
    rng = np.random.default_rng(13)
    x = rng.normal(size=(10, 3))
    y = rng.integers(0, 3, size=(10, 1)).astype(float)
    new_x = rng.normal(size=(6, 3))
    new_y = rng.integers(0, 3, size=(6, 1)).astype(float)

    def layers():
        return [
            MemoryDataLayer(name="data", batch_size=4, data=[x.copy(), y]),
            *shuffled_factory(tmp_path)()[1:],
        ]

    cpu, gpu = twin_nets(layers)
    cpu_method, gpu_method = SGD(), SGD()
    for iteration in range(4):
        if iteration == 2:
            for net in (cpu, gpu):
                net.data_source("data").arrays[0] = new_x.copy()
                net.data_source("data").arrays[1] = new_y
        expected = cpu.train_step(cpu_method, 0.1, 0.9, 0.0, iteration)
        got = gpu.train_step(gpu_method, 0.1, 0.9, 0.0, iteration)
        assert got == pytest.approx(expected, rel=RTOL)
        np.testing.assert_array_equal(gpu.blobs["data"].get(), cpu.blobs["data"])
    np.testing.assert_array_equal(cpu.blobs["data"], new_x[[4, 5, 0, 1]])
    assert gpu.data_source("data").position == cpu.data_source("data").position


def test_arrays_replaced_through_kept_source(cupy, tmp_path):
    """Arrays replaced in the list of a source kept from before the read
    ahead reach the next step, as on the CPU: the batch read ahead from the
    old arrays is dropped."""
    rng = np.random.default_rng(14)
    x = rng.normal(size=(10, 3))
    y = rng.integers(0, 3, size=(10, 1)).astype(float)
    new_x = rng.normal(size=(10, 3))

    def layers():
        return [
            MemoryDataLayer(name="data", batch_size=4, data=[x.copy(), y]),
            *shuffled_factory(tmp_path)()[1:],
        ]

    cpu, gpu = twin_nets(layers)
    sources = {net.name: net.data_source("data") for net in (cpu, gpu)}
    cpu_method, gpu_method = SGD(), SGD()
    for iteration in range(4):
        if iteration == 2:
            for source in sources.values():
                source.arrays[0] = new_x.copy()
        expected = cpu.train_step(cpu_method, 0.1, 0.9, 0.0, iteration)
        got = gpu.train_step(gpu_method, 0.1, 0.9, 0.0, iteration)
        assert got == pytest.approx(expected, rel=RTOL)
        np.testing.assert_array_equal(gpu.blobs["data"].get(), cpu.blobs["data"])
    np.testing.assert_array_equal(cpu.blobs["data"], new_x[[4, 5, 6, 7]])


def test_snapshot_after_arrays_replaced(cupy, tmp_path):
    """A snapshot taken after arrays were replaced through a kept source
    stores the new arrays' position (their first row), as on the CPU, not
    the position before the batch read ahead from the old arrays."""
    import h5py

    from mochac.runtime.snapshot import save_snapshot
    from mochac.runtime.solver import SolverState

    rng = np.random.default_rng(15)
    x = rng.normal(size=(10, 3))
    y = rng.integers(0, 3, size=(10, 1)).astype(float)

    def layers():
        return [
            MemoryDataLayer(name="data", batch_size=4, data=[x.copy(), y]),
            InnerProductLayer(name="ip", output_dim=3, bottoms=["data"], tops=["out"]),
            SoftmaxLossLayer(name="loss", bottoms=["out", "label"]),
        ]

    cpu, gpu = twin_nets(layers)
    sources = {net.name: net.data_source("data") for net in (cpu, gpu)}
    for net in (cpu, gpu):
        method = SGD()
        for iteration in range(2):
            net.train_step(method, 0.1, 0.9, 0.0, iteration)
        sources[net.name].arrays[0] = rng.normal(size=(10, 3))
    positions = {}
    for net in (cpu, gpu):
        path = tmp_path / f"{net.name}.h5"
        save_snapshot(path, net, SolverState(method="sgd"))
        with h5py.File(path, "r") as handle:
            positions[net.name] = int(handle["data_layers/data"].attrs["position"])
    assert positions["gpu"] == positions["cpu"] == 0


def break_batch(source, failing_call):
    """Make a data source raise DataError on its ``failing_call``-th batch
    (counting from 1), after moving past it as a failing transformer would."""
    served = source.next_batch
    calls = []

    def next_batch(outputs):
        calls.append(len(calls))
        n_valid = served(outputs)
        if len(calls) == failing_call:
            raise DataError("broken batch on purpose")
        return n_valid

    source.next_batch = next_batch


def test_failed_read_ahead_raises_at_its_own_step(cupy, tmp_path):
    """A batch that fails while being read ahead does not spoil the running
    step. The step that needs it raises, and the source ends where the CPU
    net's does, so both go on with the same batches."""
    cpu, gpu = shuffled_twins(tmp_path)
    break_batch(only_source(cpu), 2)
    break_batch(only_source(gpu).source, 2)
    cpu_method, gpu_method = SGD(), SGD()
    for iteration in range(5):
        if iteration == 1:
            for net, method in ((cpu, cpu_method), (gpu, gpu_method)):
                with pytest.raises(DataError, match="on purpose"):
                    net.train_step(method, 0.1, 0.9, 0.0, iteration)
            assert_same_source_state(cpu, gpu)
            continue
        expected = cpu.train_step(cpu_method, 0.1, 0.9, 0.0, iteration)
        got = gpu.train_step(gpu_method, 0.1, 0.9, 0.0, iteration)
        assert got == pytest.approx(expected, rel=RTOL)
        np.testing.assert_array_equal(gpu.blobs["data"].get(), cpu.blobs["data"])
        assert_same_source_state(cpu, gpu)


def source_named(net, name):
    """Return the source of data layer ``name`` and keep its batch read
    ahead, which data_source() would drop."""
    (source,) = [s for s in net.sources.values() if s.layer.name == name]
    return source


def test_failed_second_source_as_on_cpu(cupy):
    """With two data layers, a failure of the second leaves the first one's
    batch consumed, as the CPU backend's loop over the sources does."""
    rng = np.random.default_rng(13)
    x = rng.normal(size=(12, 3))
    y = rng.integers(0, 3, size=(12, 1)).astype(float)

    def layers():
        return [
            MemoryDataLayer(name="a", batch_size=4, data=[x], tops=["data"]),
            MemoryDataLayer(name="b", batch_size=4, data=[y], tops=["label"]),
            InnerProductLayer(name="ip", output_dim=3, bottoms=["data"], tops=["out"]),
            SoftmaxLossLayer(name="loss", bottoms=["out", "label"]),
        ]

    cpu, gpu = twin_nets(layers)
    break_batch(cpu.data_source("b"), 3)
    break_batch(gpu.data_source("b").source, 3)
    cpu_method, gpu_method = SGD(), SGD()
    for iteration in range(6):
        if iteration == 2:
            for net, method in ((cpu, cpu_method), (gpu, gpu_method)):
                with pytest.raises(DataError, match="on purpose"):
                    net.train_step(method, 0.1, 0.9, 0.0, iteration)
        else:
            expected = cpu.train_step(cpu_method, 0.1, 0.9, 0.0, iteration)
            got = gpu.train_step(gpu_method, 0.1, 0.9, 0.0, iteration)
            assert got == pytest.approx(expected, rel=RTOL)
        for name in ("a", "b"):
            expected_source = source_named(cpu, name)
            got_source = source_named(gpu, name)
            assert got_source.position == expected_source.position, name
            assert got_source.epoch == expected_source.epoch, name


def test_get_layer_writes_reach_next_step(cupy, tmp_path):
    """Writing through get_layer between training steps, as Mocha's scripts
    do, reaches the next step although the GPU net read a batch ahead."""
    rng = np.random.default_rng(15)
    x = rng.normal(size=(8, 3))
    y = rng.integers(0, 3, size=(8, 1)).astype(float)

    def layers():
        return [
            MemoryDataLayer(name="data", batch_size=4, data=[x.copy(), y]),
            *shuffled_factory(tmp_path)()[1:],
        ]

    cpu, gpu = twin_nets(layers)
    methods = {cpu: SGD(), gpu: SGD()}
    for net in (cpu, gpu):
        net.train_step(methods[net], 0.1, 0.9, 0.0, 0)
        get_layer(net, "data").data[0][...] = 7.0
        net.objective_after_write = net.train_step(methods[net], 0.1, 0.9, 0.0, 1)
    assert np.all(gpu.blobs["data"].get() == 7.0)
    assert gpu.objective_after_write == pytest.approx(
        cpu.objective_after_write, rel=RTOL
    )


def test_forward_reads_changed_arrays_after_train_step(cupy, tmp_path):
    """forward() after train_step reads its batch anew, so an in-place change
    to the arrays made in between reaches it."""
    rng = np.random.default_rng(14)
    x = rng.normal(size=(8, 3))
    y = rng.integers(0, 3, size=(8, 1)).astype(float)
    arrays = {}

    def layers():
        data = [x.copy(), y]
        arrays[len(arrays)] = data[0]
        return [
            MemoryDataLayer(name="data", batch_size=4, data=data),
            *shuffled_factory(tmp_path)()[1:],
        ]

    cpu, gpu = twin_nets(layers)
    cpu.train_step(SGD(), 0.1, 0.9, 0.0, 0)
    gpu.train_step(SGD(), 0.1, 0.9, 0.0, 0)
    for array in arrays.values():
        array[...] = -1.0
    assert gpu.forward() == pytest.approx(cpu.forward(), rel=RTOL)
    np.testing.assert_array_equal(gpu.blobs["data"].get(), cpu.blobs["data"])
    assert np.all(gpu.blobs["data"].get() == -1.0)
