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
from typing import NamedTuple

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


class HeldSignal(NamedTuple):
    """A signal that a SignalHold received: the signal number and frame that
    its handler gets, and the signal whose handler from before the hold
    it goes to (``SignalForwarder.installed_for``)."""

    signum: int
    frame: object
    installed_for: int


class SignalForwarder:
    """The handler that a SignalHold installs for the signal
    ``installed_for``. Each signal it gets goes to the hold, which passes it
    on to the handler that ``installed_for`` had before the hold.

    A program may copy it to another signal, as in
    ``signal.signal(signal.SIGUSR1, signal.getsignal(signal.SIGINT))``.
    That signal then reaches the SIGINT handler from before the hold, with
    its own signal number, as it would had the program copied that handler.
    """

    __slots__ = ("hold", "installed_for")

    def __init__(self, hold: SignalHold, installed_for: int):
        self.hold = hold
        self.installed_for = installed_for

    def __call__(self, signum, frame) -> None:
        self.hold.receive(HeldSignal(signum, frame, self.installed_for))


class SignalHold:
    """Handlers over every signal in HELD_SIGNALS that has a Python handler,
    installed by ``__enter__`` and restored by ``__exit__``.

    While ``holding`` is set, a signal is recorded in ``received``, and
    otherwise it goes on at once to the handler that was in place.
    ``release()`` passes the recorded signals on. Signals that arrive while
    it runs go on after them, so every handler gets its signals in the
    order they arrived. Outside the main thread nothing is installed, since
    Python runs handlers in the main thread only.
    """

    def __init__(self):
        self.holding = False
        # The signals held back, in the order they arrived.
        self.received: list[HeldSignal] = []
        # The handler that was in place, by signal number, for each signal
        # whose handler this hold replaced.
        self.previous: dict[int, object] = {}
        # The handler installed in place of each of those.
        self.forwarders: dict[int, SignalForwarder] = {}
        # Whether release() is passing signals on, so that a signal which
        # arrives meanwhile waits for the ones before it.
        self._releasing = False

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum in HELD_SIGNALS:
            if callable(signal.getsignal(signum)):
                forwarder = SignalForwarder(self, signum)
                self.previous[signum] = signal.signal(signum, forwarder)
                self.forwarders[signum] = forwarder
        return self

    def __exit__(self, *exc_info) -> None:
        # ``previous`` stays, so that a handler which stored this hold's one
        # and calls it later still reaches the handler from before.
        for signum, handler in self.previous.items():
            # A handler that replaced this hold's one (a handler that the
            # program installed in a coffee break, say) stays.
            if signal.getsignal(signum) is self.forwarders[signum]:
                signal.signal(signum, handler)

    def receive(self, held: HeldSignal) -> None:
        """Hold ``held`` back, or pass it on after the signals held before it."""
        if self.holding and not self._releasing:
            self._hold(held)
            return
        self.received.append(held)
        self.release()

    def _hold(self, held: HeldSignal) -> None:
        self.received.append(held)

    def _skipped(self, held: HeldSignal) -> bool:
        """Return whether release() drops ``held`` in place of passing it on."""
        return False

    def release(self) -> None:
        """Pass the held signals on, in the order they arrived, and those
        that arrive meanwhile after them.

        Each handler runs even when an earlier one raised. The last
        exception propagates with the earlier ones as its context, as when
        the signals arrive one by one. Called again from a handler, it
        returns at once, and the running call passes the signals on.
        """
        if self._releasing:
            return
        self._releasing = True
        try:
            self._pass_on()
        finally:
            self._releasing = False
            # A signal that arrived after the last one was passed on, but
            # before _releasing turned false, was only recorded.
            if self.received:
                self.release()

    def _pass_on(self) -> None:
        while self.received:
            held = self.received.pop(0)
            if self._skipped(held):
                continue
            try:
                self.previous[held.installed_for](held.signum, held.frame)
            except BaseException:
                # The rest run inside this handler, so that an exception
                # they raise has this one as its context.
                self._pass_on()
                raise


class StepInterrupts(SignalHold):
    """A context that installs the signal handlers for one solve().

    ``step()`` marks a training step, during which the signals of
    HELD_SIGNALS with Python handlers wait for the step's end. A second
    delivery of a signal that the step has already held back passes every
    held signal on at once, in the order they arrived, and the step holds
    back later signals again. So a second Ctrl-C stops a step that takes too
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
        # Whether the handler from before the hold of each signal only
        # raises KeyboardInterrupt or Terminated.
        self._stops_only: dict[int, bool] = {}
        # Set while the signals of a step that raised are passed on.
        self._step_failed = False

    def __enter__(self):
        # A solve() called from a coffee break runs under the handlers of the
        # solve() around it, which pass signals on at once during breaks,
        # so the inner one installs its own over them.
        super().__enter__()
        self._stops_only = {
            signum: ends_in_stopping_handler(handler)
            for signum, handler in self.previous.items()
        }
        return self

    def _hold(self, held: HeldSignal) -> None:
        signum = held.signum
        if any(earlier.signum == signum for earlier in self.received):
            self.received.append(held)
            self.release()
            return
        self.received.append(held)
        if signum != signal.SIGINT:
            logger.debug(
                "net '%s': %s held back until this step is complete "
                "(a second one passes it on at once)",
                self.name,
                signal_name(signum),
            )
        elif self._stops_only[held.installed_for]:
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

    def _skipped(self, held: HeldSignal) -> bool:
        return self._step_failed and self._stops_only[held.installed_for]

    @contextlib.contextmanager
    def step(self):
        """Hold signals back until the block ends, then pass them on."""
        self.holding = True
        try:
            yield
        except BaseException:
            # The step's own error stops the solve, which a KeyboardInterrupt
            # or Terminated would do too, so the signals whose handler only
            # raises one of those are dropped. A program's handler still gets
            # its signal, and an exception it raises has the step's error as
            # its context.
            self._step_failed = True
            self.holding = False
            try:
                self.release()
            finally:
                self._step_failed = False
            raise
        self.holding = False
        self.release()


class Terminated(BaseException):
    """The exception that ``raise_terminated`` raises for a SIGTERM, as
    Python's default SIGINT handler raises KeyboardInterrupt. It derives
    from BaseException, so an ``except Exception`` clause lets it pass."""

    def __init__(self, signum: int):
        super().__init__(signal_name(signum))
        # The number of the signal that the handler got.
        self.signum = signum


def raise_terminated(signum, frame) -> None:
    """Raise Terminated: the SIGTERM handler that sigterm.exit_on_sigterm
    installs."""
    raise Terminated(signum)


def ends_in_stopping_handler(handler) -> bool:
    """Return whether a signal that ``handler`` is given reaches a handler
    that only raises an exception to stop the program (Python's default
    SIGINT handler or raise_terminated), through the handlers of enclosing
    solve() calls and held_signals blocks."""
    while isinstance(handler, SignalForwarder):
        handler = handler.hold.previous[handler.installed_for]
    return handler is signal.default_int_handler or handler is raise_terminated


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
