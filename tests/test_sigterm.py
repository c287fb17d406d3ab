"""exit_on_sigterm: a SIGTERM waits for the running step or snapshot write,
then ends the block with one warning and exit status 143."""

import contextlib
import json
import logging
import os
import signal

import pytest
from test_solver_interrupts import (
    InterruptSaveThenFail,
    IterationLog,
    make_net,
    make_solver,
    send_signal_at_step_end,
)

import mochac
from mochac import Snapshot
from mochac.runtime.ctrl_c import CTRL_C_EXIT_STATUS, exit_on_ctrl_c
from mochac.runtime.interrupts import StepInterrupts, Terminated, raise_terminated
from mochac.runtime.sigterm import SIGTERM_EXIT_STATUS, exit_on_sigterm


@pytest.fixture
def default_sigterm():
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("another SIGTERM handler is installed")


@pytest.fixture
def default_stop_handlers(default_sigterm):
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("another SIGINT handler is installed")


def warning_messages(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_exit_status_is_143():
    assert SIGTERM_EXIT_STATUS == 143


def test_sigterm_in_step_exits_after_it(default_sigterm, monkeypatch, tmp_path, caplog):
    """A SIGTERM after update 3, before its bookkeeping, stops the run at
    iteration 3, and the warning names the snapshot a rerun resumes from."""
    solver = make_solver(6, tmp_path)
    solver.add_coffee_break(Snapshot(tmp_path), every_n_iter=2)
    log = IterationLog()
    solver.add_coffee_break(log, every_n_iter=1)
    # Calls 1 and 2 are around the first pass, so call 8 is the second
    # one of the step of update 3.
    send_signal_at_step_end(monkeypatch, signal.SIGTERM, at_call=8)
    with pytest.raises(SystemExit) as raised, exit_on_sigterm(solver):
        # Without this handler the SIGTERM below would end pytest itself.
        assert signal.getsignal(signal.SIGTERM) is raise_terminated
        solver.solve(make_net("stopped"))
    assert raised.value.code == 143
    assert solver.state.iter == 3
    assert log.seen == [0, 1, 2]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    newest = tmp_path / "snapshot-000002.h5"
    assert warning_messages(caplog) == [
        (
            "net 'stopped': training stopped by SIGTERM at iteration 3; running "
            f"the same command again resumes from {newest} (iteration 2)"
        )
    ]


def test_sigterm_in_snapshot_write_finishes_file(
    default_sigterm, monkeypatch, tmp_path, caplog
):
    """A SIGTERM inside HDF5's writes of a snapshot waits until the file is
    in place, and no temporary file stays."""
    from mochac import durable_files

    real_write = durable_files.WriteGuard.write
    sent = []

    def write(guard, data):
        if not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGTERM)
        return real_write(guard, data)

    solver = make_solver(4, tmp_path)
    solver.add_coffee_break(Snapshot(tmp_path), every_n_iter=2)
    monkeypatch.setattr(durable_files.WriteGuard, "write", write)
    with pytest.raises(SystemExit) as raised, exit_on_sigterm(solver):
        assert signal.getsignal(signal.SIGTERM) is raise_terminated
        solver.solve(make_net("saving"))
    monkeypatch.undo()

    assert sent == [1]
    assert raised.value.code == 143
    assert solver.state.iter == 0
    path = tmp_path / "snapshot-000000.h5"
    mochac.load_snapshot(make_net(seed=99), path)
    assert list(tmp_path.glob(".*.tmp")) == []
    assert warning_messages(caplog) == [
        (
            "net 'saving': training stopped by SIGTERM at iteration 0; running "
            f"the same command again resumes from {path} (iteration 0)"
        )
    ]


def test_sigterm_in_save_after_break_error(default_sigterm, monkeypatch, tmp_path):
    """A SIGTERM during the save of the first of two snapshots after a
    failed break waits until the second is saved too, as a Ctrl-C does."""
    error = ValueError("break failed")
    failing = InterruptSaveThenFail(monkeypatch, error, signum=signal.SIGTERM)

    solver = make_solver(2)
    solver.add_coffee_break(Snapshot(tmp_path / "a"), every_n_iter=2)
    solver.add_coffee_break(Snapshot(tmp_path / "b"), every_n_iter=2)
    solver.add_coffee_break(IterationLog(), every_n_iter=2)
    solver.add_coffee_break(failing, every_n_iter=2)
    with pytest.raises(SystemExit), exit_on_sigterm(solver):
        assert signal.getsignal(signal.SIGTERM) is raise_terminated
        try:
            solver.solve(make_net())
        except Terminated as stop:
            assert stop.__context__ is error
            raise
    monkeypatch.undo()

    assert failing.sent == [1]
    for folder in ("a", "b"):
        path = tmp_path / folder / "snapshot-000000.h5"
        with mochac.runtime.snapshot.open_model(path) as handle:
            assert json.loads(handle["solver"].attrs["pending_breaks"]) == [3], folder


def test_sigterm_of_failed_step_dropped(default_sigterm):
    """A step that raises after a SIGTERM arrived ends with its own error,
    as with a Ctrl-C, so the error is not hidden behind a clean exit."""
    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        with (
            pytest.raises(ValueError, match="step failed") as raised,
            StepInterrupts("unit") as interrupts,
            interrupts.step(),
        ):
            os.kill(os.getpid(), signal.SIGTERM)
            raise ValueError("step failed")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    assert raised.value.__context__ is None


