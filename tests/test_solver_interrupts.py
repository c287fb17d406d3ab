"""A solve() that Ctrl-C or an error stops, then continues or resumes.

A Ctrl-C within a training step waits for the step's end, and the coffee
breaks that a stop left unrun at its iteration run when training goes on,
in the same process or in a resume from a snapshot.
"""

import json
import logging
import os
import signal
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest

import mochac
from mochac import (
    SGD,
    AccuracyLayer,
    CPUBackend,
    InnerProductLayer,
    LRPolicy,
    MemoryDataLayer,
    Net,
    Neurons,
    Snapshot,
    SoftmaxLossLayer,
    Solver,
    TrainingSummary,
    make_solver_parameters,
)
from mochac.runtime.coffee_breaks import CoffeeBreak
from mochac.runtime.coffee_lounge import read_statistics
from mochac.runtime.net import Net as NetClass


def make_net(name="net", seed=2):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 5))
    y = rng.integers(0, 3, size=(12, 1)).astype(np.float64)
    layers = [
        MemoryDataLayer(batch_size=4, data=[x, y]),
        InnerProductLayer(
            name="ip1",
            output_dim=6,
            neuron=Neurons.ReLU(),
            bottoms=["data"],
            tops=["h"],
        ),
        InnerProductLayer(name="ip2", output_dim=3, bottoms=["h"], tops=["out"]),
        SoftmaxLossLayer(name="loss", bottoms=["out", "label"]),
        AccuracyLayer(name="acc", bottoms=["out", "label"]),
    ]
    return Net(name, CPUBackend(dtype=np.float64, seed=seed), layers)


def make_solver(max_iter, folder=None):
    params = make_solver_parameters(
        SGD(), max_iter=max_iter, lr_policy=LRPolicy.Fixed(0.05), momentum=0.9
    )
    if folder is not None:
        params["load_from"] = str(folder)
    return Solver(SGD(), params, progress=False)


class IterationLog(CoffeeBreak):
    def __init__(self):
        self.seen = []

    def enjoy(self, solver, net):
        self.seen.append(solver.state.iter)


class InterruptOnce(CoffeeBreak):
    """Raises KeyboardInterrupt at its first break at iteration ``at``."""

    def __init__(self, at):
        self.at = at
        self.fired = False

    def enjoy(self, solver, net):
        if solver.state.iter == self.at and not self.fired:
            self.fired = True
            raise KeyboardInterrupt


def assert_same_params(actual, expected):
    for layer, arrays in expected.params.items():
        for name, array in arrays.items():
            np.testing.assert_array_equal(actual.params[layer][name], array)


def test_breaks_after_stopped_break_run_on_continue():
    straight_net = make_net()
    straight = make_solver(6)
    before, after = IterationLog(), IterationLog()
    straight.add_coffee_break(before, every_n_iter=2)
    straight.add_coffee_break(after, every_n_iter=2)
    straight.solve(straight_net)

    net = make_net()
    solver = make_solver(6)
    first, last = IterationLog(), IterationLog()
    solver.add_coffee_break(first, every_n_iter=2)
    solver.add_coffee_break(InterruptOnce(at=4), every_n_iter=2)
    solver.add_coffee_break(last, every_n_iter=2)
    with pytest.raises(KeyboardInterrupt):
        solver.solve(net)
    assert last.seen == [0, 2]
    solver.solve(net)
    assert first.seen == [0, 2, 4, 6]
    assert last.seen == [0, 2, 4, 6]
    assert_same_params(net, straight_net)
    assert net.statistics() == pytest.approx(straight_net.statistics(), rel=1e-12)


def test_resume_runs_breaks_after_snapshot(tmp_path):
    """The snapshot at iteration 4 was saved before the stop, so a resume
    from it in a new solver runs the breaks that came after it."""
    straight_net = make_net()
    make_solver(6).solve(straight_net)

    solver = make_solver(6, tmp_path)
    solver.add_coffee_break(Snapshot(tmp_path), every_n_iter=2)
    solver.add_coffee_break(InterruptOnce(at=4), every_n_iter=2)
    solver.add_coffee_break(IterationLog(), every_n_iter=2)
    with pytest.raises(KeyboardInterrupt):
        solver.solve(make_net())
    with h5py.File(tmp_path / "snapshot-000004.h5", "r") as handle:
        assert json.loads(handle["solver"].attrs["pending_breaks"]) == [1, 2]

    resumed = make_net(seed=99)
    solver = make_solver(6, tmp_path)
    solver.add_coffee_break(Snapshot(tmp_path), every_n_iter=2)
    solver.add_coffee_break(IterationLog(), every_n_iter=2)
    log = IterationLog()
    solver.add_coffee_break(log, every_n_iter=2)
    solver.solve(resumed)
    assert log.seen == [4, 6]
    assert_same_params(resumed, straight_net)


def test_snapshot_of_finished_breaks_lists_none(tmp_path):
    solver = make_solver(2)
    solver.add_coffee_break(IterationLog(), every_n_iter=2)
    solver.add_coffee_break(Snapshot(tmp_path), every_n_iter=2)
    solver.solve(make_net())
    with h5py.File(tmp_path / "snapshot-000002.h5", "r") as handle:
        assert json.loads(handle["solver"].attrs["pending_breaks"]) == []


def test_resume_with_fewer_breaks_warns(tmp_path, caplog):
    solver = make_solver(4, tmp_path)
    solver.add_coffee_break(Snapshot(tmp_path), every_n_iter=2)
    solver.add_coffee_break(InterruptOnce(at=4), every_n_iter=2)
    with pytest.raises(KeyboardInterrupt):
        solver.solve(make_net())
    solver = make_solver(6, tmp_path)
    with caplog.at_level(logging.WARNING, logger="mochac.runtime.solver"):
        solver.solve(make_net())
    assert "lists 1 coffee breaks still to run at iteration 4" in caplog.text
    assert "this solver has []" in caplog.text
    assert "skips InterruptOnce(every_n_iter=2) (index 1)" in caplog.text


@pytest.mark.parametrize("value", ["[1, -2]", "[1.5]", "{}", "not json"])
def test_invalid_pending_breaks_attribute(tmp_path, value):
    solver = make_solver(2)
    solver.add_coffee_break(Snapshot(tmp_path), every_n_iter=2)
    solver.solve(make_net())
    path = tmp_path / "snapshot-000002.h5"
    with h5py.File(path, "r+") as handle:
        handle["solver"].attrs["pending_breaks"] = value
    (tmp_path / "snapshot-000002.h5.sha256").unlink()
    with pytest.raises(mochac.SnapshotError, match="'pending_breaks' has the invalid"):
        make_solver(4, tmp_path).solve(make_net())


@pytest.fixture
def default_sigint():
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("another SIGINT handler is installed")


def send_signal_once(monkeypatch, at_call, signum):
    """Make the ``at_call``-th call of Net._use_threads, which every step
    makes before its compiled code, send this process ``signum``."""
    calls = []
    real = NetClass._use_threads

    def use_threads(net):
        calls.append(None)
        if len(calls) == at_call:
            os.kill(os.getpid(), signum)
        return real(net)

    monkeypatch.setattr(NetClass, "_use_threads", use_threads)


def send_sigint_once(monkeypatch, at_call):
    send_signal_once(monkeypatch, at_call, signal.SIGINT)


def test_ctrl_c_in_step_waits_for_its_end(default_sigint, monkeypatch, caplog):
    straight_net = make_net()
    make_solver(6).solve(straight_net)

    net = make_net()
    solver = make_solver(6)
    log = IterationLog()
    solver.add_coffee_break(log, every_n_iter=1)
    # The first call is the forward pass before update 1, so the fourth is
    # the step of update 3.
    send_sigint_once(monkeypatch, at_call=4)
    with (
        caplog.at_level(logging.WARNING, logger="mochac.runtime.interrupts"),
        pytest.raises(KeyboardInterrupt),
    ):
        solver.solve(net)
    assert "training stops once this step is complete" in caplog.text
    assert solver.state.iter == 3
    assert log.seen == [0, 1, 2]
    monkeypatch.undo()
    solver.solve(net)
    assert log.seen == [0, 1, 2, 3, 4, 5, 6]
    assert_same_params(net, straight_net)
    assert net.statistics() == pytest.approx(straight_net.statistics(), rel=1e-12)


def test_solve_restores_sigint_handler(default_sigint):
    make_solver(2).solve(make_net())
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_in_break_stops_at_once(default_sigint):
    class SignalInBreak(CoffeeBreak):
        def __init__(self):
            self.finished = False

        def enjoy(self, solver, net):
            if solver.state.iter == 2:
                os.kill(os.getpid(), signal.SIGINT)
                # The handler raises before this line in a break.
                self.finished = True

    solver = make_solver(4)
    signalling = SignalInBreak()
    solver.add_coffee_break(signalling, every_n_iter=1)
    with pytest.raises(KeyboardInterrupt):
        solver.solve(make_net())
    assert solver.state.iter == 2
    assert not signalling.finished


