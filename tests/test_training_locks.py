"""The locks solve() holds on its Snapshot folders and statistics file."""

import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mochac import (
    SGD,
    CoffeeBreak,
    CPUBackend,
    InnerProductLayer,
    LockHeldError,
    MemoryDataLayer,
    Net,
    Snapshot,
    SoftmaxLossLayer,
    Solver,
    file_locks,
    make_solver_parameters,
)
from mochac.runtime.training_locks import SNAPSHOT_FOLDER_LOCK

# A training that holds its locks until its stdin closes: it prints "holding"
# from a coffee break at iteration 0, after the Snapshot break, and waits for
# a line of stdin at each break.
HOLDING_RUN = textwrap.dedent(
    """
    import sys

    import numpy as np
    from mochac import *

    folder, statistics = sys.argv[1], sys.argv[2]


    class Hold(CoffeeBreak):
        def enjoy(self, solver, net):
            print("holding", flush=True)
            sys.stdin.readline()


    x = np.arange(8, dtype=np.float64).reshape(4, 2)
    y = np.array([[0], [1], [2], [0]], dtype=np.float64)
    layers = [
        MemoryDataLayer(name="data", batch_size=2, data=[x, y]),
        InnerProductLayer(name="ip", output_dim=3, bottoms=["data"], tops=["ip"]),
        SoftmaxLossLayer(name="loss", bottoms=["ip", "label"]),
    ]
    net = Net("holder", CPUBackend(dtype=np.float64), layers)
    solver = Solver(SGD(), make_solver_parameters(SGD(), max_iter=1))
    solver.setup_coffee_lounge(save_into=statistics)
    solver.add_coffee_break(Snapshot(folder), every_n_iter=1)
    solver.add_coffee_break(Hold(), every_n_iter=1)
    solver.solve(net)
    """
)


def make_net(name="locked"):
    x = np.arange(8, dtype=np.float64).reshape(4, 2)
    y = np.array([[0], [1], [2], [0]], dtype=np.float64)
    layers = [
        MemoryDataLayer(name="data", batch_size=2, data=[x, y]),
        InnerProductLayer(name="ip", output_dim=3, bottoms=["data"], tops=["ip"]),
        SoftmaxLossLayer(name="loss", bottoms=["ip", "label"]),
    ]
    return Net(name, CPUBackend(dtype=np.float64), layers)


def make_solver(folder=None, statistics=None, load_from=None, max_iter=1):
    params = make_solver_parameters(SGD(), max_iter=max_iter, load_from=load_from)
    solver = Solver(SGD(), params, progress=False)
    if statistics is not None:
        solver.setup_coffee_lounge(save_into=statistics)
    if folder is not None:
        solver.add_coffee_break(Snapshot(folder), every_n_iter=1)
    return solver


