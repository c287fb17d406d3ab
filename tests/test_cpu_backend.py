"""CPUBackend's thread count: the argument, else OMP_NUM_THREADS, else the CPUs."""

import ctypes
import ctypes.util
import logging
import os

import numpy as np
import pytest

import mochac
from mochac import (
    CPUBackend,
    InnerProductLayer,
    MemoryDataLayer,
    Net,
    SquareLossLayer,
)


def usable_cpus():
    return len(os.sched_getaffinity(0))


@pytest.mark.parametrize(("setting", "expected"), [("3", 3), ("4,2", 4), (" 1 ", 1)])
def test_threads_from_environment(monkeypatch, setting, expected):
    monkeypatch.setenv("OMP_NUM_THREADS", setting)
    assert CPUBackend().threads == expected


def test_threads_without_environment(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert CPUBackend().threads == usable_cpus()


def test_threads_argument_wins(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert CPUBackend(threads=1).threads == 1


@pytest.mark.parametrize("setting", ["0", "-2", "many"])
def test_invalid_environment_ignored(monkeypatch, caplog, setting):
    monkeypatch.setenv("OMP_NUM_THREADS", setting)
    with caplog.at_level(logging.WARNING, logger="mochac"):
        threads = CPUBackend().threads
    assert threads == usable_cpus()
    assert f"OMP_NUM_THREADS={setting!r}" in caplog.text


@pytest.mark.parametrize("threads", [0, -1, 1.5, "2"])
def test_invalid_threads_argument(threads):
    with pytest.raises(mochac.ConfigError, match="threads"):
        CPUBackend(threads=threads)


def openmp_threads_of_this_thread():
    """Return omp_get_max_threads() from the libgomp the compiled nets load."""
    name = ctypes.util.find_library("gomp")
    if name is None:
        pytest.skip("libgomp not found")
    return ctypes.CDLL(name).omp_get_max_threads()


def small_net(name, threads):
    x = np.ones((4, 3), np.float32)
    y = np.ones((4, 2), np.float32)
    layers = [
        MemoryDataLayer(batch_size=4, data=[x, y]),
        InnerProductLayer(name="ip", output_dim=2, bottoms=["data"], tops=["pred"]),
        SquareLossLayer(name="loss", bottoms=["pred", "label"]),
    ]
    return Net(name, CPUBackend(threads=threads), layers)


def test_each_net_runs_on_its_own_threads():
    # The OpenMP setting is shared by the whole process, so a net built later
    # with another count must not change the count of an earlier one.
    two = small_net("two_threads", 2)
    single = small_net("one_thread", 1)
    two.forward()
    assert openmp_threads_of_this_thread() == 2
    single.forward()
    assert openmp_threads_of_this_thread() == 1
    two.backward()
    assert openmp_threads_of_this_thread() == 2


@pytest.mark.parametrize("seed", ["abc", -1, 1.5])
def test_invalid_seed(seed):
    with pytest.raises(mochac.ConfigError, match=r"CPUBackend: invalid seed="):
        CPUBackend(seed=seed)


@pytest.mark.parametrize(
    ("dtype", "shown"),
    [
        (1e-320, "1e-320"),
        ((), r"\(\)"),
        (np.int32, "int32"),
        # NumPy raises ValueError, not TypeError, for this malformed dtype.
        (("f4", -1), r"\('f4', -1\)"),
    ],
)
def test_invalid_dtype(dtype, shown):
    with pytest.raises(
        mochac.ConfigError, match=rf"CPUBackend: invalid dtype={shown};"
    ):
        CPUBackend(dtype=dtype)


def test_dtype_none_is_default():
    assert CPUBackend(dtype=None).dtype == np.float32
    assert CPUBackend().dtype == np.float32