def test_failed_pass_after_update_keeps_breaks():
    """A bad label in the batch after update 2 stops the solve with update 2
    applied. The breaks due at iteration 2 run when it goes on."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 5))
    y = rng.integers(0, 3, size=(12, 1)).astype(np.float64)
    bad = y.copy()
    bad[9, 0] = 7
    layers = [
        MemoryDataLayer(batch_size=4, data=[x, bad]),
        InnerProductLayer(name="ip", output_dim=3, bottoms=["data"], tops=["out"]),
        SoftmaxLossLayer(name="loss", bottoms=["out", "label"]),
    ]
    net = Net("labels", CPUBackend(dtype=np.float64, seed=2), layers)
    solver = make_solver(6)
    log = IterationLog()
    solver.add_coffee_break(log, every_n_iter=2)
    with pytest.raises(mochac.DataError):
        solver.solve(net)
    assert solver.state.iter == 2
    assert log.seen == [0]
    bad[9, 0] = y[9, 0]
    solver.solve(net)
    assert log.seen == [0, 2, 4, 6]


def test_stop_at_iteration_0_runs_only_unfinished_breaks():
    solver = make_solver(2)
    first, last = IterationLog(), IterationLog()
    solver.add_coffee_break(first, every_n_iter=2)
    solver.add_coffee_break(InterruptOnce(at=0), every_n_iter=2)
    solver.add_coffee_break(last, every_n_iter=2)
    net = make_net()
    with pytest.raises(KeyboardInterrupt):
        solver.solve(net)
    solver.solve(net)
    assert first.seen == [0, 2]
    assert last.seen == [0, 2]


def test_resume_from_iteration_0_skips_first_round(tmp_path, monkeypatch):
    """A run stopped after the breaks of iteration 0 and resumed from its
    snapshot of iteration 0 runs those breaks once in all, and writes that
    snapshot no third time, as the uninterrupted run does."""
    straight_net = make_net()
    make_solver(4).solve(straight_net)

    solver = make_solver(4, tmp_path)
    before, after = IterationLog(), IterationLog()
    solver.add_coffee_break(before, every_n_iter=4)
    solver.add_coffee_break(Snapshot(tmp_path), every_n_iter=4)
    solver.add_coffee_break(after, every_n_iter=4)
    solver.add_coffee_break(InterruptOnce(at=1), every_n_iter=1)
    with pytest.raises(KeyboardInterrupt):
        solver.solve(make_net())
    assert before.seen == [0]
    assert after.seen == [0]
    assert sorted(path.name for path in tmp_path.glob("snapshot-*.h5")) == [
        "snapshot-000000.h5"
    ]

    writes = count_snapshot_writes(monkeypatch)
    resumed = make_net(seed=99)
    solver = make_solver(4, tmp_path)
    before, after = IterationLog(), IterationLog()
    solver.add_coffee_break(before, every_n_iter=4)
    solver.add_coffee_break(Snapshot(tmp_path), every_n_iter=4)
    solver.add_coffee_break(after, every_n_iter=4)
    solver.solve(resumed)
    assert solver.start_iter == 0
    assert before.seen == [4]
    assert after.seen == [4]
    assert writes["snapshot-000000.h5"] == 0
    assert_same_params(resumed, straight_net)


def remove_break_record(path):
    """Make ``path`` a snapshot as older mochac versions wrote it, without
    the pending_breaks and coffee_breaks attributes. Its digest sidecar
    would no longer match, so it goes too."""
    with h5py.File(path, "r+") as handle:
        del handle["solver"].attrs["pending_breaks"]
        del handle["solver"].attrs["coffee_breaks"]
    Path(f"{path}.sha256").unlink()


def add_logs_around_snapshot(solver, folder, every_n_iter, stop_at=None):
    """Add an IterationLog, Snapshot(folder), InterruptOnce(at=stop_at) when
    ``stop_at`` is given, and another IterationLog, in that order; return
    the two logs."""
    before, after = IterationLog(), IterationLog()
    solver.add_coffee_break(before, every_n_iter=every_n_iter)
    solver.add_coffee_break(Snapshot(folder), every_n_iter=every_n_iter)
    if stop_at is not None:
        solver.add_coffee_break(InterruptOnce(at=stop_at), every_n_iter=every_n_iter)
    solver.add_coffee_break(after, every_n_iter=every_n_iter)
    return before, after


@pytest.mark.parametrize("stop_at", [0, 4])
def test_old_snapshot_runs_breaks_after_writer(tmp_path, caplog, stop_at):
    """Snapshots of older versions do not record which coffee breaks were
    still due (no pending_breaks attribute). A resume from one runs the
    breaks due after the Snapshot break that wrote it, since the file may
    have been saved before they ran, and not the breaks before it."""
    straight_net = make_net()
    make_solver(6).solve(straight_net)

    solver = make_solver(6, tmp_path)
    before, after = add_logs_around_snapshot(solver, tmp_path, 2, stop_at)
    with pytest.raises(KeyboardInterrupt):
        solver.solve(make_net())
    assert before.seen == [0, 2, 4][: stop_at // 2 + 1]
    assert after.seen == [0, 2, 4][: stop_at // 2]
    path = tmp_path / f"snapshot-{stop_at:06d}.h5"
    remove_break_record(path)

    solver = make_solver(6, tmp_path)
    before, after = add_logs_around_snapshot(solver, tmp_path, 2)
    resumed = make_net(seed=99)
    with caplog.at_level(logging.INFO, logger="mochac.runtime.solver"):
        solver.solve(resumed)
    assert solver.start_iter == stop_at
    assert before.seen == [2, 4, 6][stop_at // 2 :]
    assert after.seen == [0, 2, 4, 6][stop_at // 2 :]
    assert f"{path} does not record which coffee breaks" in caplog.text
    assert (
        f"it was written by Snapshot({tmp_path.name!r}, every_n_iter=2) (index 1), "
        "so the coffee breaks due after it run: IterationLog(every_n_iter=2) "
        "(index 2)"
    ) in caplog.text
    assert_same_params(resumed, straight_net)
    # Saved again once the break after the Snapshot break had run.
    with h5py.File(path, "r") as handle:
        assert json.loads(handle["solver"].attrs["pending_breaks"]) == []


def test_old_snapshot_elsewhere_runs_all_breaks(tmp_path, caplog):
    """No Snapshot break of the resumed solver writes the file, so which
    breaks ran before the save is unknown, and all breaks of its iteration
    run. The file stays as it is."""
    solver = make_solver(6, tmp_path)
    add_logs_around_snapshot(solver, tmp_path, 2, stop_at=4)
    with pytest.raises(KeyboardInterrupt):
        solver.solve(make_net())
    path = tmp_path / "snapshot-000004.h5"
    remove_break_record(path)

    solver = make_solver(6, tmp_path)
    before, after = add_logs_around_snapshot(solver, tmp_path / "other", 2)
    with caplog.at_level(logging.INFO, logger="mochac.runtime.solver"):
        solver.solve(make_net(seed=99))
    assert before.seen == [4, 6]
    assert after.seen == [4, 6]
    assert "no Snapshot coffee break of this solver due at that iteration" in (
        caplog.text
    )
    with h5py.File(path, "r") as handle:
        assert "pending_breaks" not in handle["solver"].attrs


@pytest.mark.parametrize(
    ("stop_at", "seen_before_stop", "seen_after_resume"),
    [(3, [], [3, 6]), (4, [3], [6])],
)
def test_old_snapshot_runs_due_epoch_breaks(
    tmp_path, stop_at, seen_before_stop, seen_after_resume
):
    """An every_n_epoch break after the Snapshot break is due again only
    when the batch before the snapshot ended an epoch. The 12 samples in
    batches of 4 end an epoch at iterations 3 and 6."""
    solver = make_solver(6, tmp_path)
    solver.add_coffee_break(Snapshot(tmp_path), every_n_iter=1)
    solver.add_coffee_break(InterruptOnce(at=stop_at), every_n_iter=1)
    epochs = IterationLog()
    solver.add_coffee_break(epochs, every_n_epoch=1)
    with pytest.raises(KeyboardInterrupt):
        solver.solve(make_net())
    assert epochs.seen == seen_before_stop
    remove_break_record(tmp_path / f"snapshot-{stop_at:06d}.h5")

    solver = make_solver(6, tmp_path)
    solver.add_coffee_break(Snapshot(tmp_path), every_n_iter=1)
    epochs = IterationLog()
    solver.add_coffee_break(epochs, every_n_epoch=1)
    solver.solve(make_net(seed=99))
    assert solver.start_iter == stop_at
    assert epochs.seen == seen_after_resume


def test_snapshots_list_no_finished_breaks(tmp_path, caplog):
    """Each snapshot was saved before the break after it ran. Once that
    break has finished, the solver saves the snapshot again without it, so
    a resume does not run the break twice."""
    solver = make_solver(4)
    solver.add_coffee_break(Snapshot(tmp_path), every_n_iter=2)
    log = IterationLog()
    solver.add_coffee_break(log, every_n_iter=2)
    net = make_net()
    solver.solve(net)
    with h5py.File(tmp_path / "snapshot-000002.h5", "r") as handle:
        assert json.loads(handle["solver"].attrs["pending_breaks"]) == []
    with h5py.File(tmp_path / "snapshot-000004.h5", "r") as handle:
        assert json.loads(handle["solver"].attrs["pending_breaks"]) == []
    resumed = make_net(seed=99)
    with caplog.at_level(logging.WARNING, logger="mochac.runtime.solver"):
        make_solver(6, tmp_path).solve(resumed)
    assert "still to run" not in caplog.text
    straight = make_net()
    make_solver(6).solve(straight)
    assert_same_params(resumed, straight)


def test_ctrl_c_in_snapshot_write_finishes_file(default_sigint, monkeypatch, tmp_path):
    """A Ctrl-C inside HDF5's writes of a snapshot waits until the file is
    written, then stops the solve."""
    from mochac import durable_files

    real_write = durable_files.WriteGuard.write
    sent = []

    def write(self, data):
        if not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGINT)
        return real_write(self, data)

    solver = make_solver(4)
    solver.add_coffee_break(Snapshot(tmp_path), every_n_iter=2)
    log = IterationLog()
    solver.add_coffee_break(log, every_n_iter=2)
    monkeypatch.setattr(durable_files.WriteGuard, "write", write)
    net = make_net()
    with pytest.raises(KeyboardInterrupt):
        solver.solve(net)
    monkeypatch.undo()
    assert solver.state.iter == 0
    assert log.seen == []
    mochac.load_snapshot(make_net(seed=99), tmp_path / "snapshot-000000.h5")
    solver.solve(net)
    assert log.seen == [0, 2, 4]


def test_breaks_pending_at_max_iter_run(tmp_path):
    solver = make_solver(4)
    first, last = IterationLog(), IterationLog()
    solver.add_coffee_break(first, every_n_iter=2)
    solver.add_coffee_break(InterruptOnce(at=4), every_n_iter=2)
    solver.add_coffee_break(last, every_n_iter=2)
    net = make_net()
    with pytest.raises(KeyboardInterrupt):
        solver.solve(net)
    assert solver.state.iter == 4
    solver.solve(net)
    assert first.seen == [0, 2, 4]
    assert last.seen == [0, 2, 4]


class StopAfterListeners(CoffeeBreak):
    """Calls the validation listeners with scripted values, then raises
    KeyboardInterrupt once at iteration ``at``, as a Ctrl-C right after the
    decision would."""

    def __init__(self, key, values, at):
        self.key = key
        self.values = dict(values)
        self.at = at
        self.fired = False
        self.listeners = []

    def enjoy(self, solver, net):
        stats = {self.key: self.values[solver.state.iter]}
        for listener in self.listeners:
            listener(solver, stats)
        if solver.state.iter == self.at and not self.fired:
            self.fired = True
            raise KeyboardInterrupt


def test_decay_decision_not_repeated_after_stop(tmp_path):
    """The validation at iteration 4 decays the rate, then the solve stops
    before its break ends. Running it again must not decay twice."""
    policy = LRPolicy.DecayOnValidation(0.4, "loss", 0.5, higher_better=False)
    params = make_solver_parameters(
        SGD(), max_iter=6, lr_policy=policy, mom_policy=mochac.MomPolicy.Fixed(0.9)
    )
    solver = Solver(SGD(), params, progress=False)
    solver.add_coffee_break(Snapshot(tmp_path), every_n_iter=2)
    validation = StopAfterListeners("loss", {0: 0.5, 2: 0.4, 4: 0.6, 6: 0.3}, at=4)
    solver.add_coffee_break(validation, every_n_iter=2)
    mochac.setup(policy, validation, solver)
    net = make_net()
    with pytest.raises(KeyboardInterrupt):
        solver.solve(net)
    assert policy.learning_rate == pytest.approx(0.2)
    solver.solve(net)
    assert policy.learning_rate == pytest.approx(0.2)


def count_snapshot_writes(monkeypatch) -> Counter:
    """Count the snapshot files the solver writes, by file name."""
    from mochac.runtime import solver as solver_module

    real_save = solver_module.save_snapshot
    writes = Counter()

    def counting_save(path, *args, **kwargs):
        writes[Path(path).name] += 1
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr(solver_module, "save_snapshot", counting_save)
    return writes


def train_with_decay(load_from, folder, max_iter, stop_at=-1):
    """Return a solver with Snapshot, a scripted validation that
    LRPolicy.DecayOnValidation follows, and IterationLog every 2 iterations,
    in that order, and the policy. The validation's loss is best at 2,
    worse at 4 (a decay and a reload of snapshot-000002.h5) and best again
    at 6. It raises KeyboardInterrupt after its decision at ``stop_at``."""
    policy = LRPolicy.DecayOnValidation(0.4, "loss", 0.5, higher_better=False)
    params = make_solver_parameters(
        SGD(),
        max_iter=max_iter,
        lr_policy=policy,
        mom_policy=mochac.MomPolicy.Fixed(0.9),
    )
    params["load_from"] = str(load_from)
    solver = Solver(SGD(), params, progress=False)
    solver.add_coffee_break(Snapshot(folder), every_n_iter=2)
    losses = {0: 0.5, 2: 0.4, 4: 0.6, 6: 0.3}
    validation = StopAfterListeners("loss", losses, at=stop_at)
    solver.add_coffee_break(validation, every_n_iter=2)
    solver.add_coffee_break(IterationLog(), every_n_iter=2)
    mochac.setup(policy, validation, solver)
    return solver, policy


def test_snapshot_in_place_during_later_breaks(tmp_path, monkeypatch):
    """The Snapshot break's file is complete before the breaks after it run,
    so a kill during them leaves a snapshot of the iteration. Once they
    finish, the file is written once more without them."""
    listed = []

    class ReadSnapshot(CoffeeBreak):
        def enjoy(self, solver, net):
            path = tmp_path / f"snapshot-{solver.state.iter:06d}.h5"
            with mochac.runtime.snapshot.open_model(path) as handle:
                listed.append(json.loads(handle["solver"].attrs["pending_breaks"]))

    writes = count_snapshot_writes(monkeypatch)
    solver = make_solver(2)
    solver.add_coffee_break(Snapshot(tmp_path), every_n_iter=2)
    solver.add_coffee_break(ReadSnapshot(), every_n_iter=2)
    solver.solve(make_net())

    assert listed == [[1], [1]]
    assert writes == {"snapshot-000000.h5": 2, "snapshot-000002.h5": 2}
    with h5py.File(tmp_path / "snapshot-000002.h5", "r") as handle:
        assert json.loads(handle["solver"].attrs["pending_breaks"]) == []


def test_last_snapshot_break_writes_once(tmp_path, monkeypatch):
    writes = count_snapshot_writes(monkeypatch)
    solver = make_solver(2)
    solver.add_coffee_break(IterationLog(), every_n_iter=2)
    solver.add_coffee_break(Snapshot(tmp_path), every_n_iter=2)
    solver.solve(make_net())
    assert writes == {"snapshot-000000.h5": 1, "snapshot-000002.h5": 1}


def test_validation_decision_adds_no_snapshot_write(tmp_path, monkeypatch):
    """DecayOnValidation leaves each snapshot to the solver's save after the
    IterationLog break, so each file is written twice, not three times, and
    still contains the decision."""
    writes = count_snapshot_writes(monkeypatch)
    solver, policy = train_with_decay(tmp_path, tmp_path, 6)
    net = make_net()
    solver.solve(net)
    monkeypatch.undo()

    assert policy.learning_rate == pytest.approx(0.2)
    assert writes == {f"snapshot-{i:06d}.h5": 2 for i in (0, 2, 4, 6)}
    path = tmp_path / "snapshot-000004.h5"
    with h5py.File(path, "r") as handle:
        attrs = handle["solver"].attrs
        assert json.loads(attrs["pending_breaks"]) == []
        assert attrs["learning_rate"] == pytest.approx(0.2)
        assert attrs["decay_on_validation_best_iter"] == 2

    resumed, resumed_policy = train_with_decay(path, tmp_path / "resumed", 6)
    resumed_net = make_net(seed=99)
    resumed.solve(resumed_net)
    assert resumed_policy.learning_rate == pytest.approx(0.2)
    assert_same_params(resumed_net, net)


def test_resume_after_stop_in_decision_decays_once(tmp_path):
    """A Ctrl-C right after the decay at iteration 4, with a break still due
    after the validation: a resume from snapshot-000004.h5 decays the rate
    once, as a second solve() in the same process does."""
    whole, whole_policy = train_with_decay(tmp_path / "whole", tmp_path / "whole", 6)
    whole_net = make_net()
    whole.solve(whole_net)

    folder = tmp_path / "parts"
    first, _ = train_with_decay(folder, folder, 6, stop_at=4)
    with pytest.raises(KeyboardInterrupt):
        first.solve(make_net())
    resumed, policy = train_with_decay(folder, folder, 6)
    net = make_net(seed=99)
    resumed.solve(net)

    assert whole_policy.learning_rate == pytest.approx(0.2)
    assert policy.learning_rate == pytest.approx(0.2)
    assert_same_params(net, whole_net)


class OrderLog(CoffeeBreak):
    """Appends (class name, iteration) to a list that several breaks share."""

    def __init__(self, calls):
        self.calls = calls

    def enjoy(self, solver, net):
        self.calls.append((type(self).__name__, solver.state.iter))


class SummaryLog(OrderLog):
    pass


class ValidationLog(OrderLog):
    pass


def stop_after_snapshot_at_4(folder, *extra_breaks):
    """Train with Snapshot, InterruptOnce(at=4) and ``extra_breaks``, every 2
    iterations in that order, until the Ctrl-C after snapshot-000004.h5."""
    solver = make_solver(6, folder)
    solver.add_coffee_break(Snapshot(folder), every_n_iter=2)
    solver.add_coffee_break(InterruptOnce(at=4), every_n_iter=2)
    for coffee_break in extra_breaks:
        solver.add_coffee_break(coffee_break, every_n_iter=2)
    with pytest.raises(KeyboardInterrupt):
        solver.solve(make_net())
    return folder / "snapshot-000004.h5"


def test_snapshot_describes_coffee_breaks(tmp_path):
    path = stop_after_snapshot_at_4(tmp_path, SummaryLog([]))
    with h5py.File(path, "r") as handle:
        saved = json.loads(handle["solver"].attrs["coffee_breaks"])
    assert saved == [
        f"Snapshot({tmp_path.name!r}, every_n_iter=2)",
        "InterruptOnce(every_n_iter=2)",
        "SummaryLog(every_n_iter=2)",
    ]


def test_resume_with_reordered_breaks(tmp_path, caplog):
    """The resumed solver adds the same breaks in another order, so the
    breaks still due run where they are now, in the saved order."""
    stop_after_snapshot_at_4(tmp_path, SummaryLog([]), ValidationLog([]))

    calls = []
    solver = make_solver(6, tmp_path)
    solver.add_coffee_break(Snapshot(tmp_path), every_n_iter=2)
    solver.add_coffee_break(ValidationLog(calls), every_n_iter=2)
    solver.add_coffee_break(SummaryLog(calls), every_n_iter=2)
    solver.add_coffee_break(InterruptOnce(at=-1), every_n_iter=2)
    resumed = make_net(seed=99)
    with caplog.at_level(logging.WARNING, logger="mochac.runtime.solver"):
        solver.solve(resumed)

    assert calls == [
        ("SummaryLog", 4),
        ("ValidationLog", 4),
        ("ValidationLog", 6),
        ("SummaryLog", 6),
    ]
    assert "lists 3 coffee breaks still to run at iteration 4" in caplog.text
    snapshot = f"Snapshot({tmp_path.name!r}, every_n_iter=2)"
    assert (
        f"saved with the coffee breaks [{snapshot}, "
        "InterruptOnce(every_n_iter=2), SummaryLog(every_n_iter=2), "
        "ValidationLog(every_n_iter=2)]" in caplog.text
    )
    assert (
        f"this solver has [{snapshot}, ValidationLog(every_n_iter=2), "
        "SummaryLog(every_n_iter=2), InterruptOnce(every_n_iter=2)]" in caplog.text
    )
    assert "SummaryLog(every_n_iter=2) (index 2, now 2)" in caplog.text
    assert "ValidationLog(every_n_iter=2) (index 3, now 1)" in caplog.text

    straight = make_net()
    make_solver(6).solve(straight)
    assert_same_params(resumed, straight)


def test_resume_with_other_breaks_skips_missing(tmp_path, caplog):
    """A break still due that the resumed solver lacks is skipped, and the
    break now at its index does not run in its place."""
    stop_after_snapshot_at_4(tmp_path, SummaryLog([]))
    calls = []
    solver = make_solver(6, tmp_path)
    solver.add_coffee_break(Snapshot(tmp_path), every_n_iter=2)
    solver.add_coffee_break(ValidationLog(calls), every_n_iter=2)
    solver.add_coffee_break(SummaryLog(calls), every_n_iter=2)
    with caplog.at_level(logging.WARNING, logger="mochac.runtime.solver"):
        solver.solve(make_net(seed=99))
    assert calls == [("SummaryLog", 4), ("ValidationLog", 6), ("SummaryLog", 6)]
    assert "skips InterruptOnce(every_n_iter=2) (index 1)" in caplog.text


def test_resume_without_break_descriptions(tmp_path, caplog):
    """Snapshots of older versions have no coffee_breaks attribute: the
    breaks still due run by index, without a warning."""
    path = stop_after_snapshot_at_4(tmp_path, SummaryLog([]))
    with h5py.File(path, "r+") as handle:
        del handle["solver"].attrs["coffee_breaks"]
    (tmp_path / "snapshot-000004.h5.sha256").unlink()
    calls = []
    solver = make_solver(6, tmp_path)
    solver.add_coffee_break(Snapshot(tmp_path), every_n_iter=2)
    solver.add_coffee_break(ValidationLog(calls), every_n_iter=2)
    solver.add_coffee_break(SummaryLog(calls), every_n_iter=2)
    with caplog.at_level(logging.WARNING):
        solver.solve(make_net(seed=99))
    assert calls[:2] == [("ValidationLog", 4), ("SummaryLog", 4)]
    # An earlier test may have set mochac's loggers to INFO (log_to_console).
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_old_snapshot_with_fewer_breaks_warns(tmp_path, caplog):
    path = stop_after_snapshot_at_4(tmp_path)
    with h5py.File(path, "r+") as handle:
        del handle["solver"].attrs["coffee_breaks"]
    (tmp_path / "snapshot-000004.h5.sha256").unlink()
    with caplog.at_level(logging.WARNING, logger="mochac.runtime.solver"):
        make_solver(6, tmp_path).solve(make_net())
    assert "lists 1 coffee breaks still to run at iteration 4" in caplog.text
    assert "this solver has only 0" in caplog.text


@pytest.mark.parametrize(
    "value", ['["Snapshot(every_n_iter=2)", 3]', '"Snapshot"', "{}", "not json"]
)
def test_invalid_coffee_breaks_attribute(tmp_path, value):
    path = stop_after_snapshot_at_4(tmp_path)
    with h5py.File(path, "r+") as handle:
        handle["solver"].attrs["coffee_breaks"] = value
    (tmp_path / "snapshot-000004.h5.sha256").unlink()
    with pytest.raises(mochac.SnapshotError, match="'coffee_breaks' has the invalid"):
        make_solver(6, tmp_path).solve(make_net())


def test_pending_break_beyond_descriptions(tmp_path):
    path = stop_after_snapshot_at_4(tmp_path)
    with h5py.File(path, "r+") as handle:
        handle["solver"].attrs["coffee_breaks"] = '["Snapshot(every_n_iter=2)"]'
    (tmp_path / "snapshot-000004.h5.sha256").unlink()
    with pytest.raises(mochac.SnapshotError, match="describes only 1"):
        make_solver(6, tmp_path).solve(make_net())


def test_stop_after_snapshot_keeps_lounge_values(tmp_path):
    """A Ctrl-C after the Snapshot break at iteration 4 stops the solve before
    the lounge's own save at 4. The statistics file must still have the
    value that TrainingSummary reported at 4 before the snapshot, because a
    resume from the snapshot does not run that break again."""
    straight = make_solver(6)
    straight.add_coffee_break(TrainingSummary(), every_n_iter=2)
    straight.solve(make_net())
    expected = straight.lounge.statistics["obj_val"]

    statistics = tmp_path / "statistics.h5"
    for stop_at in (4, -1):
        solver = make_solver(6, tmp_path)
        solver.setup_coffee_lounge(save_into=statistics, every_n_iter=2)
        solver.add_coffee_break(TrainingSummary(), every_n_iter=2)
        solver.add_coffee_break(Snapshot(tmp_path), every_n_iter=2)
        solver.add_coffee_break(InterruptOnce(at=stop_at), every_n_iter=2)
        if stop_at == 4:
            with pytest.raises(KeyboardInterrupt):
                solver.solve(make_net())
        else:
            solver.solve(make_net(seed=99))

    saved = read_statistics(statistics)["obj_val"]
    assert sorted(saved) == [0, 2, 4, 6]
    assert saved == pytest.approx(expected, rel=1e-12)


class TrainOnce(CoffeeBreak):
    """Runs ``inner.solve(net)`` at its break at iteration 2, on ``net`` or
    on the solver's own net when ``net`` is None."""

    def __init__(self, inner, net=None):
        self.inner = inner
        self.net = net

    def enjoy(self, solver, net):
        if solver.state.iter == 2:
            self.inner.solve(self.net if self.net is not None else net)


