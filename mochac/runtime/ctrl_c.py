"""A Ctrl-C in a training script: one log line and exit status 130, in place
of a KeyboardInterrupt traceback.

    with exit_on_ctrl_c(solver):
        solve(solver, net)

A script also wraps its whole main() in ``exit_on_ctrl_c()``, so that a
Ctrl-C during a net's compile, the data loading or the final evaluation
ends the same way. NOTE: a Ctrl-C during the imports at the top of a script,
before the block starts, still prints Python's traceback.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from pathlib import Path

from mochac.runtime.snapshot import snapshot_iterations
from mochac.runtime.snapshot_resume import MODEL_SUFFIXES

logger = logging.getLogger(__name__)

# 128 + SIGINT, the status a shell reports for a process that a Ctrl-C ended.
CTRL_C_EXIT_STATUS = 130

# The signals that a second Ctrl-C or kill sends while a block reports the
# stop of the first.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _ignore_signal(signum, frame) -> None:
    """Drop a signal that arrives while a stop is being reported."""


@contextlib.contextmanager
def stop_signals_ignored():
    """Drop SIGINT and SIGTERM in the block where they have Python handlers,
    and put those handlers back at its end.

    exit_on_ctrl_c and exit_on_sigterm report a stop in it, so a second
    Ctrl-C or SIGTERM cannot raise from the logging call and replace the
    exit status of the first. The replacement is a Python handler rather
    than SIG_IGN, because CPython prints "Signal N ignored due to race
    condition" for a signal that a Python handler received but that finds
    SIG_IGN installed when it is handled.
    A signal left to the C default or ignored stays so, and outside the
    main thread nothing changes, since only the main thread may set
    handlers.

    NOTE: a second signal that arrives after the first's exception was
    raised but before the block starts, while the stack unwinds, still
    replaces that exception.
    """
    replaced = {}
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            if callable(signal.getsignal(signum)):
                replaced[signum] = signal.signal(signum, _ignore_signal)
    try:
        yield
    finally:
        for signum, handler in replaced.items():
            # A handler that replaced this one in the block stays.
            if signal.getsignal(signum) is _ignore_signal:
                signal.signal(signum, handler)


@contextlib.contextmanager
def exit_on_ctrl_c(solver=None):
    """Turn a KeyboardInterrupt in the block into a warning and SystemExit(130).

    With a ``solver``, the warning names the iteration it stopped at, or
    states that the Ctrl-C came before its solve() was called or after it
    returned. It also names where running the same script again resumes:
    the newest snapshot in the solver's load_from folder. For that warning
    to show with its time and level, the script calls log_to_console()
    first. Without a solver, the warning only states that a Ctrl-C stopped
    the script. A SystemExit from an inner block passes through unchanged,
    so an outer block without a solver keeps an inner block's warning. A
    second Ctrl-C or SIGTERM during the warning is dropped
    (stop_signals_ignored).
    """
    calls_before = solver._solve_calls if solver is not None else 0
    try:
        yield
    except KeyboardInterrupt:
        report_stop(solver, calls_before, "Ctrl-C", logger)
        raise SystemExit(CTRL_C_EXIT_STATUS) from None


def report_stop(solver, calls_before: int, cause: str, log: logging.Logger) -> None:
    """Log to ``log`` the warning of a block that ``cause`` ("Ctrl-C",
    "SIGTERM") stopped, with a second stop signal dropped meanwhile.

    ``calls_before`` is the solver's count of solve() calls when the block
    started. Without a solver, the warning names the cause alone.
    """
    with stop_signals_ignored():
        if solver is None:
            log.warning("stopped by %s", cause)
        else:
            started = solver._solve_calls > calls_before
            log.warning("%s", interrupt_report(solver, started, cause))


def interrupt_report(solver, started: bool, cause: str = "Ctrl-C") -> str:
    """Describe where ``cause`` ("Ctrl-C", "SIGTERM") stopped ``solver`` and
    where a rerun resumes. ``started`` is whether solve() was called in the
    block that ``cause`` ended."""
    net = f"net '{solver.net.name}': " if solver.net is not None else ""
    if not started:
        event = f"{net}{cause} before solve() was called"
    elif solver._last_solve_returned:
        event = (
            f"{net}{cause} after training finished at iteration {solver.state.iter} "
            "(solve() had returned)"
        )
    else:
        event = f"{net}training stopped by {cause} at iteration {solver.state.iter}"
    return f"{event}; {resume_point_of_rerun(solver.params.get('load_from'))}"


def resume_point_of_rerun(load_from) -> str:
    """Describe where a solver with this load_from starts when run again."""
    if not load_from:
        return "the solver has no load_from, so a rerun starts from iteration 0"
    path = Path(load_from)
    if path.is_file():
        return f"a rerun starts from {path} again, because load_from names that file"
    if not path.exists() and path.suffix in MODEL_SUFFIXES:
        # snapshot_resume.restore reads such a path as a file, not a folder.
        return f"a rerun fails, because load_from names the missing file {path}"
    found = snapshot_iterations(path)
    if not found:
        return f"{path} contains no snapshot yet, so a rerun starts from scratch"
    iteration, newest = max(found)
    return (
        f"running the same command again resumes from {newest} (iteration {iteration})"
    )