def test_exit_on_sigterm_without_solver(default_sigterm, caplog):
    with pytest.raises(SystemExit) as raised, exit_on_sigterm():
        raise Terminated(signal.SIGTERM)
    assert raised.value.code == 143
    assert warning_messages(caplog) == ["stopped by SIGTERM"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_exit_on_sigterm_before_solve(caplog):
    solver = make_solver(4)
    with pytest.raises(SystemExit) as raised, exit_on_sigterm(solver):
        raise Terminated(signal.SIGTERM)
    assert raised.value.code == 143
    assert warning_messages(caplog) == [
        (
            "SIGTERM before solve() was called; the solver has no load_from, so a "
            "rerun starts from iteration 0"
        )
    ]


def test_exit_on_sigterm_outer_keeps_inner_warning(default_sigterm, caplog):
    """A script's exit_on_sigterm() around its main() adds no second warning
    to that of the exit_on_sigterm(solver) inside."""
    solver = make_solver(4)
    with (
        pytest.raises(SystemExit) as raised,
        exit_on_sigterm(),
        exit_on_sigterm(solver),
    ):
        raise Terminated(signal.SIGTERM)
    assert raised.value.code == 143
    assert len(warning_messages(caplog)) == 1
    assert warning_messages(caplog)[0].startswith("SIGTERM before solve()")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_inner_block_keeps_outer_handler(default_sigterm):
    with exit_on_sigterm():
        with exit_on_sigterm(make_solver(4)):
            pass
        assert signal.getsignal(signal.SIGTERM) is raise_terminated
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


@pytest.mark.parametrize("handler", [signal.SIG_IGN, "own"])
def test_exit_on_sigterm_keeps_other_handlers(handler):
    """An ignored SIGTERM, or one with the program's own handler, stays so
    in the block and after it."""
    if handler == "own":

        def handler(signum, frame):
            pass

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with exit_on_sigterm():
            inside = signal.getsignal(signal.SIGTERM)
        after = signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert inside is handler
    assert after is handler


def test_exit_on_sigterm_copied_to_other_signal(default_sigterm, caplog):
    """raise_terminated copied to SIGHUP names that signal and exits with
    128 + its number."""
    previous = signal.getsignal(signal.SIGHUP)
    try:
        with pytest.raises(SystemExit) as raised, exit_on_sigterm():
            assert signal.getsignal(signal.SIGTERM) is raise_terminated
            signal.signal(signal.SIGHUP, raise_terminated)
            os.kill(os.getpid(), signal.SIGHUP)
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert raised.value.code == 128 + signal.SIGHUP
    assert warning_messages(caplog) == ["stopped by SIGHUP"]


class SignalOnFirstRecord(logging.Handler):
    """A logging handler that sends this process ``signum`` while it handles
    its first record, as a second Ctrl-C or kill during the warning would."""

    def __init__(self, signum):
        super().__init__(level=logging.WARNING)
        self.signum = signum
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())
        if len(self.messages) == 1:
            signal.raise_signal(self.signum)


@pytest.mark.parametrize(
    ("blocks", "first", "second", "status", "message"),
    [
        (
            [exit_on_ctrl_c],
            KeyboardInterrupt,
            signal.SIGINT,
            CTRL_C_EXIT_STATUS,
            "stopped by Ctrl-C",
        ),
        (
            [exit_on_sigterm, exit_on_ctrl_c],
            KeyboardInterrupt,
            signal.SIGTERM,
            CTRL_C_EXIT_STATUS,
            "stopped by Ctrl-C",
        ),
        (
            [exit_on_sigterm],
            Terminated(signal.SIGTERM),
            signal.SIGTERM,
            SIGTERM_EXIT_STATUS,
            "stopped by SIGTERM",
        ),
        (
            [exit_on_sigterm],
            Terminated(signal.SIGTERM),
            signal.SIGINT,
            SIGTERM_EXIT_STATUS,
            "stopped by SIGTERM",
        ),
    ],
    ids=[
        "ctrl-c-then-ctrl-c",
        "ctrl-c-then-sigterm",
        "sigterm-twice",
        "sigterm-then-ctrl-c",
    ],
)
def test_second_signal_during_warning(
    default_stop_handlers, blocks, first, second, status, message
):
    """A second signal while the block logs its warning is dropped: the
    block exits with the status of the first, after one warning."""
    handler = SignalOnFirstRecord(second)
    loggers = [
        logging.getLogger(name)
        for name in ("mochac.runtime.ctrl_c", "mochac.runtime.sigterm")
    ]
    for logger in loggers:
        logger.addHandler(handler)
    escaped = None
    try:
        with contextlib.ExitStack() as stack:
            for block in blocks:
                stack.enter_context(block())
            raise first
    # Caught here so that a KeyboardInterrupt fails this test rather than
    # stopping pytest.
    except BaseException as error:  # noqa: BLE001
        escaped = error
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    assert type(escaped) is SystemExit
    assert escaped.code == status
    assert handler.messages == [message]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