def test_nested_solve_holds_ctrl_c(default_sigint, monkeypatch, caplog):
    """A coffee break trains another net with another solver. A Ctrl-C in
    one of that solve's steps waits for the step's end, as in any solve."""
    inner = make_solver(4)
    inner_net = make_net("inner")
    outer = make_solver(4)
    outer.add_coffee_break(TrainOnce(inner, inner_net), every_n_iter=2)
    # Calls 1 to 3 are the outer net's first pass and updates 1 and 2. Call
    # 4 is the inner net's first pass, so call 5 is the step of its update 1.
    send_sigint_once(monkeypatch, at_call=5)
    with (
        caplog.at_level(logging.WARNING, logger="mochac.runtime.interrupts"),
        pytest.raises(KeyboardInterrupt),
    ):
        outer.solve(make_net())
    assert "net 'inner': Ctrl-C; training stops once this step" in caplog.text
    assert inner.state.iter == 1
    assert outer.state.iter == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_nested_solve_restores_outer_handler(default_sigint):
    """After a nested solve() returns, a Ctrl-C in the outer solve's steps
    still waits for the step's end."""
    seen = []

    class CheckHandler(CoffeeBreak):
        def enjoy(self, solver, net):
            seen.append(signal.getsignal(signal.SIGINT))

    outer = make_solver(4)
    outer.add_coffee_break(CheckHandler(), every_n_iter=2)
    outer.add_coffee_break(TrainOnce(make_solver(2), make_net("inner")), every_n_iter=2)
    outer.add_coffee_break(CheckHandler(), every_n_iter=2)
    outer.solve(make_net())
    assert len(seen) == 6
    assert all(handler == seen[0] for handler in seen)
    assert seen[0] is not signal.default_int_handler


