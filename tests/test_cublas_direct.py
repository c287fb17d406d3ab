"""mochac.runtime.cublas_direct against tests/fake_cublas.c: row-major GEMMs
through column-major cuBLAS, scalars kept alive, errors, and how the
library is found."""

import gc
import logging
import shutil
import types

import host_cupy
import numpy as np
import pytest

from mochac.errors import MochacError
from mochac.runtime import cublas_direct

pytestmark = pytest.mark.skipif(
    shutil.which("gcc") is None, reason="gcc is needed to build the fake libcublas"
)


NULL_STREAM = types.SimpleNamespace(ptr=0)


@pytest.fixture(scope="module")
def handle():
    library = cublas_direct.CublasLibrary(host_cupy.fake_cublas_path())
    handle = cublas_direct.CublasHandle(library, 0)
    yield handle
    handle.close()


def device(array):
    return host_cupy.asarray(np.ascontiguousarray(array))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_matches_numpy(handle, dtype, trans_a, trans_b):
    rng = np.random.default_rng(3)
    m, n, k = 3, 5, 4
    a = device(rng.normal(size=(k, m) if trans_a else (m, k)).astype(dtype))
    b = device(rng.normal(size=(n, k) if trans_b else (k, n)).astype(dtype))
    c = device(rng.normal(size=(m, n)).astype(dtype))
    op_a = a.T if trans_a else a
    op_b = b.T if trans_b else b
    expected = (0.5 * (op_a @ op_b) + 2 * c).get()
    handle.gemm_call(trans_a, trans_b, a, b, c, 0.5, 2.0)()
    tolerance = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(c.get(), expected, rtol=tolerance)


def test_gemm_on_views_of_one_buffer(handle):
    """GEMM operands are views at offsets into one arena."""
    arena = device(np.zeros(64))
    a = arena[0:6].reshape(2, 3)
    b = arena[8:20].reshape(3, 4)
    c = arena[24:32].reshape(2, 4)
    a[...] = device(np.arange(6.0).reshape(2, 3))
    b[...] = device(np.arange(12.0).reshape(3, 4))
    handle.gemm_call(False, False, a, b, c, 1.0, 0.0)()
    np.testing.assert_array_equal(c.get(), a.get() @ b.get())
    assert np.all(arena[32:].get() == 0)
    assert np.all(arena[20:24].get() == 0)


def test_gemm_scalars_outlive_the_call(handle):
    """A GEMM bound now and run later, as a graph replays it, reads the
    alpha and beta it was bound with."""
    a = device(np.ones((2, 2)))
    b = device(np.ones((2, 2)))
    c = device(np.ones((2, 2)))
    run = handle.gemm_call(False, False, a, b, c, 0.25, 3.0)
    gc.collect()
    garbage = [float(value) * 1.5 for value in range(100_000)]
    run()
    assert len(garbage) == 100_000
    np.testing.assert_array_equal(c.get(), np.full((2, 2), 0.25 * 2 + 3.0))


def test_gemm_rejects_strided_operand(handle):
    a = device(np.ones((4, 4)))[:, ::2]
    b = device(np.ones((2, 2)))
    c = device(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="C-ordered"):
        handle.gemm_call(False, False, a, b, c, 1.0, 0.0)


def test_gemm_rejects_mixed_dtypes(handle):
    a = device(np.ones((2, 2)))
    b = device(np.ones((2, 2), dtype=np.float32))
    c = device(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="one dtype"):
        handle.gemm_call(False, False, a, b, c, 1.0, 0.0)


def test_failed_status_names_call():
    with pytest.raises(
        MochacError, match="cublasSgemm_v2 failed with CUBLAS_STATUS_INVALID"
    ):
        cublas_direct._check(7, "cublasSgemm_v2")


