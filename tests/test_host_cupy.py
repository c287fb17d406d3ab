"""The host stand-in for CuPy (tests/host_cupy.py) rejects what a device does.

Each test makes a call that the host could carry out but CuPy or CUDA
rejects on a GPU, so code that passes against the stand-in does not fail
only on a device for these reasons.
"""

import os
import shutil

import host_cupy
import numpy as np
import pytest
from cuda_emulator import EmulationError

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None, reason="g++ is needed to compile kernels for the host"
)

# One kernel written out and one through a macro, as the generated modules
# declare mochac_update and the layers' kernels.
SOURCE = r"""
#define MOCHAC_BLOCK 256
#define SCALE_KERNEL(name) \
    extern "C" __global__ void name(double *x, long long n, double factor)

extern "C" __global__ void add_count(double *x, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        x[i] += n;
}

SCALE_KERNEL(scale)
{
    long long i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        x[i] *= factor;
}
"""


@pytest.fixture(scope="module")
def module():
    return host_cupy.RawModule(code=SOURCE)


def test_kernel_runs_with_matching_arguments(module):
    x = host_cupy.zeros(4, np.float64)
    module.get_function("add_count")((1,), (256,), (x, np.int32(4)))
    module.get_function("scale")((1,), (256,), (x, np.int64(4), np.float64(0.5)))
    assert x.tolist() == [2.0, 2.0, 2.0, 2.0]


@pytest.mark.parametrize(
    "kernel, arguments",
    [
        ("add_count", (np.int64(4),)),
        ("add_count", (4,)),
        ("scale", (np.int32(4), np.float64(0.5))),
        ("scale", (np.int64(4), np.float32(0.5))),
        ("scale", (np.int64(4), 0.5)),
    ],
)
def test_scalar_of_other_width_rejected(module, kernel, arguments):
    x = host_cupy.zeros(4, np.float64)
    with pytest.raises(TypeError, match="needs a numpy"):
        module.get_function(kernel)((1,), (256,), (x, *arguments))
    assert x.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_wrong_argument_count_rejected(module):
    x = host_cupy.zeros(4, np.float64)
    with pytest.raises(TypeError, match="takes 3 arguments"):
        module.get_function("scale")((1,), (256,), (x, np.int64(4)))


def test_scalar_for_pointer_rejected(module):
    with pytest.raises(TypeError, match="needs a device array"):
        module.get_function("add_count")((1,), (256,), (np.int32(0), np.int32(4)))


# Each thread appends its index to ``order``, one after another as the
# emulator runs them. ``total`` is read and written by every thread with no
# barrier, a race that a device can lose updates to.
ORDER_SOURCE = r"""
#define MOCHAC_BLOCK 256
extern "C" __global__ void record_order(int *order, int *count)
{
    order[(*count)++] = threadIdx.x;
}

extern "C" __global__ void count_threads(double *total)
{
    total[0] += 1;
}
"""


def run_order(order, monkeypatch):
    """Return the thread indices of one launch of record_order in ``order``."""
    monkeypatch.setattr(host_cupy, "LAUNCH_ORDER", order)
    module = host_cupy.RawModule(code=ORDER_SOURCE)
    threads = host_cupy.zeros(256, np.int32)
    count = host_cupy.zeros(1, np.int32)
    threads[...] = 0
    count[...] = 0
    module.get_function("record_order")((1,), (256,), (threads, count))
    return threads.get().tolist()


def test_launch_runs_threads_in_set_order(monkeypatch):
    assert run_order("forward", monkeypatch) == list(range(256))
    assert run_order("reverse", monkeypatch) == list(range(255, -1, -1))
    shuffled = run_order("shuffle", monkeypatch)
    assert sorted(shuffled) == list(range(256))
    assert shuffled != list(range(256))


@pytest.mark.skipif(
    "MOCHAC_HOST_CUPY_ORDER" in os.environ, reason="MOCHAC_HOST_CUPY_ORDER is set"
)
def test_default_order_is_shuffled():
    assert host_cupy.LAUNCH_ORDER == "shuffle"


def count_threads(races, monkeypatch):
    """Launch count_threads on one block; return the total it leaves."""
    monkeypatch.setattr(host_cupy, "RACE_CHECK", races)
    module = host_cupy.RawModule(code=ORDER_SOURCE)
    total = host_cupy.zeros(1, np.float64)
    total[...] = 0
    module.get_function("count_threads")((1,), (256,), (total,))
    return total.get().tolist()


def test_unordered_updates_pass_without_race_check(monkeypatch):
    assert count_threads(False, monkeypatch) == [256.0]