def test_nested_solve_of_same_solver_raises():
    solver = make_solver(4)
    solver.add_coffee_break(TrainOnce(solver), every_n_iter=2)
    with pytest.raises(mochac.ConfigError, match="this solver's solve"):
        solver.solve(make_net())
    assert solver.state.iter == 2


def test_nested_solve_of_same_net_raises():
    solver = make_solver(4)
    solver.add_coffee_break(TrainOnce(make_solver(2)), every_n_iter=2)
    with pytest.raises(mochac.ConfigError, match="net 'net' is being trained"):
        solver.solve(make_net())
    assert solver.state.iter == 2


def shared_twins():
    """Return two nets on one backend whose 'ip1' layers share parameters."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 5))
    y = rng.integers(0, 3, size=(12, 1)).astype(np.float64)
    backend = CPUBackend(dtype=np.float64, seed=4)

    def layers(head):
        return [
            MemoryDataLayer(batch_size=4, data=[x, y]),
            InnerProductLayer(name="ip1", output_dim=6, bottoms=["data"], tops=["h"]),
            InnerProductLayer(name=head, output_dim=3, bottoms=["h"], tops=["out"]),
            SoftmaxLossLayer(name="loss", bottoms=["out", "label"]),
        ]

    return Net("main", backend, layers("ip2")), Net("side", backend, layers("side"))


@pytest.mark.parametrize("explicit", [False, True])
def test_nested_solve_of_sharing_net_recomputes_gradients(explicit):
    """A break trains a net sharing ip1 with the main one. The main solve's
    next update must use gradients of the new ip1: the result equals a run
    whose break calls recompute_gradients() itself."""

    def train(call_recompute):
        main, side = shared_twins()

        class TrainSide(CoffeeBreak):
            def enjoy(self, solver, net):
                make_solver(2).solve(side)
                if call_recompute:
                    solver.recompute_gradients()

        outer = make_solver(4)
        outer.add_coffee_break(TrainSide(), every_n_iter=2)
        outer.solve(main)
        return {
            f"{layer}.{name}": array.copy()
            for layer in ("ip1", "ip2")
            for name, array in main.params[layer].items()
        }

    reference = train(call_recompute=True)
    result = train(call_recompute=explicit)
    for key, values in reference.items():
        np.testing.assert_array_equal(result[key], values, err_msg=key)


class NamedLog(CoffeeBreak):
    """Records (name, iteration); its identity is its name."""

    def __init__(self, name, calls):
        self.name, self.calls = name, calls

    def identity(self):
        return self.name

    def enjoy(self, solver, net):
        self.calls.append((self.name, solver.state.iter))


def test_resume_tells_same_class_breaks_apart_by_identity(tmp_path):
    """Two breaks of one class and interval, swapped on resume: their
    identities match each pending break to the right one."""
    first = []
    solver = make_solver(6)
    solver.add_coffee_break(NamedLog("A", first), every_n_iter=2)
    solver.add_coffee_break(Snapshot(tmp_path), every_n_iter=2)
    solver.add_coffee_break(InterruptOnce(at=4), every_n_iter=2)
    solver.add_coffee_break(NamedLog("B", first), every_n_iter=2)
    with pytest.raises(KeyboardInterrupt):
        solver.solve(make_net())
    assert ("A", 4) in first
    assert ("B", 4) not in first

    calls = []
    resumed = make_solver(6, tmp_path)
    resumed.add_coffee_break(NamedLog("B", calls), every_n_iter=2)
    resumed.add_coffee_break(Snapshot(tmp_path), every_n_iter=2)
    resumed.add_coffee_break(InterruptOnce(at=-1), every_n_iter=2)
    resumed.add_coffee_break(NamedLog("A", calls), every_n_iter=2)
    resumed.solve(make_net(seed=99))
    assert calls == [("B", 4), ("B", 6), ("A", 6)]


@pytest.fixture
def own_sigint_handler(default_sigint):
    """Install a program's own SIGINT handler, which records each call with
    the iteration count at that time, and restore the default after the test."""
    calls = []
    solvers = []

    def handler(signum, frame):
        iteration = solvers[0].state.iter if solvers else None
        calls.append((signum, frame is not None, iteration))

    signal.signal(signal.SIGINT, handler)
    yield calls, solvers
    signal.signal(signal.SIGINT, signal.default_int_handler)


def warning_messages(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_own_handler_runs_after_step(own_sigint_handler, monkeypatch, caplog):
    calls, solvers = own_sigint_handler
    solver = make_solver(6)
    solvers.append(solver)
    # The fourth call is the step of update 3, which starts at iteration 2.
    send_sigint_once(monkeypatch, at_call=4)
    with caplog.at_level(logging.WARNING, logger="mochac.runtime.interrupts"):
        solver.solve(make_net())
    assert calls == [(signal.SIGINT, True, 3)]
    assert solver.state.iter == 6
    messages = warning_messages(caplog)
    assert len(messages) == 1
    assert "the program's SIGINT handler runs once this step" in messages[0]


def test_own_handler_error_after_step(default_sigint, monkeypatch):
    class StopTraining(Exception):
        pass

    def handler(signum, frame):
        raise StopTraining

    signal.signal(signal.SIGINT, handler)
    try:
        solver = make_solver(6)
        send_sigint_once(monkeypatch, at_call=4)
        with pytest.raises(StopTraining):
            solver.solve(make_net())
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    assert solver.state.iter == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def event_log(calls):
    """Return (events, note): note(event) appends (event, handler calls so
    far) to events. It is a Python call, at whose start Python runs pending
    handlers, so the count shows which signals reached them by then."""
    events = []

    def note(event):
        events.append((event, len(calls)))

    return events, note


def test_own_handler_second_ctrl_c(own_sigint_handler):
    """A second Ctrl-C within a step passes both on at once, in order."""
    from mochac.runtime.interrupts import StepInterrupts

    calls, _ = own_sigint_handler
    events, note = event_log(calls)

    with StepInterrupts("unit") as interrupts, interrupts.step():
        os.kill(os.getpid(), signal.SIGINT)
        note("first sent")
        os.kill(os.getpid(), signal.SIGINT)
        note("second sent")
    note("step done")
    assert events == [("first sent", 0), ("second sent", 2), ("step done", 2)]
    assert calls == [(signal.SIGINT, True, None), (signal.SIGINT, True, None)]


def test_own_handler_gets_ctrl_c_of_failed_step(own_sigint_handler):
    from mochac.runtime.interrupts import StepInterrupts

    calls, _ = own_sigint_handler
    with (
        pytest.raises(ValueError, match="step failed"),
        StepInterrupts("unit") as interrupts,
        interrupts.step(),
    ):
        os.kill(os.getpid(), signal.SIGINT)
        assert calls == []
        raise ValueError("step failed")
    assert calls == [(signal.SIGINT, True, None)]


def send_signal_at_step_end(monkeypatch, signum, at_call):
    """Make the ``at_call``-th call of Solver._epoch send this process
    ``signum``. A solve() calls it twice around its first pass and twice
    in each step, the second time after the update and before the step's
    bookkeeping."""
    from mochac.runtime.solver import Solver as SolverClass

    calls = []
    real = SolverClass._epoch

    def epoch(solver, net):
        calls.append(None)
        if len(calls) == at_call:
            os.kill(os.getpid(), signum)
        return real(solver, net)

    monkeypatch.setattr(SolverClass, "_epoch", epoch)


class Terminated(Exception):
    """Raised by the SIGTERM handler of ``exiting_sigterm_handler``."""


@pytest.fixture
def exiting_sigterm_handler():
    """Install a SIGTERM handler that records (signal number, the iteration
    count of the solver in ``solvers``) and raises Terminated, as a
    program that stops on SIGTERM does. The old handler is back after
    the test."""
    calls = []
    solvers = []

    def handler(signum, frame):
        calls.append((signum, solvers[0].state.iter if solvers else None))
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    yield calls, solvers, handler
    signal.signal(signal.SIGTERM, previous)


def test_sigterm_in_step_waits_for_its_end(exiting_sigterm_handler, monkeypatch):
    """SIGTERM after update 3, before its bookkeeping: the handler runs
    once the step is complete, so a second solve() runs the breaks of
    iteration 3 and ends as an uninterrupted run."""
    calls, solvers, handler = exiting_sigterm_handler
    straight_net = make_net()
    make_solver(6).solve(straight_net)

    net = make_net()
    solver = make_solver(6)
    solvers.append(solver)
    log = IterationLog()
    solver.add_coffee_break(log, every_n_iter=1)
    # Calls 1 and 2 are around the first pass, so call 8 is the second
    # one of the step of update 3.
    send_signal_at_step_end(monkeypatch, signal.SIGTERM, at_call=8)
    with pytest.raises(Terminated):
        solver.solve(net)
    monkeypatch.undo()
    assert calls == [(signal.SIGTERM, 3)]
    assert solver.state.iter == 3
    assert log.seen == [0, 1, 2]
    assert signal.getsignal(signal.SIGTERM) is handler

    solver.solve(net)
    assert log.seen == [0, 1, 2, 3, 4, 5, 6]
    assert_same_params(net, straight_net)
    assert net.statistics() == pytest.approx(straight_net.statistics(), rel=1e-12)


def test_resume_after_sigterm_in_step(exiting_sigterm_handler, monkeypatch, tmp_path):
    """A SIGTERM after update 3 stops the run at iteration 3, and a resume
    from snapshot-000002.h5 ends as an uninterrupted run."""
    calls, solvers, _ = exiting_sigterm_handler
    straight_net = make_net()
    make_solver(6).solve(straight_net)

    solver = make_solver(6, tmp_path)
    solvers.append(solver)
    solver.add_coffee_break(Snapshot(tmp_path), every_n_iter=2)
    send_signal_at_step_end(monkeypatch, signal.SIGTERM, at_call=8)
    with pytest.raises(Terminated):
        solver.solve(make_net())
    monkeypatch.undo()
    assert calls == [(signal.SIGTERM, 3)]
    assert solver.state.iter == 3

    resumed = make_net(seed=99)
    solver = make_solver(6, tmp_path)
    solver.add_coffee_break(Snapshot(tmp_path), every_n_iter=2)
    solver.solve(resumed)
    assert_same_params(resumed, straight_net)


def test_solve_holds_only_python_handlers():
    """During a solve() the solver's handler replaces each Python handler.
    A signal that is ignored or left to the C default stays so, and every
    handler is back after the solve."""

    def handler(signum, frame):
        pass

    before = {
        signal.SIGTERM: handler,
        signal.SIGUSR1: handler,
        signal.SIGUSR2: signal.SIG_IGN,
        signal.SIGALRM: signal.SIG_DFL,
    }
    seen = []

    class ReadHandlers(CoffeeBreak):
        def enjoy(self, solver, net):
            seen.append({signum: signal.getsignal(signum) for signum in before})

    previous = {
        signum: signal.signal(signum, value) for signum, value in before.items()
    }
    try:
        solver = make_solver(2)
        solver.add_coffee_break(ReadHandlers(), every_n_iter=2)
        solver.solve(make_net())
        after = {signum: signal.getsignal(signum) for signum in before}
    finally:
        for signum, value in previous.items():
            signal.signal(signum, value)
    assert len(seen) == 2
    assert seen[0][signal.SIGTERM] is not handler
    assert seen[0][signal.SIGUSR1] is not handler
    assert seen[0][signal.SIGUSR2] is signal.SIG_IGN
    assert seen[0][signal.SIGALRM] is signal.SIG_DFL
    assert after == before


def test_handler_installed_in_break_stays(default_sigint):
    """A handler that a coffee break installs stays after the solve, in
    place of the one from before it."""

    def handler(signum, frame):
        pass

    class InstallHandlers(CoffeeBreak):
        def enjoy(self, solver, net):
            signal.signal(signal.SIGINT, handler)
            signal.signal(signal.SIGTERM, handler)

    previous = signal.getsignal(signal.SIGTERM)
    try:
        solver = make_solver(2)
        solver.add_coffee_break(InstallHandlers(), every_n_iter=2)
        solver.solve(make_net())
        after = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, previous)
    assert after == (handler, handler)


def test_ignored_sigterm_in_step_ignored(monkeypatch):
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        solver = make_solver(4)
        send_signal_once(monkeypatch, at_call=3, signum=signal.SIGTERM)
        solver.solve(make_net())
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert solver.state.iter == 4


@pytest.fixture
def recording_handlers():
    """Install a handler of SIGTERM and SIGUSR1 that records each signal
    number it gets and whether it got a frame. The old handlers are back
    after the test."""
    calls = []

    def handler(signum, frame):
        calls.append((signum, frame is not None))

    previous = {
        signum: signal.signal(signum, handler)
        for signum in (signal.SIGTERM, signal.SIGUSR1)
    }
    yield calls
    for signum, value in previous.items():
        signal.signal(signum, value)


def test_signals_pass_on_after_step(recording_handlers):
    from mochac.runtime.interrupts import StepInterrupts

    calls = recording_handlers
    events, note = event_log(calls)

    with StepInterrupts("unit") as interrupts, interrupts.step():
        os.kill(os.getpid(), signal.SIGUSR1)
        note("SIGUSR1 sent")
        os.kill(os.getpid(), signal.SIGTERM)
        note("SIGTERM sent")
    note("step done")
    assert events == [("SIGUSR1 sent", 0), ("SIGTERM sent", 0), ("step done", 2)]
    assert calls == [(signal.SIGUSR1, True), (signal.SIGTERM, True)]


def test_second_sigterm_passes_all_on(recording_handlers):
    """A second SIGTERM within a step passes the held signals on at once,
    in order, as a second Ctrl-C does."""
    from mochac.runtime.interrupts import StepInterrupts

    calls = recording_handlers
    events, note = event_log(calls)

    with StepInterrupts("unit") as interrupts, interrupts.step():
        os.kill(os.getpid(), signal.SIGTERM)
        note("first sent")
        os.kill(os.getpid(), signal.SIGUSR1)
        note("SIGUSR1 sent")
        os.kill(os.getpid(), signal.SIGTERM)
        note("second sent")
    note("step done")
    assert events == [
        ("first sent", 0),
        ("SIGUSR1 sent", 0),
        ("second sent", 3),
        ("step done", 3),
    ]
    assert [signum for signum, _ in calls] == [
        signal.SIGTERM,
        signal.SIGUSR1,
        signal.SIGTERM,
    ]


def test_sigterm_of_failed_step_reaches_handler(exiting_sigterm_handler):
    """The handler gets the SIGTERM of a step that raised, and its error
    has the step's error as its context."""
    from mochac.runtime.interrupts import StepInterrupts

    calls, _, _ = exiting_sigterm_handler
    error = ValueError("step failed")
    with (
        pytest.raises(Terminated) as raised,
        StepInterrupts("unit") as interrupts,
        interrupts.step(),
    ):
        os.kill(os.getpid(), signal.SIGTERM)
        assert calls == []
        raise error
    assert calls == [(signal.SIGTERM, None)]
    assert raised.value.__context__ is error


