"""Signals during training: held back until the running step is complete.

Python runs a signal handler between two bytecodes, and the handler may
raise there. Python's default SIGINT handler raises KeyboardInterrupt,
and a program's own handler may raise too (a SIGTERM handler that calls
sys.exit(), say). Inside a training step that is between the update and the bookkeeping
that records it (the iteration count, the resume point, the loss sums),
so a solve() called again would train on other parameters or data than
an uninterrupted run. So while a step runs, every signal in HELD_SIGNALS
that has a Python handler is only recorded. The handler that was in
place before solve() runs once the step is complete. Python's default
raises KeyboardInterrupt then, and a program's own handler gets the
signal number and frame it would have got. A second delivery of a signal already
held within the step (a second Ctrl-C, a second SIGTERM) passes every
held signal on at once, so a step that hangs can still be stopped. Coffee
breaks, which may take long (a validation epoch), get each signal at once.

The handlers are installed only in the main thread, where Python runs
signal handlers, and only over Python handlers: a signal that is ignored
or left to the C default stays so. Around HDF5 writes, ``held_signals``
holds back the same signals and passes them on after the write, with no
second-delivery escape, because HDF5 crashes after a write that an
exception stopped.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

logger = logging.getLogger(__name__)


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


class SignalHold:
    """Handlers over every signal in HELD_SIGNALS that has a Python handler,
    installed by ``__enter__`` and restored by ``__exit__``.

    While ``holding`` is set, a signal is recorded in ``received``, and
    otherwise it goes on at once to the handler that was in place.
    ``release()`` passes the recorded signals on. Outside the main thread
    nothing is installed, since Python runs handlers in the main thread only.
    """

    def __init__(self):
        self.holding = False
        # The (signal number, frame) of each signal held back, in order.
        self.received: list[tuple[int, object]] = []
        # The handler that was in place, by signal number, for each signal
        # whose handler this hold replaced.
        self.previous: dict[int, object] = {}

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum in HELD_SIGNALS:
            if callable(signal.getsignal(signum)):
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        # ``previous`` stays, so that a handler which stored this hold's one
        # and calls it later still reaches the handler from before.
        for signum, handler in self.previous.items():
            # A handler that replaced this hold's one (a handler that the
            # program installed in a coffee break, say) stays.
            if signal.getsignal(signum) == self._handle:
                signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        if self.holding:
            self._hold(signum, frame)
        else:
            self.previous[signum](signum, frame)

    def _hold(self, signum, frame) -> None:
        self.received.append((signum, frame))

    def release(self) -> None:
        """Pass the held signals on, in the order they arrived."""
        received, self.received = self.received, []
        pass_on(received, self.previous)


def pass_on(received, handlers) -> None:
    """Call ``handlers[signum](signum, frame)`` for each (signum, frame) in
    ``received``, in order. Each handler runs even when an earlier one
    raised. The last exception propagates with the earlier ones as its
    context, as when the signals arrive one by one."""
    for index, (signum, frame) in enumerate(received):
        try:
            handlers[signum](signum, frame)
        except BaseException:
            pass_on(received[index + 1 :], handlers)
            raise


class StepInterrupts(SignalHold):
    """A context that installs the signal handlers for one solve().

    ``step()`` marks a training step, during which the signals of
    HELD_SIGNALS with Python handlers wait for the step's end. A second
    delivery of a signal that the step holds already passes every held
    signal on at once, in the order they arrived, and the step holds
    later signals again. So a second Ctrl-C stops a step that takes too
    long, and so does a second SIGTERM under a SIGTERM handler that
    raises. A timer that fires more than once per step (setitimer with an
    interval shorter than a step) therefore reaches its handler within the
    step, as without the hold. A held Ctrl-C logs a warning, and any other
    held signal a debug line, since timers may send one in every step.
    """

    def __init__(self, name: str):
        super().__init__()
        # The net's name, for the log line of a held-back signal.
        self.name = name
        # Whether each held signal's handler only raises KeyboardInterrupt.
        self._stops_only: dict[int, bool] = {}

    def __enter__(self):
        # A solve() called from a coffee break runs under the handlers of the
        # solve() around it, which pass signals on at once during breaks,
        # so the inner one installs its own over them.
        super().__enter__()
        self._stops_only = {
            signum: ends_in_default_handler(handler, signum)
            for signum, handler in self.previous.items()
        }
        return self

    def _hold(self, signum, frame) -> None:
        if any(held == signum for held, _ in self.received):
            self.received.append((signum, frame))
            self.release()
            return
        self.received.append((signum, frame))
        if signum != signal.SIGINT:
            logger.debug(
                "net '%s': %s held back until this step is complete "
                "(a second one passes it on at once)",
                self.name,
                signal_name(signum),
            )
        elif self._stops_only[signum]:
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
        """Hold signals back until the block ends, then pass them on."""
        self.holding = True
        try:
            yield
        except BaseException:
            self.holding = False
            # The step's own error stops the solve, which a KeyboardInterrupt
            # would do too. A program's handler still gets its signal, and
            # an exception it raises has the step's error as its context.
            self.received = [
                (signum, frame)
                for signum, frame in self.received
                if not self._stops_only[signum]
            ]
            self.release()
            raise
        finally:
            self.holding = False
        if self.received:
            self.release()


def ends_in_default_handler(handler, signum=signal.SIGINT) -> bool:
    """Return whether a signal ``signum`` that ``handler`` is given reaches
    Python's default SIGINT handler, through the handlers of enclosing
    solve() calls and held_signals blocks."""
    while isinstance(getattr(handler, "__self__", None), SignalHold):
        handler = handler.__self__.previous[signum]
    return handler is signal.default_int_handler


def signal_name(signum: int) -> str:
    """Return the name of signal ``signum``, such as 'SIGTERM'."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        # Real-time signals other than SIGRTMIN and SIGRTMAX have no name.
        return f"signal {signum}"


@contextlib.contextmanager
def held_signals():
    """Hold Ctrl-C and the other signals in HELD_SIGNALS with Python
    handlers back during the block, and pass them on after it.

    HDF5 calls Python file methods (durable_files.WriteGuard) in the middle
    of its own writes, so an exception that a handler raised there would
    leave the file half written, and HDF5 crashes at close after it. After
    the block, each signal goes to the handler that was in place: Python's
    default raises KeyboardInterrupt, and a solver's StepInterrupts holds a
    signal until its step ends. Outside the main thread the block runs as
    it is, since Python runs handlers in the main thread only.
    """
    with SignalHold() as hold:
        hold.holding = True
        try:
            yield
        finally:
            hold.holding = False
            # After an error of the block too: a SIGTERM must still end the
            # program, whose error then chains the block's.
            hold.release()
