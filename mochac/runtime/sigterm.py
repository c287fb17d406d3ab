"""A SIGTERM in a training script: the running step or file write
completes, then one log line and exit status 143, in place of an
immediate death.

    with exit_on_sigterm(solver):
        solve(solver, net)

Job schedulers, ``timeout``, ``kill`` and container stops send SIGTERM.
Under the C default handler the process ends at once, which can be in the
middle of a training step or a snapshot write. In the block, SIGTERM goes
to a Python handler that raises Terminated (interrupts.raise_terminated).
A solver defers that handler until its step is complete, and
``held_signals`` until an HDF5 write is complete, as they do for a Ctrl-C.
A script also wraps its whole main() in ``exit_on_sigterm()``, as it does
with ``exit_on_ctrl_c()``.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

from mochac.runtime.ctrl_c import report_stop
from mochac.runtime.interrupts import Terminated, raise_terminated, signal_name

logger = logging.getLogger(__name__)

# 128 + SIGTERM, the status a shell reports for a process that SIGTERM ended.
SIGTERM_EXIT_STATUS = 128 + signal.SIGTERM


@contextlib.contextmanager
def exit_on_sigterm(solver=None):
    """Turn a SIGTERM in the block into a warning and SystemExit(143).

    The block installs raise_terminated as the SIGTERM handler when SIGTERM
    has the C default handler, and restores that at its end. A SIGTERM that
    is ignored, or that has a Python handler of the program's own, stays so.
    Outside the main thread nothing is installed, since Python runs signal
    handlers in the main thread only. A Terminated raised in the block ends
    it with a warning, which names the signal and, with a ``solver``, where
    it stopped and where running the same script again resumes, as
    ctrl_c.exit_on_ctrl_c does for a Ctrl-C. The exit status is 128 plus
    the signal number, 143 for SIGTERM. A SystemExit from an inner block
    passes through unchanged, so an outer block keeps an inner block's
    warning. A second SIGTERM or Ctrl-C during the warning is dropped
    (ctrl_c.stop_signals_ignored).

    NOTE: a SIGTERM that arrives while the block restores the C default
    handler can be lost, and the program then runs on after the block.
    """
    calls_before = solver._solve_calls if solver is not None else 0
    installed = (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    )
    if installed:
        signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    except Terminated as stop:
        report_stop(solver, calls_before, signal_name(stop.signum), logger)
        raise SystemExit(128 + stop.signum) from None
    finally:
        # A handler that replaced this one in the block stays.
        if installed and signal.getsignal(signal.SIGTERM) is raise_terminated:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