def test_ctrl_c_and_sigterm_in_one_step(default_sigint, recording_handlers):
    """The KeyboardInterrupt of a held Ctrl-C does not cost the SIGTERM
    handler its call."""
    from mochac.runtime.interrupts import StepInterrupts

    calls = recording_handlers
    with (
        pytest.raises(KeyboardInterrupt),
        StepInterrupts("unit") as interrupts,
        interrupts.step(),
    ):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        assert calls == []
    assert calls == [(signal.SIGTERM, True)]


def test_step_in_other_thread_installs_nothing(recording_handlers):
    import threading

    from mochac.runtime.interrupts import StepInterrupts

    seen = []

    def run():
        with StepInterrupts("unit") as interrupts, interrupts.step():
            seen.append(signal.getsignal(signal.SIGTERM))

    handler = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == [handler]


class CountInLounge(CoffeeBreak):
    """Records in the lounge how many runs of it the lounge holds, so a run
    repeated at an iteration changes the series."""

    def enjoy(self, solver, net):
        series = solver.lounge.statistics.get("break-runs", {})
        solver.lounge.update(solver.state.iter, "break-runs", len(series) + 1)


def train_with_snapshots(folder, max_iter, stop_at=-1):
    """Train with Snapshot, IterationLog, CountInLounge and TrainingSummary
    every 2 iterations, in that order, and a Ctrl-C at the end of iteration
    ``stop_at``. Resume from ``folder`` and keep statistics in it. Return the
    IterationLog and the solver."""
    solver = make_solver(max_iter, folder)
    solver.setup_coffee_lounge(folder / "statistics.h5", every_n_iter=1)
    log = IterationLog()
    solver.add_coffee_break(Snapshot(folder), every_n_iter=2)
    solver.add_coffee_break(log, every_n_iter=2)
    solver.add_coffee_break(CountInLounge(), every_n_iter=2)
    solver.add_coffee_break(TrainingSummary(), every_n_iter=2)
    solver.add_coffee_break(InterruptOnce(at=stop_at), every_n_iter=1)
    solver.solve(make_net())
    return log, solver