def test_race_check_finds_unordered_updates(monkeypatch):
    with pytest.raises(EmulationError, match="data race"):
        count_threads(True, monkeypatch)


@pytest.mark.parametrize(
    "grid, block",
    [((0,), (256,)), ((1, 65536), (256,)), ((1,), (1025,)), ((1,), (256, 8))],
)
def test_launch_beyond_limits_rejected(module, grid, block):
    x = host_cupy.zeros(4, np.float64)
    with pytest.raises(host_cupy.CUDARuntimeError, match="INVALID_VALUE"):
        module.get_function("add_count")(grid, block, (x, np.int32(4)))


@pytest.mark.parametrize(
    "host, error",
    [
        (np.zeros(3, np.float32), TypeError),
        (np.zeros(4, np.float64), ValueError),
        ([0.0, 0.0, 0.0], TypeError),
    ],
)
def test_set_needs_same_shape_and_dtype(host, error):
    device = host_cupy.zeros(3, np.float64)
    with pytest.raises(error):
        device.set(host)


@pytest.mark.parametrize(
    "out, error",
    [
        (np.zeros(3, np.float32), TypeError),
        (np.zeros((3, 1), np.float64), ValueError),
        (np.zeros(6, np.float64)[::2], ValueError),
    ],
)
def test_get_out_needs_same_shape_and_dtype(out, error):
    device = host_cupy.asarray(np.arange(3.0))
    with pytest.raises(error):
        device.get(out=out)


def test_capture_records_only_capturing_stream(module):
    x = host_cupy.zeros(4, np.float64)
    stream = host_cupy.Stream()
    add = module.get_function("add_count")
    stream.begin_capture()
    with stream:
        add((1,), (256,), (x, np.int32(4)))
    graph = stream.end_capture()
    assert x.tolist() == [0.0, 0.0, 0.0, 0.0]
    graph.launch(stream=stream)
    assert x.tolist() == [4.0, 4.0, 4.0, 4.0]


def test_null_stream_during_capture_rejected(module):
    x = host_cupy.zeros(4, np.float64)
    stream = host_cupy.Stream()
    stream.begin_capture()
    try:
        # Outside ``with stream:`` the launch goes to the legacy null stream.
        with pytest.raises(host_cupy.CUDARuntimeError, match="CaptureImplicit"):
            module.get_function("add_count")((1,), (256,), (x, np.int32(4)))
    finally:
        stream.end_capture()
    assert x.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_non_blocking_stream_runs_during_capture():
    capturing, other = host_cupy.Stream(), host_cupy.Stream(non_blocking=True)
    x = host_cupy.zeros(4, np.float64)
    # The copy on ``other`` must not run before the memset of zeros.
    other.wait_event(host_cupy.Stream.null.record())
    capturing.begin_capture()
    x.set(np.ones(4), stream=other)
    other.synchronize()
    graph = capturing.end_capture()
    assert graph.calls == []
    assert x.tolist() == [1.0, 1.0, 1.0, 1.0]


def test_non_blocking_copy_precedes_zeros_memset():
    """A non-blocking stream does not wait for the null stream's memset of
    cupy.zeros, so the memset can land after its copy."""
    other = host_cupy.Stream(non_blocking=True)
    x = host_cupy.zeros(4, np.float64)
    x.set(np.ones(4), stream=other)
    other.synchronize()
    assert x.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_event_orders_zeros_memset_first():
    other = host_cupy.Stream(non_blocking=True)
    x = host_cupy.zeros(4, np.float64)
    other.wait_event(host_cupy.Stream.null.record())
    x.set(np.ones(4), stream=other)
    other.synchronize()
    assert x.tolist() == [1.0, 1.0, 1.0, 1.0]


def test_zeros_memory_is_nan_until_memset():
    x = host_cupy.zeros(2, np.float64)
    assert np.isnan(x._buffer).all()
    assert x.tolist() == [0.0, 0.0]


def test_capturing_stream_cannot_synchronize():
    stream = host_cupy.Stream()
    stream.begin_capture()
    try:
        with pytest.raises(host_cupy.CUDARuntimeError, match="CaptureUnsupported"):
            stream.synchronize()
    finally:
        stream.end_capture()


def test_null_stream_capture_rejected():
    with pytest.raises(RuntimeError, match="legacy"):
        host_cupy.Stream.null.begin_capture()


# The stand-in's arrays, like cupy.ndarray, are not NumPy arrays, so host
# code must copy them with ``get`` or ``cupy.asnumpy``.


