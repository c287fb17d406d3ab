"""Writes that fail for lack of space raise a mochac error and leave no file.

Each case runs in a child process whose file size limit (RLIMIT_FSIZE) makes
writes past 1 MiB fail with EFBIG, as a full disk fails them with ENOSPC.
When HDF5 itself met such an error, the process crashed later, at the
file's close or at exit, so the child's exit status is part of each check.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="uses RLIMIT_FSIZE and SIGXFSZ as Linux has them"
)

# Builds a net with a 2048 x 1024 float32 weight (8 MiB), then limits the
# size of files the process writes to 1 MiB.
PREAMBLE = """
import gc
import resource
import signal
import sys

import numpy as np

from mochac import *

folder = sys.argv[1]
x = np.zeros((8, 1, 32, 32), np.float32)
y = np.zeros((8, 1), np.float32)
layers = [
    MemoryDataLayer(name="data", batch_size=8, data=[x, y]),
    InnerProductLayer(name="ip1", output_dim=2048, bottoms=["data"], tops=["ip1"]),
    InnerProductLayer(name="ip2", output_dim=2, bottoms=["ip1"], tops=["ip2"]),
    SoftmaxLossLayer(name="loss", bottoms=["ip2", "label"]),
]
"""

LIMIT = """
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
"""

SNAPSHOT = (
    PREAMBLE
    + """
net = Net("big", CPUBackend(seed=1), layers)
"""
    + LIMIT
    + """
try:
    save_snapshot(f"{folder}/model.h5", net)
except SnapshotError as error:
    print("raised:", error)
del net
gc.collect()
print("exited normally")
"""
)

OUTPUT = (
    PREAMBLE
    + """
keep = HDF5OutputLayer(name="keep", bottoms=["ip1"], filename=f"{folder}/out.h5")
net = Net("big", CPUBackend(seed=1), [*layers, keep])
"""
    + LIMIT
    + """
try:
    for _ in range(100):
        net.forward()
except MochacError as error:
    print("raised:", error)
net.destroy()
del net
gc.collect()
print("exited normally")
"""
)


def run_child(script: str, folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), str(folder)],
        capture_output=True,
        check=False,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_snapshot_on_full_disk(tmp_path):
    result = run_child(SNAPSHOT, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"raised: cannot write {tmp_path}/model.h5" in result.stdout
    assert "File too large" in result.stdout
    assert "exited normally" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_hdf5_output_on_full_disk(tmp_path):
    result = run_child(OUTPUT, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"raised: HDF5OutputLayer 'keep': writing {tmp_path}/out.h5" in (
        result.stdout
    )
    assert "the partial file was deleted" in result.stdout
    assert "exited normally" in result.stdout
    assert list(tmp_path.iterdir()) == []
