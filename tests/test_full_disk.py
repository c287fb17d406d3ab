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


# A Ctrl-C (SIGINT) that arrives inside HDF5's write of a batch: the batch is
# written whole, then KeyboardInterrupt is raised, and the file stays usable.
INTERRUPTED_OUTPUT = """
import gc
import os
import signal
import sys

import h5py
import numpy as np

from mochac import *
from mochac import durable_files

# A child of a background job inherits an ignored SIGINT, and the
# os.kill below needs the default handler to raise KeyboardInterrupt.
signal.signal(signal.SIGINT, signal.default_int_handler)
folder = sys.argv[1]
x = np.arange(8 * 16, dtype=np.float32).reshape(8, 16)
layers = [
    MemoryDataLayer(name="data", batch_size=4, data=[x], tops=["x"]),
    HDF5OutputLayer(name="keep", bottoms=["x"], filename=f"{folder}/out.h5"),
]
net = Net("interrupted", CPUBackend(seed=1), layers)
net.forward()
real_write = durable_files.WriteGuard.write
sent = []


def write(self, data):
    if not sent:
        sent.append(1)
        os.kill(os.getpid(), signal.SIGINT)
    return real_write(self, data)


durable_files.WriteGuard.write = write
try:
    net.forward()
except KeyboardInterrupt:
    print("interrupted after the batch")
durable_files.WriteGuard.write = real_write
net.destroy()
with h5py.File(f"{folder}/out.h5", "r") as handle:
    print("rows", handle["x"].shape[0], float(handle["x"][()].sum()))
gc.collect()
print("exited normally")
"""


def test_ctrl_c_inside_output_write(tmp_path):
    result = run_child(INTERRUPTED_OUTPUT, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "interrupted after the batch" in result.stdout
    # Both batches of four rows, whole: the sum of 0 .. 127.
    assert "rows 8 8128.0" in result.stdout
    assert "exited normally" in result.stdout
    assert [path.name for path in tmp_path.iterdir()] == ["out.h5"]


# An exception raised inside HDF5's write, as a MemoryError or a signal
# handler of the program would: the file is discarded and the exception
# reaches the caller, with no crash at exit.
FAILED_INSIDE_WRITE = """
import gc
import sys

import numpy as np

from mochac import *
from mochac import durable_files

folder = sys.argv[1]
x = np.zeros((8, 16), np.float32)
layers = [
    MemoryDataLayer(name="data", batch_size=4, data=[x], tops=["x"]),
    HDF5OutputLayer(name="keep", bottoms=["x"], filename=f"{folder}/out.h5"),
]
net = Net("failing", CPUBackend(seed=1), layers)
net.forward()


class Stop(BaseException):
    pass


class StoppingFile:
    # A file whose writes raise Stop, as a MemoryError would.

    def __init__(self, raw):
        self.raw = raw

    def write(self, data):
        raise Stop

    def __getattr__(self, name):
        return getattr(self.raw, name)


stream = net.output_states["keep"].stream
stream.raw = StoppingFile(stream.raw)
try:
    net.forward()
except Stop:
    print("raised Stop")
real_init = durable_files.WriteGuard.__init__


def init(self, path):
    real_init(self, path)
    self.raw = StoppingFile(self.raw)


durable_files.WriteGuard.__init__ = init
try:
    save_snapshot(f"{folder}/model.h5", net)
except Stop:
    print("snapshot raised Stop")
durable_files.WriteGuard.__init__ = real_init
net.destroy()
gc.collect()
print("exited normally")
"""


def test_exception_inside_write_discards_file(tmp_path):
    result = run_child(FAILED_INSIDE_WRITE, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "raised Stop" in result.stdout
    assert "snapshot raised Stop" in result.stdout
    assert "exited normally" in result.stdout
    assert list(tmp_path.iterdir()) == []


# A program's SIGTERM handler that exits, called while HDF5 writes a batch:
# the batch is written whole, then the handler ends the program.
TERMINATED_OUTPUT = """
import os
import signal
import sys

import numpy as np

from mochac import *
from mochac import durable_files

folder = sys.argv[1]
x = np.arange(8 * 16, dtype=np.float32).reshape(8, 16)
layers = [
    MemoryDataLayer(name="data", batch_size=4, data=[x], tops=["x"]),
    HDF5OutputLayer(name="keep", bottoms=["x"], filename=f"{folder}/out.h5"),
]
net = Net("terminated", CPUBackend(seed=1), layers)
net.forward()
signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(3))
real_write = durable_files.WriteGuard.write
sent = []


def write(self, data):
    if not sent:
        sent.append(1)
        os.kill(os.getpid(), signal.SIGTERM)
    return real_write(self, data)


durable_files.WriteGuard.write = write
try:
    net.forward()
finally:
    durable_files.WriteGuard.write = real_write
    net.destroy()
    print("destroyed")
"""


def test_sigterm_handler_inside_output_write(tmp_path):
    import h5py

    result = run_child(TERMINATED_OUTPUT, tmp_path)
    assert result.returncode == 3, result.stderr[-2000:]
    assert "destroyed" in result.stdout
    with h5py.File(tmp_path / "out.h5", "r") as handle:
        assert handle["x"].shape == (8, 16)


def test_held_signals_hold_other_signals():
    """A real-time signal waits for the block's end as SIGINT does, and its
    handler gets the frame."""
    import os
    import signal

    from mochac.runtime.interrupts import held_signals

    events = []

    def handler(signum, frame):
        events.append(("handler", signum, frame is not None))

    def note(event):
        # A Python call, at whose start Python runs pending handlers.
        events.append(event)

    previous = signal.signal(signal.SIGRTMIN, handler)
    try:
        with held_signals():
            os.kill(os.getpid(), signal.SIGRTMIN)
            note("written")
        note("after")
    finally:
        signal.signal(signal.SIGRTMIN, previous)
    assert events == ["written", ("handler", signal.SIGRTMIN, True), "after"]


def test_fault_signals_not_held():
    import signal

    from mochac.runtime.interrupts import HELD_SIGNALS

    for name in ("SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGKILL", "SIGSTOP"):
        assert getattr(signal, name) not in HELD_SIGNALS, name
    assert signal.SIGTERM in HELD_SIGNALS
    assert signal.SIGINT in HELD_SIGNALS
