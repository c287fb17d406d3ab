"""Ctrl-C during training: held back until the running step is complete.

A KeyboardInterrupt can arrive between any two Python bytecodes. Inside a
training step that is between the update and the bookkeeping that records
it (the iteration count, the resume point, the loss sums), so a solve()
called again would train on other parameters or data than an uninterrupted
run. While a step runs, the solver's SIGINT handler only records the
request, and the step raises KeyboardInterrupt once it is complete. A
second Ctrl-C within the step raises at once. Coffee breaks, which may
take long (a validation epoch), are interrupted at once.

The handler is installed only in the main thread, where Python delivers
SIGINT, and only over Python's default handler or the handler of a
solve() whose coffee break runs this one, so a program's own handler
stays in charge. Around HDF5 writes, ``held_signals`` holds back
every signal in HELD_SIGNALS that has a Python handler, a program's own
included, and passes it on after the write.
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
        self.requested = False
        self.in_step = False
        self._previous = None

    def __enter__(self) -> StepInterrupts:
        current = signal.getsignal(signal.SIGINT)
        # A solve() called from a coffee break runs under the handler of the
        # solve() around it, which raises at once during breaks, so the
        # inner one installs its own.
        nested = isinstance(getattr(current, "__self__", None), StepInterrupts)
        if threading.current_thread() is threading.main_thread() and (
            current is signal.default_int_handler or nested
        ):
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum, frame) -> None:
        if not self.in_step or self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning(
            "net '%s': Ctrl-C; training stops once this step is complete (press "
            "Ctrl-C again to stop at once)",
            self.name,
        )

    @contextlib.contextmanager
    def step(self):
        """Hold a Ctrl-C back until the block ends, then raise it."""
        self.in_step = True
        try:
            yield
        except BaseException:
            # The step's own error stops the solve, which the Ctrl-C asked for.
            self.requested = False
            raise
        finally:
            self.in_step = False
        if self.requested:
            self.requested = False
            raise KeyboardInterrupt


# Signals whose Python handlers held_signals holds back: those a program
# commonly handles in Python. Looking up every valid signal would cost more
# than the short HDF5 calls it guards.
HELD_SIGNALS = tuple(
    getattr(signal, name)
    for name in (
        "SIGINT",
        "SIGTERM",
        "SIGHUP",
        "SIGQUIT",
        "SIGALRM",
        "SIGUSR1",
        "SIGUSR2",
        "SIGVTALRM",
        "SIGPROF",
    )
    if hasattr(signal, name)
)


@contextlib.contextmanager
def held_signals():
    """Hold Ctrl-C and the other signals with Python handlers back during
    the block, and pass them on after it.

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
                signum, lambda number, frame: received.append(number)
            )
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        # After an error of the block too: a SIGTERM must still end the
        # program, whose error then chains the block's.
        for signum in received:
            previous[signum](signum, None)
