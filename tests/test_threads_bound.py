"""CPUBackend's thread count: its bound, NumPy integers and the backend check."""

import logging

import numpy as np
import pytest

from mochac import ConfigError, CPUBackend
from mochac.runtime.backend import MAX_THREADS, check_backend


@pytest.mark.parametrize("threads", [MAX_THREADS + 1, 200000, 2**32])
def test_threads_above_bound_rejected(threads):
    with pytest.raises(ConfigError, match=rf"threads={threads}; expected an int in"):
        CPUBackend(threads=threads)


def test_threads_bound_accepted():
    assert CPUBackend(threads=MAX_THREADS).threads == MAX_THREADS


def test_threads_numpy_int_accepted():
    backend = CPUBackend(threads=np.int64(2))
    assert backend.threads == 2
    assert type(backend.threads) is int


def test_threads_bool_rejected():
    with pytest.raises(ConfigError, match="threads=True"):
        CPUBackend(threads=True)


def test_environment_threads_above_bound_ignored(monkeypatch, caplog):
    monkeypatch.setenv("OMP_NUM_THREADS", str(MAX_THREADS + 1))
    with caplog.at_level(logging.WARNING, logger="mochac.runtime.backend"):
        threads = CPUBackend().threads
    assert 1 <= threads <= MAX_THREADS
    assert f"ignoring OMP_NUM_THREADS='{MAX_THREADS + 1}'" in caplog.text


@pytest.mark.parametrize("backend", [None, "cpu", CPUBackend])
def test_check_backend_rejects(backend):
    with pytest.raises(ConfigError, match=r"net 'n': invalid backend .*CPUBackend\(\)"):
        check_backend("n", backend)


def test_check_backend_accepts_cpu():
    check_backend("n", CPUBackend(threads=1))