@pytest.mark.parametrize(
    "convert",
    [np.asarray, np.array, np.ascontiguousarray, lambda x: np.zeros(3) + x],
    ids=["asarray", "array", "ascontiguousarray", "host_plus_device"],
)
def test_implicit_host_conversion_rejected(convert):
    device = host_cupy.asarray(np.arange(3.0))
    with pytest.raises(TypeError):
        convert(device)


def test_asarray_names_explicit_get():
    device = host_cupy.asarray(np.arange(3.0))
    with pytest.raises(TypeError, match=r"Please use `\.get\(\)`"):
        np.asarray(device)


def test_torch_from_numpy_rejects_device_array():
    torch = pytest.importorskip("torch")
    device = host_cupy.asarray(np.arange(3.0))
    with pytest.raises(TypeError):
        torch.from_numpy(device)


@pytest.mark.parametrize(
    "combine",
    [
        lambda x, host: x + host,
        lambda x, host: host * x,
        lambda x, host: np.add(x, host),
        lambda x, host: np.concatenate([x, host]),
        lambda x, host: np.isfinite(x, out=host),
    ],
    ids=["add", "multiply", "ufunc", "function", "host_out"],
)
def test_mixing_with_host_array_rejected(combine):
    device = host_cupy.asarray(np.arange(3.0))
    with pytest.raises(TypeError, match="Unsupported type"):
        combine(device, np.ones(3))


def test_in_place_with_host_array_rejected():
    device = host_cupy.asarray(np.arange(3.0))
    with pytest.raises(TypeError, match="Unsupported type"):
        device += np.ones(3)
    assert device.get().tolist() == [0.0, 1.0, 2.0]


def test_assigning_host_array_rejected():
    device = host_cupy.zeros(3, np.float64)
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray"):
        device[...] = np.ones(3)
    with pytest.raises(TypeError, match="Unsupported type"):
        device[...] = [1.0, 2.0, 3.0]
    assert device.get().tolist() == [0.0, 0.0, 0.0]


def test_assigning_scalars_and_device_arrays():
    device = host_cupy.zeros(3, np.float64)
    device[0] = 1.5
    device[1] = np.float64(2.5)
    # CuPy reads a 0-d NumPy array as a scalar.
    device[2] = np.array(3.5)
    assert device.get().tolist() == [1.5, 2.5, 3.5]
    device[...] = host_cupy.asarray(np.full(3, 4.0))
    assert device.get().tolist() == [4.0, 4.0, 4.0]


def test_host_array_for_pointer_rejected(module):
    with pytest.raises(TypeError, match="needs a device array"):
        module.get_function("add_count")((1,), (256,), (np.zeros(4), np.int32(4)))


def test_gemm_rejects_host_operand():
    a = host_cupy.asarray(np.ones((2, 2)))
    out = host_cupy.zeros((2, 2), np.float64)
    with pytest.raises(TypeError, match="expected a device array"):
        host_cupy.gemm("N", "N", a, np.ones((2, 2)), out=out)


def test_explicit_copies_return_numpy():
    device = host_cupy.asarray(np.arange(6.0).reshape(2, 3))
    cupy = host_cupy.module()
    for host in (device.get(), cupy.asnumpy(device)):
        assert type(host) is np.ndarray
        assert host.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert cupy.asarray(device) is device


def test_device_array_interface():
    device = host_cupy.asarray(np.arange(6.0).reshape(2, 3))
    assert len(device) == 2
    assert device.shape == (2, 3)
    assert device.dtype == np.float64
    row = device[1]
    assert isinstance(row, host_cupy.DeviceArray)
    # Indexing one element gives a 0-d device array, which float() copies.
    element = device[1, 2]
    assert isinstance(element, host_cupy.DeviceArray)
    assert element.shape == ()
    assert float(element) == 5.0
    assert int(device[0, 1]) == 1
    # Views write through to their base, as on the device.
    row[...] = 0.0
    assert device.get().tolist() == [[0.0, 1.0, 2.0], [0.0, 0.0, 0.0]]


def test_device_arithmetic_stays_on_device():
    device = host_cupy.asarray(np.arange(3.0))
    for result in (
        device * 2 + 1.0,
        np.sqrt(device),
        np.isfinite(device),
        device.sum(),
    ):
        assert isinstance(result, host_cupy.DeviceArray)
    assert (device * 2 + 1.0).get().tolist() == [1.0, 3.0, 5.0]
    assert bool(np.isfinite(device).all())
    assert float(device.sum()) == 3.0
