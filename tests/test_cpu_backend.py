"""CPUBackend's thread count: the argument, else OMP_NUM_THREADS, else the CPUs."""

import logging
import os

import pytest

import mochac
from mochac import CPUBackend


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
