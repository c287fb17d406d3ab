"""Ctrl-C during training: held back until the running step is complete.

A KeyboardInterrupt can arrive between any two Python bytecodes. Inside a
training step that is between the update and the bookkeeping that records
it (the iteration count, the resume point, the loss sums), so a solve()
called again would train on other parameters or data than an uninterrupted
run. While a step runs, the solver's SIGINT handler only records the
signal, and the handler that was in place before solve() runs once the
step is complete: Python's default raises KeyboardInterrupt, and a
program's own handler gets the signal number and frame it would have got.
A second Ctrl-C within the step passes both signals on at once. Coffee
breaks, which may take long (a validation epoch), get each Ctrl-C at once.

The handler is installed only in the main thread, where Python runs
signal handlers, and only over a Python handler: a SIGINT that is ignored
or left to the C default stays so. Around HDF5 writes, ``held_signals``
holds back every signal in HELD_SIGNALS that has a Python handler and
passes it on after the write.

NOTE: steps hold SIGINT only. A program's handler of another signal (a
SIGTERM handler that raises, say) can still stop a step between its update
and its bookkeeping.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

logger = logging.getLogger(__name__)


class StepInterrupts:
    """A context that installs the SIGINT handler for one solve().

    ``step()`` marks a training step, during which a Ctrl-C waits for the
    step's end.
    """

    def __init__(self, name: str):
        # The net's name, for the log line of a held-back Ctrl-C.
        self.name = name
        self.in_step = False
        # The (signal number, frame) of a Ctrl-C held back until the step ends.
        self.held = None
        self._previous = None
        self._stops_only = True

    def __enter__(self) -> StepInterrupts:
        current = signal.getsignal(signal.SIGINT)
        # A solve() called from a coffee break runs under the handler of the
        # solve() around it, which passes signals on at once during breaks,
        # so the inner one installs its own over it.
        if threading.current_thread() is threading.main_thread() and callable(current):
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._stops_only = ends_in_default_handler(current)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum, frame) -> None:
        if not self.in_step:
            self._previous(signum, frame)
            return
        if self.held is not None:
            held, self.held = self.held, None
            self._previous(*held)
            self._previous(signum, frame)
            return
        self.held = (signum, frame)
        if self._stops_only:
            logger.warning(
                "net '%s': Ctrl-C; training stops once this step is complete "
                "(press Ctrl-C again to stop at once)",
                self.name,
            )
        else:
            logger.warning(
                "net '%s': Ctrl-C; the program's SIGINT handler runs once this "
                "step is complete (press Ctrl-C again to run it at once)",
                self.name,
            )

    @contextlib.contextmanager
    def step(self):
        """Hold a Ctrl-C back until the block ends, then pass it on."""
        self.in_step = True
        try:
            yield
        except BaseException:
            held, self.held = self.held, None
            # The step's own error stops the solve, which a KeyboardInterrupt
            # would do too. A program's handler still gets its signal, and
            # an exception it raises has the step's error as its context.
            if held is not None and not self._stops_only:
                self.in_step = False
                self._previous(*held)
            raise
        finally:
            self.in_step = False
        if self.held is not None:
            held, self.held = self.held, None
            self._previous(*held)


def ends_in_default_handler(handler) -> bool:
    """Return whether a SIGINT that ``handler`` is given reaches Python's
    default handler, through the handlers of enclosing solve() calls."""
    while isinstance(getattr(handler, "__self__", None), StepInterrupts):
        handler = handler.__self__._previous
    return handler is signal.default_int_handler


# Signals that held_signals leaves alone: SIGKILL and SIGSTOP take no
# handler, and a fault that the CPU raises (SIGSEGV and the like) cannot
# wait, since the faulting instruction runs again after the handler.
# faulthandler also installs C handlers for the fault signals without
# Python's knowledge, and replacing a handler there would remove them.
UNHELD_SIGNALS = frozenset(
    getattr(signal, name)
    for name in (
        "SIGKILL",
        "SIGSTOP",
        "SIGSEGV",
        "SIGBUS",
        "SIGFPE",
        "SIGILL",
        "SIGTRAP",
        "SIGSYS",
        "SIGABRT",
    )
    if hasattr(signal, name)
)
# Signals whose Python handlers held_signals holds back. On Linux, with
# only Python's SIGINT handler installed, an empty held_signals block takes
# about 46 us (timeit, Python 3.11, a 2-core x86-64 VM), against about
# 580 us for writing an HDF5 output batch of 64 x 1024 values.
HELD_SIGNALS = tuple(
    sorted(signum for signum in signal.valid_signals() if signum not in UNHELD_SIGNALS)
)


@contextlib.contextmanager
def held_signals():
    """Hold Ctrl-C and the other signals in HELD_SIGNALS with Python
    handlers back during the block, and pass them on after it.

    HDF5 calls Python file methods (durable_files.WriteGuard) in the middle
    of its own writes, so an exception that a handler raised there would
    leave the file half written, and HDF5 crashes at close after it. After
    the block, each signal goes to the handler that was in place: Python's
    default raises KeyboardInterrupt, and a solver's StepInterrupts holds a
    Ctrl-C until its step ends. Outside the main thread the block runs as
    it is, since Python runs handlers in the main thread only.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = {}
    for signum in HELD_SIGNALS:
        handler = signal.getsignal(signum)
        if callable(handler):
            previous[signum] = signal.signal(
                signum, lambda number, frame: received.append((number, frame))
            )
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        # After an error of the block too: a SIGTERM must still end the
        # program, whose error then chains the block's.
        for signum, frame in received:
            previous[signum](signum, frame)