@pytest.fixture
def holding_run(tmp_path):
    """Start HOLDING_RUN on tmp_path/held with its statistics file inside;
    return the process once it holds its locks."""
    script = tmp_path / "hold.py"
    script.write_text(HOLDING_RUN)
    held = tmp_path / "held"
    process = subprocess.Popen(
        [sys.executable, str(script), str(held), str(held / "statistics.h5")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert line == "holding\n", process.stderr.read()
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            stream.close()


def test_second_run_into_held_folder_fails(tmp_path, holding_run):
    held = tmp_path / "held"
    solver = make_solver(held)
    with pytest.raises(LockHeldError) as raised:
        solver.solve(make_net())
    message = str(raised.value)
    assert f"cannot write into Snapshot folder {held}" in message
    assert f"process {holding_run.pid} on host {socket.gethostname()}" in message
    assert "solve() of net 'holder'" in message
    assert "Wait until that training ends, or stop it" in message
    assert "give this run another Snapshot folder" in message
    # No break ran, so the holder's snapshot of iteration 0 is the only one.
    assert sorted(path.name for path in held.glob("snapshot-*")) == [
        "snapshot-000000.h5",
        "snapshot-000000.h5.sha256",
    ]


def test_second_run_into_held_statistics_fails(tmp_path, holding_run):
    held = tmp_path / "held"
    solver = make_solver(tmp_path / "other", statistics=held / "statistics.h5")
    with pytest.raises(LockHeldError) as raised:
        solver.solve(make_net())
    message = str(raised.value)
    assert f"cannot write the statistics file {held / 'statistics.h5'}" in message
    assert f"process {holding_run.pid}" in message
    assert "pass this run another save_into to setup_coffee_lounge" in message


def test_other_statistics_file_in_held_folder_runs(tmp_path, holding_run):
    """The lock of a statistics file is its own, not its folder's."""
    solver = make_solver(
        tmp_path / "other", statistics=tmp_path / "held" / "other-statistics.h5"
    )
    solver.solve(make_net())
    assert solver.state.iter == 1


def test_load_from_held_folder_warns(tmp_path, holding_run, caplog):
    """Reading needs no lock, but a resume from a folder that another
    training writes gets a warning."""
    held = tmp_path / "held"
    solver = make_solver(tmp_path / "other", load_from=str(held), max_iter=2)
    with caplog.at_level(logging.INFO, logger="mochac.runtime.solver"):
        solver.solve(make_net("holder"))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(
        "is the Snapshot folder of a running training" in message
        and f"process {holding_run.pid}" in message
        for message in warnings
    ), warnings
    assert solver.start_iter == 0
    assert solver.state.iter == 2


@pytest.mark.parametrize(
    "spelling", ["file link", "folder link", "dot-dot", "relative"]
)
def test_held_statistics_file_named_another_way(
    tmp_path, holding_run, monkeypatch, spelling
):
    """The lock of a statistics file belongs to the file that the path
    names after resolving links and relative paths."""
    held = tmp_path / "held"
    if spelling == "file link":
        statistics = tmp_path / "link.h5"
        statistics.symlink_to(held / "statistics.h5")
    elif spelling == "folder link":
        (tmp_path / "linked").symlink_to(held, target_is_directory=True)
        statistics = tmp_path / "linked" / "statistics.h5"
    elif spelling == "dot-dot":
        (tmp_path / "sub").mkdir()
        statistics = tmp_path / "sub" / ".." / "held" / "statistics.h5"
    else:
        monkeypatch.chdir(tmp_path)
        statistics = Path("held") / "statistics.h5"
    solver = make_solver(tmp_path / "other", statistics=statistics)
    with pytest.raises(LockHeldError) as raised:
        solver.solve(make_net())
    assert f"process {holding_run.pid}" in str(raised.value)
    assert solver.state.iter == 0


def test_held_snapshot_folder_named_another_way(tmp_path, holding_run):
    """A link to a held Snapshot folder reaches the lock file inside it."""
    (tmp_path / "linked").symlink_to(tmp_path / "held", target_is_directory=True)
    solver = make_solver(tmp_path / "linked")
    with pytest.raises(LockHeldError) as raised:
        solver.solve(make_net())
    assert f"process {holding_run.pid}" in str(raised.value)


def test_load_from_file_in_held_folder_warns(tmp_path, holding_run, caplog):
    """A load_from file in the Snapshot folder of another training gets a
    warning, since that training may save the file again."""
    snapshot = tmp_path / "held" / "snapshot-000000.h5"
    solver = make_solver(tmp_path / "other", load_from=str(snapshot), max_iter=2)
    solver.solve(make_net("holder"))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(
        f"load_from={str(snapshot)!r} is a file in the Snapshot folder of a "
        "running training"
        in message
        and f"process {holding_run.pid}" in message
        for message in warnings
    ), warnings
    assert solver.state.iter == 2


def test_load_from_file_in_own_folder_no_warning(tmp_path, caplog):
    folder = tmp_path / "snapshots"
    make_solver(folder).solve(make_net())
    solver = make_solver(
        folder, load_from=str(folder / "snapshot-000001.h5"), max_iter=2
    )
    solver.solve(make_net())
    assert solver.start_iter == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == []


def test_folder_free_after_holder_ends(tmp_path, holding_run):
    # The holder's breaks read an empty line from then on, and it ends.
    holding_run.stdin.close()
    assert holding_run.wait() == 0
    held = tmp_path / "held"
    solver = make_solver(held, statistics=held / "statistics.h5", load_from=str(held))
    solver.params["max_iter"] = 2
    solver.solve(make_net("holder"))
    assert solver.start_iter == 1
    assert solver.state.iter == 2


def test_folder_free_after_holder_killed(tmp_path, holding_run):
    """The kernel drops a flock with its process, so the lock file a killed
    run leaves behind locks nothing."""
    holding_run.send_signal(signal.SIGKILL)
    assert holding_run.wait() == -signal.SIGKILL
    held = tmp_path / "held"
    assert (held / SNAPSHOT_FOLDER_LOCK).exists()
    solver = make_solver(held, statistics=held / "statistics.h5")
    solver.solve(make_net())
    assert solver.state.iter == 1


class NestedSolve(CoffeeBreak):
    """Train another net into ``folder`` from a coffee break."""

    def __init__(self, folder):
        self.folder = folder
        self.error = None

    def enjoy(self, solver, net):
        inner = make_solver(self.folder)
        try:
            inner.solve(make_net("inner"))
        except LockHeldError as error:
            self.error = error


def test_nested_solve_into_same_folder_fails(tmp_path):
    folder = tmp_path / "snapshots"
    solver = make_solver(folder)
    nested = NestedSolve(folder)
    solver.add_coffee_break(nested, every_n_iter=1)
    solver.solve(make_net("outer"))
    assert solver.state.iter == 1
    message = str(nested.error)
    assert f"this process (pid {os.getpid()}" in message
    assert "solve() of net 'outer'" in message
    assert "A solve() that a coffee break starts cannot write where" in message


def test_nested_solve_into_other_folder_runs(tmp_path):
    solver = make_solver(tmp_path / "outer")
    nested = NestedSolve(tmp_path / "inner")
    solver.add_coffee_break(nested, every_n_iter=1)
    solver.solve(make_net("outer"))
    assert nested.error is None
    assert (tmp_path / "inner" / "snapshot-000001.h5").exists()


def test_unlockable_file_system_warns(tmp_path, monkeypatch, caplog):
    """Where flock fails (some network file systems), training goes on
    without the lock, with a warning."""

    def no_locks(descriptor, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(
        file_locks,
        "fcntl",
        SimpleNamespace(flock=no_locks, LOCK_EX=2, LOCK_NB=4, LOCK_SH=1),
    )
    folder = tmp_path / "snapshots"
    solver = make_solver(folder)
    solver.solve(make_net())
    assert solver.state.iter == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert f"{folder / SNAPSHOT_FOLDER_LOCK}: cannot lock" in warnings[0]
    assert "training without it" in warnings[0]


def test_no_fcntl_trains_unlocked(tmp_path, monkeypatch, caplog):
    """Windows has no fcntl: solve() takes no lock and logs that."""
    monkeypatch.setattr(file_locks, "fcntl", None)
    folder = tmp_path / "snapshots"
    solver = make_solver(folder)
    with caplog.at_level(logging.INFO, logger="mochac.file_locks"):
        solver.solve(make_net())
    assert solver.state.iter == 1
    assert "no fcntl on this platform, so this run takes no lock" in caplog.text
    assert not (folder / SNAPSHOT_FOLDER_LOCK).exists()


def fork_waiting_child() -> tuple[int, int]:
    """Fork a child that waits until the returned pipe end is closed, as a
    worker process started with fork does. Return its pid and that end once
    the child runs, which is after the fork handlers ran in it."""
    started_read, started_write = os.pipe()
    stop_read, stop_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(started_read)
        os.close(stop_write)
        os.write(started_write, b"x")
        os.read(stop_read, 1)
        os._exit(0)
    os.close(started_write)
    os.close(stop_read)
    assert os.read(started_read, 1) == b"x"
    os.close(started_read)
    return pid, stop_write


def stop_child(pid: int, stop_write: int) -> None:
    os.close(stop_write)
    os.waitpid(pid, 0)


class ForkChild(CoffeeBreak):
    """Fork a child process once, from the first break."""

    def __init__(self):
        self.child = None

    def enjoy(self, solver, net):
        if self.child is None:
            self.child = fork_waiting_child()


def test_forked_child_holds_no_training_lock(tmp_path):
    """A child that a coffee break forks shares the open lock files, and
    with them the flocks, until it closes them. It closes them at the
    fork, so the locks end with solve() even while the child runs."""
    folder = tmp_path / "snapshots"
    statistics = tmp_path / "statistics.h5"
    solver = make_solver(folder, statistics=statistics)
    forks = ForkChild()
    solver.add_coffee_break(forks, every_n_iter=1)
    solver.solve(make_net())
    try:
        assert file_locks.held_by(folder / SNAPSHOT_FOLDER_LOCK) == (False, None)
        second = make_solver(folder, statistics=statistics, max_iter=2)
        second.solve(make_net())
        assert second.state.iter == 2
    finally:
        stop_child(*forks.child)


def test_forked_child_holds_no_output_lock(tmp_path):
    with file_locks.output_folder_lock(tmp_path):
        child = fork_waiting_child()
    descriptor = os.open(tmp_path, os.O_RDONLY)
    try:
        taken = file_locks.try_exclusive_flock(descriptor, tmp_path, "")
    finally:
        os.close(descriptor)
        stop_child(*child)
    assert taken


def test_lock_file_mode_follows_umask(tmp_path):
    """A lock file is created like the snapshots beside it, 0o666 less the
    umask, so a group that shares the folder can open it for writing."""
    folder = tmp_path / "snapshots"
    previous = os.umask(0o002)
    try:
        make_solver(folder).solve(make_net())
    finally:
        os.umask(previous)
    mode = (folder / SNAPSHOT_FOLDER_LOCK).stat().st_mode & 0o777
    assert mode == 0o664


def test_lock_file_of_other_user_locks(tmp_path, monkeypatch):
    """A lock file that this user cannot open for writing (another user's
    run created it) is locked read-only, since flock needs no write access."""
    folder = tmp_path / "snapshots"
    lock_file = folder / SNAPSHOT_FOLDER_LOCK
    folder.mkdir()
    lock_file.write_text("")
    real_open = os.open

    def open_read_only(path, flags, *args, **kwargs):
        if Path(path) == lock_file and flags & (os.O_RDWR | os.O_WRONLY):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_read_only)
    solver = make_solver(folder)
    solver.add_coffee_break(NestedSolve(folder), every_n_iter=1)
    nested = solver.breaks[-1][0]
    solver.solve(make_net("outer"))
    assert solver.state.iter == 1
    assert isinstance(nested.error, LockHeldError)
