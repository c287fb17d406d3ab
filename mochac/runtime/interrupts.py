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
SIGINT, and only over Python's default handler, so a program's own
handler stays in charge. ``held_sigint`` does the same around HDF5 writes.
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
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
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


@contextlib.contextmanager
def held_sigint():
    """Hold a Ctrl-C back during the block and raise it after, unless the
    block raised.

    HDF5 calls Python file methods (durable_files.WriteGuard) in the middle
    of its own writes, so a KeyboardInterrupt raised there would leave the
    file half written. After the block, the Ctrl-C goes to the handler that
    was in place: Python's default raises it, and a solver's StepInterrupts
    holds it until its step ends. Outside the main thread, or under a
    handler of the program's own, the block runs as it is.
    """
    current = signal.getsignal(signal.SIGINT)
    ours = isinstance(getattr(current, "__self__", None), StepInterrupts)
    if threading.current_thread() is not threading.main_thread() or not (
        current is signal.default_int_handler or ours
    ):
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(1))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        # Within a training step, the solver's handler holds it further.
        previous(signal.SIGINT, None)
