"""The host stand-in for CuPy (tests/host_cupy.py) rejects what a device does.

Each test makes a call that the host could carry out but CuPy or CUDA
rejects on a GPU, so code that passes against the stand-in does not fail
only on a device for these reasons.
"""

import shutil

import host_cupy
import numpy as np
import pytest

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
    capturing.begin_capture()
    x.set(np.ones(4), stream=other)
    other.synchronize()
    graph = capturing.end_capture()
    assert graph.calls == []
    assert x.tolist() == [1.0, 1.0, 1.0, 1.0]


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