def test_loaded_paths_skip_cublas_lt(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text(
        "7f00-7f10 r-xp 00000000 08:01 11 /opt/cuda/lib/libcublasLt.so.13\n"
        "7f10-7f20 r-xp 00000000 08:01 12 /opt/cuda/lib/libcublas.so.13\n"
        "7f20-7f30 r--p 00001000 08:01 12 /opt/cuda/lib/libcublas.so.13\n"
        "7f30-7f40 rw-p 00000000 00:00 0\n"
        "7f40-7f50 r-xp 00000000 08:01 13 /torch/lib/libcublas.so.12\n"
    )
    paths = cublas_direct.loaded_library_paths("libcublas.so", maps)
    assert paths == ["/opt/cuda/lib/libcublas.so.13", "/torch/lib/libcublas.so.12"]


def test_loaded_paths_of_unreadable_maps(tmp_path):
    assert cublas_direct.loaded_library_paths("libcublas.so", tmp_path / "none") == []


def fake_cupy(major, fail=False):
    def get_cublas_handle():
        if fail:
            raise RuntimeError("no device")
        return 1

    return types.SimpleNamespace(
        cuda=types.SimpleNamespace(
            device=types.SimpleNamespace(get_cublas_handle=get_cublas_handle),
            runtime=types.SimpleNamespace(runtimeGetVersion=lambda: major * 1000 + 20),
        )
    )


@pytest.mark.parametrize(
    ("major", "expected"),
    [(12, "/torch/lib/libcublas.so.12"), (13, "/cuda/lib/libcublas.so.13.1.0")],
)
def test_find_prefers_cupy_cuda_version(monkeypatch, major, expected):
    paths = ["/torch/lib/libcublas.so.12", "/cuda/lib/libcublas.so.13.1.0"]
    monkeypatch.setattr(cublas_direct, "loaded_library_paths", lambda stem: paths)
    assert cublas_direct.find_cublas(fake_cupy(major)) == expected


def test_find_without_cublas_handle(monkeypatch):
    monkeypatch.setattr(cublas_direct, "loaded_library_paths", lambda stem: ["x"])
    assert cublas_direct.find_cublas(fake_cupy(13, fail=True)) is None


def test_open_handle_not_found_logs(monkeypatch, caplog):
    monkeypatch.setattr(cublas_direct, "find_cublas", lambda cupy: None)
    with caplog.at_level(logging.INFO, logger="mochac.runtime.cublas_direct"):
        assert cublas_direct.open_handle(None, NULL_STREAM) is None
    assert "GEMMs go through CuPy" in caplog.text


def test_open_handle_unloadable_library_warns(monkeypatch, caplog, tmp_path):
    bogus = tmp_path / "libcublas.so.13"
    bogus.write_text("not a library")
    monkeypatch.setattr(cublas_direct, "find_cublas", lambda cupy: str(bogus))
    with caplog.at_level(logging.WARNING, logger="mochac.runtime.cublas_direct"):
        assert cublas_direct.open_handle(None, NULL_STREAM) is None
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert str(bogus) in warnings[0].getMessage()


def test_host_check_passes_on_right_gemms(handle):
    cupy = host_cupy.module()
    assert cublas_direct.host_mismatch(handle, cupy, host_cupy.Stream()) is None


def test_open_handle_rejects_wrong_gemms(monkeypatch, caplog):
    """A handle whose GEMMs disagree with NumPy is closed, and GEMMs go
    through CuPy instead."""
    path = host_cupy.fake_cublas_path()
    monkeypatch.setattr(cublas_direct, "find_cublas", lambda cupy: path)
    # Swapping the operands of every call, as a wrong argument order would.
    bound = cublas_direct.CublasHandle.gemm_call

    def swapped(self, trans_a, trans_b, a, b, c, alpha, beta):
        return bound(self, not trans_a, trans_b, a, b, c, alpha, beta)

    monkeypatch.setattr(cublas_direct.CublasHandle, "gemm_call", swapped)
    # GPU nets of earlier tests release their handles when collected.
    gc.collect()
    before = host_cupy.fake_cublas_live_handles()
    with caplog.at_level(logging.WARNING, logger="mochac.runtime.cublas_direct"):
        handle = cublas_direct.open_handle(host_cupy.module(), host_cupy.Stream())
    assert handle is None
    assert host_cupy.fake_cublas_live_handles() == before
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "failed a check (float32 GEMM with trans_a=False" in warnings[0]