@pytest.mark.parametrize("stop", ["max_iter", "ctrl-c"])
def test_resume_runs_finished_breaks_once(tmp_path, stop):
    """The first run ends at iteration 5, after every break at iteration 4
    finished, so the resume from snapshot-000004.h5 runs none of them again."""
    whole_log, whole = train_with_snapshots(tmp_path / "whole", 8)

    folder = tmp_path / "parts"
    if stop == "max_iter":
        first_log, _ = train_with_snapshots(folder, 5)
    else:
        with pytest.raises(KeyboardInterrupt):
            train_with_snapshots(folder, 8, stop_at=5)
        first_log = None
    resumed_log, resumed = train_with_snapshots(folder, 8)

    if first_log is not None:
        assert first_log.seen == [0, 2, 4]
    assert resumed_log.seen == [6, 8]
    assert whole_log.seen == [0, 2, 4, 6, 8]
    assert resumed.lounge.statistics == whole.lounge.statistics
    assert read_statistics(folder / "statistics.h5") == read_statistics(
        tmp_path / "whole" / "statistics.h5"
    )


def test_second_resume_skips_breaks_the_first_ran(tmp_path):
    """The first resume runs the breaks that snapshot-000004.h5 lists, then
    stops at iteration 5, so a second resume from that file runs none."""
    stop_after_snapshot_at_4(tmp_path, SummaryLog([]))
    calls = []
    solver = make_solver(5, tmp_path)
    solver.add_coffee_break(Snapshot(tmp_path), every_n_iter=2)
    solver.add_coffee_break(InterruptOnce(at=-1), every_n_iter=2)
    solver.add_coffee_break(SummaryLog(calls), every_n_iter=2)
    solver.solve(make_net(seed=99))
    assert calls == [("SummaryLog", 4)]
    with h5py.File(tmp_path / "snapshot-000004.h5", "r") as handle:
        assert json.loads(handle["solver"].attrs["pending_breaks"]) == []

    solver = make_solver(6, tmp_path)
    solver.add_coffee_break(Snapshot(tmp_path), every_n_iter=2)
    solver.add_coffee_break(InterruptOnce(at=-1), every_n_iter=2)
    solver.add_coffee_break(SummaryLog(calls), every_n_iter=2)
    solver.solve(make_net(seed=99))
    assert calls == [("SummaryLog", 4), ("SummaryLog", 6)]


def test_resume_leaves_file_outside_snapshot_folders(tmp_path):
    """load_from names a copy outside the Snapshot break's folder, so the
    resume runs the breaks it lists but does not write to it."""
    path = stop_after_snapshot_at_4(tmp_path / "run", SummaryLog([]))
    archive = tmp_path / "archive"
    archive.mkdir()
    for source in (path, path.with_name(path.name + ".sha256")):
        (archive / source.name).write_bytes(source.read_bytes())
    copy = archive / path.name
    before = copy.read_bytes()

    calls = []
    solver = make_solver(5, copy)
    solver.add_coffee_break(Snapshot(tmp_path / "new"), every_n_iter=2)
    solver.add_coffee_break(InterruptOnce(at=-1), every_n_iter=2)
    solver.add_coffee_break(SummaryLog(calls), every_n_iter=2)
    solver.solve(make_net(seed=99))
    assert calls == [("SummaryLog", 4)]
    assert copy.read_bytes() == before


def test_failed_second_save_warns_and_keeps_list(tmp_path, monkeypatch, caplog):
    from mochac.runtime import solver as solver_module

    real_save = solver_module.save_snapshot
    saved = []

    def save_once(path, *args, **kwargs):
        if path in saved:
            raise mochac.SnapshotError(f"cannot write {path}: disk full")
        saved.append(path)
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr(solver_module, "save_snapshot", save_once)
    solver = make_solver(1)
    solver.add_coffee_break(Snapshot(tmp_path), every_n_iter=2)
    solver.add_coffee_break(IterationLog(), every_n_iter=2)
    with caplog.at_level(logging.WARNING, logger="mochac.runtime.solver"):
        solver.solve(make_net())
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    path = tmp_path / "snapshot-000000.h5"
    assert len(warnings) == 1
    assert f"could not save {path} again" in warnings[0]
    assert "runs those breaks again" in warnings[0]
    with h5py.File(path, "r") as handle:
        assert json.loads(handle["solver"].attrs["pending_breaks"]) == [1]


class RaiseOnce(CoffeeBreak):
    """Records each iteration it runs at, and stops the run at its first
    break at iteration ``at``: with ValueError, or with ``ctrl_c`` by
    sending this process SIGINT."""

    def __init__(self, at, ctrl_c=False):
        self.at = at
        self.ctrl_c = ctrl_c
        self.fired = False
        self.seen = []

    def enjoy(self, solver, net):
        self.seen.append(solver.state.iter)
        if solver.state.iter != self.at or self.fired:
            return
        self.fired = True
        if self.ctrl_c:
            # Python's default handler raises KeyboardInterrupt right here.
            os.kill(os.getpid(), signal.SIGINT)
        raise ValueError("break failed")


def train_with_failing_break(folder, max_iter, failing):
    """Return a solver with Snapshot, IterationLog, CountInLounge,
    ``failing``, TrainingSummary and IterationLog every 2 iterations, in
    that order, which resumes from ``folder`` and keeps statistics in it,
    and the IterationLogs before and after ``failing``."""
    solver = make_solver(max_iter, folder)
    solver.setup_coffee_lounge(folder / "statistics.h5", every_n_iter=1)
    before, after = IterationLog(), IterationLog()
    solver.add_coffee_break(Snapshot(folder), every_n_iter=2)
    solver.add_coffee_break(before, every_n_iter=2)
    solver.add_coffee_break(CountInLounge(), every_n_iter=2)
    solver.add_coffee_break(failing, every_n_iter=2)
    solver.add_coffee_break(TrainingSummary(), every_n_iter=2)
    solver.add_coffee_break(after, every_n_iter=2)
    return solver, before, after


@pytest.mark.parametrize("stop", ["error", "ctrl-c"])
def test_resume_after_failed_break(default_sigint, tmp_path, stop):
    """A break after IterationLog and CountInLounge stops the run at
    iteration 4, after snapshot-000004.h5. The snapshot is saved again
    listing the failed break and those after it, so a resume in a new
    solver runs each break at 4 once over both runs."""
    whole, _, _ = train_with_failing_break(tmp_path / "whole", 8, RaiseOnce(at=-1))
    whole_net = make_net()
    whole.solve(whole_net)

    folder = tmp_path / "parts"
    ctrl_c = stop == "ctrl-c"
    first, _, _ = train_with_failing_break(folder, 8, RaiseOnce(at=4, ctrl_c=ctrl_c))
    with pytest.raises(KeyboardInterrupt if ctrl_c else ValueError):
        first.solve(make_net())
    with h5py.File(folder / "snapshot-000004.h5", "r") as handle:
        assert json.loads(handle["solver"].attrs["pending_breaks"]) == [3, 4, 5]

    failing = RaiseOnce(at=-1)
    resumed, before, after = train_with_failing_break(folder, 8, failing)
    net = make_net(seed=99)
    resumed.solve(net)
    assert before.seen == [6, 8]
    assert failing.seen == [4, 6, 8]
    assert after.seen == [4, 6, 8]
    assert resumed.lounge.statistics == whole.lounge.statistics
    assert read_statistics(folder / "statistics.h5") == read_statistics(
        tmp_path / "whole" / "statistics.h5"
    )
    assert_same_params(net, whole_net)


def test_retry_after_failed_break_reloads_list(tmp_path):
    """With load_from set, solve() called again after a break failed at
    iteration 4 resumes from snapshot-000004.h5, so the file must list the
    same breaks that this solver still has to run."""
    failing = RaiseOnce(at=4)
    solver, before, after = train_with_failing_break(tmp_path, 6, failing)
    net = make_net()
    with pytest.raises(ValueError, match="break failed"):
        solver.solve(net)
    solver.solve(net)
    assert before.seen == [0, 2, 4, 6]
    assert failing.seen == [0, 2, 4, 4, 6]
    assert after.seen == [0, 2, 4, 6]
    with h5py.File(tmp_path / "snapshot-000004.h5", "r") as handle:
        assert json.loads(handle["solver"].attrs["pending_breaks"]) == []


def test_failed_save_after_break_error(tmp_path, monkeypatch, caplog):
    """The save after a failed break fails too: it logs a warning, keeps the
    file as the Snapshot break wrote it, and the break's own error
    propagates."""
    from mochac.runtime import snapshot as snapshot_module

    def full_disk(path, fill):
        raise OSError(28, "No space left on device")

    error = ValueError("break failed")

    class FillDiskThenFail(CoffeeBreak):
        def enjoy(self, solver, net):
            monkeypatch.setattr(snapshot_module, "write_hdf5", full_disk)
            raise error

    solver = make_solver(2)
    solver.add_coffee_break(Snapshot(tmp_path), every_n_iter=2)
    solver.add_coffee_break(IterationLog(), every_n_iter=2)
    solver.add_coffee_break(FillDiskThenFail(), every_n_iter=2)
    with (
        caplog.at_level(logging.WARNING, logger="mochac.runtime.solver"),
        pytest.raises(ValueError) as raised,
    ):
        solver.solve(make_net())
    monkeypatch.undo()

    assert raised.value is error
    assert raised.value.__context__ is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    path = tmp_path / "snapshot-000000.h5"
    assert len(warnings) == 1
    assert f"could not save {path} again" in warnings[0]
    assert "No space left on device" in warnings[0]
    assert "runs again the breaks that finished" in warnings[0]
    names = sorted(os.listdir(tmp_path))
    assert names == [".mochac-solve.lock", path.name, path.name + ".sha256"]
    with mochac.runtime.snapshot.open_model(path) as handle:
        assert json.loads(handle["solver"].attrs["pending_breaks"]) == [1, 2]


class InterruptNextWrite(CoffeeBreak):
    """Makes the next snapshot write send this process ``signum`` (SIGINT by
    default); ``sent`` records that it did."""

    def __init__(self, monkeypatch, signum=signal.SIGINT):
        self.monkeypatch = monkeypatch
        self.signum = signum
        self.sent = []

    def enjoy(self, solver, net):
        from mochac import durable_files

        real_write = durable_files.WriteGuard.write
        sent = self.sent
        signum = self.signum

        def write(guard, data):
            if not sent:
                sent.append(1)
                os.kill(os.getpid(), signum)
            return real_write(guard, data)

        self.monkeypatch.setattr(durable_files.WriteGuard, "write", write)


class InterruptSaveThenFail(InterruptNextWrite):
    """Makes the next snapshot write send ``signum`` (SIGINT by default),
    then raises ``error``."""

    def __init__(self, monkeypatch, error, signum=signal.SIGINT):
        super().__init__(monkeypatch, signum)
        self.error = error

    def enjoy(self, solver, net):
        super().enjoy(solver, net)
        raise self.error


def test_ctrl_c_in_save_after_break_error(default_sigint, monkeypatch, tmp_path):
    """A Ctrl-C during the save after a failed break takes effect once the
    file is in place, and the break's error is the KeyboardInterrupt's
    context."""
    error = ValueError("break failed")
    failing = InterruptSaveThenFail(monkeypatch, error)

    solver = make_solver(2)
    solver.add_coffee_break(Snapshot(tmp_path), every_n_iter=2)
    solver.add_coffee_break(IterationLog(), every_n_iter=2)
    solver.add_coffee_break(failing, every_n_iter=2)
    with pytest.raises(KeyboardInterrupt) as raised:
        solver.solve(make_net())
    monkeypatch.undo()

    assert failing.sent == [1]
    assert raised.value.__context__ is error
    path = tmp_path / "snapshot-000000.h5"
    with mochac.runtime.snapshot.open_model(path) as handle:
        assert json.loads(handle["solver"].attrs["pending_breaks"]) == [2]


def test_ctrl_c_in_second_save_settles_all(default_sigint, monkeypatch, tmp_path):
    """A Ctrl-C during the second save of the first of two snapshots, once
    every break at iteration 0 finished, still leaves both listing no
    breaks."""
    interrupting = InterruptNextWrite(monkeypatch)

    solver = make_solver(2)
    solver.add_coffee_break(Snapshot(tmp_path / "a"), every_n_iter=2)
    solver.add_coffee_break(Snapshot(tmp_path / "b"), every_n_iter=2)
    solver.add_coffee_break(interrupting, every_n_iter=2)
    with pytest.raises(KeyboardInterrupt):
        solver.solve(make_net())
    monkeypatch.undo()

    assert interrupting.sent == [1]
    for folder in ("a", "b"):
        path = tmp_path / folder / "snapshot-000000.h5"
        with mochac.runtime.snapshot.open_model(path) as handle:
            assert json.loads(handle["solver"].attrs["pending_breaks"]) == []


def test_break_error_ctrl_c_saves_both(default_sigint, monkeypatch, tmp_path):
    """A Ctrl-C during the save of the first of two snapshots after a failed
    break waits until the second is saved too, so neither lists the
    IterationLog that finished before the failed break."""
    error = ValueError("break failed")
    failing = InterruptSaveThenFail(monkeypatch, error)

    solver = make_solver(2)
    solver.add_coffee_break(Snapshot(tmp_path / "a"), every_n_iter=2)
    solver.add_coffee_break(Snapshot(tmp_path / "b"), every_n_iter=2)
    solver.add_coffee_break(IterationLog(), every_n_iter=2)
    solver.add_coffee_break(failing, every_n_iter=2)
    with pytest.raises(KeyboardInterrupt) as raised:
        solver.solve(make_net())
    monkeypatch.undo()

    assert failing.sent == [1]
    assert raised.value.__context__ is error
    for folder in ("a", "b"):
        path = tmp_path / folder / "snapshot-000000.h5"
        with mochac.runtime.snapshot.open_model(path) as handle:
            assert json.loads(handle["solver"].attrs["pending_breaks"]) == [3], folder


def test_exit_on_ctrl_c_without_load_from(caplog):
    from mochac.runtime.ctrl_c import exit_on_ctrl_c

    solver = make_solver(6)
    solver.add_coffee_break(InterruptOnce(at=2), every_n_iter=1)
    with pytest.raises(SystemExit) as raised, exit_on_ctrl_c(solver):
        solver.solve(make_net("stopped"))
    assert raised.value.code == 130
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [
        (
            "net 'stopped': training stopped by Ctrl-C at iteration 2; the solver has "
            "no load_from, so a rerun starts from iteration 0"
        )
    ]


def test_exit_on_ctrl_c_after_solve_returned(tmp_path, caplog):
    """A Ctrl-C in the block after solve() returned (during a final
    evaluation, say) did not stop training, and the warning reports that."""
    from mochac.runtime.ctrl_c import exit_on_ctrl_c

    solver = make_solver(4, tmp_path)
    solver.add_coffee_break(Snapshot(tmp_path), every_n_iter=4)
    with pytest.raises(SystemExit) as raised, exit_on_ctrl_c(solver):
        solver.solve(make_net("finished"))
        raise KeyboardInterrupt
    assert raised.value.code == 130
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    newest = tmp_path / "snapshot-000004.h5"
    assert warnings == [
        (
            "net 'finished': Ctrl-C after training finished at iteration 4 "
            "(solve() had returned); running the same command again resumes from "
            f"{newest} (iteration 4)"
        )
    ]


def test_exit_on_ctrl_c_before_solve(caplog):
    from mochac.runtime.ctrl_c import exit_on_ctrl_c

    solver = make_solver(4)
    with pytest.raises(SystemExit) as raised, exit_on_ctrl_c(solver):
        raise KeyboardInterrupt
    assert raised.value.code == 130
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [
        (
            "Ctrl-C before solve() was called; the solver has no load_from, so a "
            "rerun starts from iteration 0"
        )
    ]


def test_exit_on_ctrl_c_without_solver(caplog):
    from mochac.runtime.ctrl_c import exit_on_ctrl_c

    with pytest.raises(SystemExit) as raised, exit_on_ctrl_c():
        raise KeyboardInterrupt
    assert raised.value.code == 130
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == ["stopped by Ctrl-C"]


def test_exit_on_ctrl_c_outer_keeps_inner_warning(caplog):
    """A script's exit_on_ctrl_c() around its main() adds no second warning
    to that of the exit_on_ctrl_c(solver) inside."""
    from mochac.runtime.ctrl_c import exit_on_ctrl_c

    solver = make_solver(4)
    with pytest.raises(SystemExit) as raised, exit_on_ctrl_c(), exit_on_ctrl_c(solver):
        raise KeyboardInterrupt
    assert raised.value.code == 130
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [
        (
            "Ctrl-C before solve() was called; the solver has no load_from, so a "
            "rerun starts from iteration 0"
        )
    ]


def test_exit_on_ctrl_c_in_second_solve(caplog):
    """A solve() that returned, then a second one that Ctrl-C stopped."""
    from mochac.runtime.ctrl_c import exit_on_ctrl_c

    solver = make_solver(2)
    net = make_net("twice")
    solver.add_coffee_break(InterruptOnce(at=3), every_n_iter=1)
    with pytest.raises(SystemExit), exit_on_ctrl_c(solver):
        solver.solve(net)
        solver.params["max_iter"] = 4
        solver.solve(net)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [
        (
            "net 'twice': training stopped by Ctrl-C at iteration 3; the solver has "
            "no load_from, so a rerun starts from iteration 0"
        )
    ]


def test_rerun_resume_point_descriptions(tmp_path):
    from mochac.runtime.ctrl_c import resume_point_of_rerun

    folder = tmp_path / "snapshots"
    folder.mkdir()
    assert resume_point_of_rerun(str(folder)) == (
        f"{folder} contains no snapshot yet, so a rerun starts from scratch"
    )
    assert resume_point_of_rerun(str(tmp_path / "new")) == (
        f"{tmp_path / 'new'} contains no snapshot yet, so a rerun starts from scratch"
    )
    for iteration in (2, 10):
        (folder / f"snapshot-{iteration:06d}.h5").write_bytes(b"")
    newest = folder / "snapshot-000010.h5"
    assert resume_point_of_rerun(str(folder)) == (
        f"running the same command again resumes from {newest} (iteration 10)"
    )
    assert resume_point_of_rerun(str(newest)) == (
        f"a rerun starts from {newest} again, because load_from names that file"
    )
    missing = tmp_path / "model.h5"
    assert resume_point_of_rerun(str(missing)) == (
        f"a rerun fails, because load_from names the missing file {missing}"
    )


@pytest.fixture
def restore_sigusr1():
    previous = signal.getsignal(signal.SIGUSR1)
    yield
    signal.signal(signal.SIGUSR1, previous)


class CopySigintHandler(CoffeeBreak):
    """Gives SIGUSR1 the SIGINT handler in place, at its first run."""

    def enjoy(self, solver, net):
        if solver.state.iter == 0:
            signal.signal(signal.SIGUSR1, signal.getsignal(signal.SIGINT))


def test_copied_sigint_handler_waits_for_step(
    default_sigint, restore_sigusr1, monkeypatch
):
    """A coffee break copies the solver's SIGINT handler to SIGUSR1. A
    SIGUSR1 in a step then acts as a Ctrl-C: it waits for the step's end
    and raises KeyboardInterrupt, during the solve and after it."""
    solver = make_solver(6)
    log = IterationLog()
    solver.add_coffee_break(CopySigintHandler(), every_n_iter=1)
    solver.add_coffee_break(log, every_n_iter=1)
    # The fourth call is the step of update 3.
    send_signal_once(monkeypatch, at_call=4, signum=signal.SIGUSR1)
    with pytest.raises(KeyboardInterrupt):
        solver.solve(make_net())
    assert solver.state.iter == 3
    assert log.seen == [0, 1, 2]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    # The copy stays after the solve and still reaches Python's default.
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGUSR1)
        signal.getsignal(signal.SIGUSR1)


def test_copied_sigint_handler_in_break_and_nested_solve(
    default_sigint, restore_sigusr1
):
    """A nested solve() starts under the copied handler, and a SIGUSR1 in a
    coffee break raises KeyboardInterrupt at once, as a Ctrl-C does."""

    class SignalAt4(CoffeeBreak):
        def __init__(self):
            self.finished = False

        def enjoy(self, solver, net):
            if solver.state.iter == 4:
                os.kill(os.getpid(), signal.SIGUSR1)
                # The handler raises before this line in a break.
                self.finished = True

    inner = make_solver(2)
    outer = make_solver(6)
    signalling = SignalAt4()
    outer.add_coffee_break(CopySigintHandler(), every_n_iter=2)
    outer.add_coffee_break(TrainOnce(inner, make_net("inner")), every_n_iter=2)
    outer.add_coffee_break(signalling, every_n_iter=2)
    with pytest.raises(KeyboardInterrupt):
        outer.solve(make_net())
    assert inner.state.iter == 2
    assert outer.state.iter == 4
    assert not signalling.finished


def test_signal_during_pass_on_keeps_order(recording_handlers):
    """A signal that arrives while the held ones are passed on reaches its
    handler after them."""
    from mochac.runtime.interrupts import held_signals

    calls = recording_handlers
    sent = []

    def send_sigterm_once(signum, frame):
        calls.append((signum, frame is not None))
        if not sent:
            sent.append(signum)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGUSR1, send_sigterm_once)
    with held_signals():
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert calls == []
    signal.getsignal(signal.SIGTERM)
    assert [signum for signum, _ in calls] == [
        signal.SIGUSR1,
        signal.SIGUSR1,
        signal.SIGTERM,
    ]


def test_signal_at_step_end_keeps_order(recording_handlers):
    """A signal that arrives just after the step stops holding, before the
    held ones are passed on, reaches its handler after them."""
    from mochac.runtime.interrupts import StepInterrupts

    class SignalWhenHoldEnds(StepInterrupts):
        """Sends SIGTERM as soon as ``holding`` turns false with signals held."""

        @property
        def holding(self):
            return self._holding

        @holding.setter
        def holding(self, value):
            self._holding = value
            if not value and getattr(self, "received", None):
                os.kill(os.getpid(), signal.SIGTERM)

    calls = recording_handlers
    with SignalWhenHoldEnds("unit") as interrupts, interrupts.step():
        os.kill(os.getpid(), signal.SIGUSR1)
        assert calls == []
    signal.getsignal(signal.SIGTERM)
    assert [signum for signum, _ in calls] == [signal.SIGUSR1, signal.SIGTERM]


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        # (epoch, position, batch_size, n_samples) of each data layer.
        ([(1, 0, 4, 12)], (0, 1)),
        ([(1, 4, 4, 12)], (1, 1)),
        ([(0, 0, 4, 12)], (0, 0)),
        ([(1, 1, 4, 3)], (0, 1)),
        ([(5, 1, 8, 3)], (2, 5)),
        ([(1, 0, 4, 12), (3, 6, 4, 8)], (0, 1)),
        ([], (0, 0)),
    ],
)
def test_latest_batch_epochs(states, expected):
    """The epoch counts before and after the latest batch follow from the
    data layers' states after it, also when a batch is larger than the
    data and wraps more than once."""
    from types import SimpleNamespace

    from mochac.runtime.resume_point import latest_batch_epochs

    sources = {
        index: SimpleNamespace(
            epoch=epoch, position=position, batch_size=batch_size, n_samples=n_samples
        )
        for index, (epoch, position, batch_size, n_samples) in enumerate(states)
    }
    assert latest_batch_epochs(SimpleNamespace(sources=sources)) == expected
