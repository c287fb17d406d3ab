"""The solver loop; the methods (SGD, Nesterov, Adam) are in mochac.runtime.solvers.

    method = SGD()
    params = make_solver_parameters(method, max_iter=10000, regu_coef=0.0005,
                                    mom_policy=MomPolicy.Fixed(0.9),
                                    lr_policy=LRPolicy.Inv(0.01, 0.0001, 0.75),
                                    load_from="snapshots")
    solver = Solver(method, params)
    solver.add_coffee_break(TrainingSummary(), every_n_iter=100)
    solver.solve(net)

As in Mocha, forward and backward run once before the first iteration.
Each iteration then runs the update, the norm constraints due
(mochac.constraints), and forward and backward on the next batch, in that
order, then the coffee breaks due at the new iteration count. So obj_val at
iteration k is the loss after k updates.

The solver parameters are in mochac.runtime.solver_parameters, the resume
from a snapshot in mochac.runtime.snapshot_resume, the warnings before
training in mochac.runtime.mixed_output_warnings and the check for
non-finite parameters in mochac.runtime.non_finite_parameters, and the locks
of the folders and files that a training writes in
mochac.runtime.training_locks.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import sys
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mochac.constraints import apply_constraints, net_constraints
from mochac.errors import ConfigError, NumericalError, SnapshotError
from mochac.runtime import resume_point, snapshot_resume
from mochac.runtime.coffee_lounge import CoffeeLounge
from mochac.runtime.data_sources import warn_batches_larger_than_data
from mochac.runtime.freeze import frozen_layers, trainable_groups
from mochac.runtime.interrupts import StepInterrupts, Terminated
from mochac.runtime.mixed_output_warnings import (
    warn_of_later_files,
    warn_of_shared_statistics,
)
from mochac.runtime.net_checks import check_net, describe
from mochac.runtime.non_finite_parameters import (
    check_parameters,
    gradient_origin,
    layers_after,
)
from mochac.runtime.pending_breaks import describe_break
from mochac.runtime.snapshot import save_snapshot
from mochac.runtime.snapshot_resume import MODEL_SUFFIXES
from mochac.runtime.solver_parameters import (
    POLICY_EXAMPLES,
    SOLVER_KEYS,
    SolverParameters,
    check_method,
    check_solver_values,
    make_solver_parameters,
)
from mochac.runtime.solvers import (
    SGD,
    Adam,
    Nesterov,
    summed_gradients,
)
from mochac.runtime.training_locks import training_locks
from mochac.values import as_int, as_real

# MODEL_SUFFIXES, SOLVER_KEYS, SolverParameters, gradient_origin and
# layers_after moved to other modules and stay importable from this one.
__all__ = [
    "MODEL_SUFFIXES",
    "SGD",
    "SOLVER_KEYS",
    "Adam",
    "Nesterov",
    "Solver",
    "SolverParameters",
    "SolverState",
    "gradient_origin",
    "layers_after",
    "make_solver_parameters",
    "summed_gradients",
]

logger = logging.getLogger(__name__)

# Net -> the solver whose solve() trains it now. A coffee break cannot start
# a second solve() on such a net. A nested solve() of a net sharing its
# parameters makes that solver recompute its gradients.
_NETS_IN_TRAINING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def check_enjoy_signature(coffee_break):
    """Raise ConfigError unless ``coffee_break.enjoy`` accepts (solver, net).

    Mocha.jl's coffee breaks define enjoy(lounge, coffee, net, state) (its
    src/coffee.jl). A break ported with those arguments would otherwise
    raise TypeError at its first scheduled iteration, after training began.
    """
    enjoy = coffee_break.enjoy
    try:
        signature = inspect.signature(enjoy)
    except (TypeError, ValueError):
        # Builtins and some C callables have no signature to check.
        return
    try:
        signature.bind(None, None)
    except TypeError:
        name = type(coffee_break).__name__
        raise ConfigError(
            f"add_coffee_break: {name}.enjoy{signature} cannot be called as "
            "enjoy(solver, net), as the solver calls it. Define "
            "enjoy(self, solver, net). Mocha's enjoy(lounge, coffee, net, state) "
            "ports as enjoy(self, solver, net): the lounge is solver.lounge and "
            "the state is solver.state"
        ) from None


@dataclass
class SolverState:
    """Training progress: the iteration count and the last step's values."""

    iter: int = 0
    obj_val: float = math.nan
    learning_rate: float = 0.0
    momentum: float = 0.0
    method: str = ""
    # Extra /solver attributes of the learning-rate policy, which a resumed
    # run hands back to the policy's restore() (DecayOnValidation's best).
    policy_attrs: dict = field(default_factory=dict)
    # While a coffee break runs: the indices in Solver.breaks of the breaks
    # due at this iteration that have not run yet. Snapshots store them, so
    # a resume runs them (Solver._pending_breaks).
    pending_breaks: list = field(default_factory=list)
    # The description of each coffee break in Solver.breaks
    # (pending_breaks.describe_break), which snapshots store so that a
    # resume can tell whether pending_breaks still name the same breaks.
    coffee_breaks: list = field(default_factory=list)

    def to_attrs(self) -> dict:
        return {
            "method": self.method,
            "iter": self.iter,
            "obj_val": self.obj_val,
            "learning_rate": self.learning_rate,
            "momentum": self.momentum,
            **self.policy_attrs,
        }


class Solver:
    """Runs a method (SGD, Nesterov, Adam) with its parameters and coffee breaks."""

    def __init__(self, method, params: dict, progress=None):
        """``progress``: show a progress bar on stderr; None (default) shows it
        only when stderr is a terminal."""
        check_method(method, "Solver")
        required = ("max_iter", "regu_coef", "lr_policy", *method.parameter_names)
        expected = (
            f"expected the dict that make_solver_parameters({method.name}(), "
            "max_iter=...) returns"
        )
        if not isinstance(params, dict):
            raise ConfigError(f"Solver({method.name}): invalid params; {expected}")
        missing = [key for key in required if key not in params]
        if missing:
            # Parameters made for another method lack this method's keys.
            raise ConfigError(
                f"Solver({method.name}): params lack {', '.join(missing)}; {expected}"
                " (parameters made for another method do not fit)"
            )
        # The dict may have changed since make_solver_parameters checked it.
        check_solver_values(params, f"Solver({method.name})")
        method.check_parameters(params)
        self.progress = progress
        self.method = method
        if any(method.buffers.values()):
            # Mocha's methods keep no state, so a script that passes one
            # method object to several solvers expects each to start afresh.
            logger.info(
                "Solver(%s): clearing the state buffers the method object kept from "
                "earlier training; a new Solver starts from zero buffers (resume "
                "from a snapshot to continue a run)",
                method.name,
            )
            method.reset_buffers()
        method.configure(params)
        self.params = params
        self.state = SolverState(method=method.name)
        self.net = None
        # While solve() runs: the data position and random streams from
        # before the batch loaded last (mochac.runtime.resume_point).
        self.resume_point = None
        # After solve() ends or stops: net -> point, where the net's next
        # batch from ``point`` was counted already, in statistics and output
        # layers, by the forward pass whose gradients no update applied.
        self._counted_batches = weakref.WeakKeyDictionary()
        self._resume_batch_counted = False
        # Snapshots saved while coffee breaks were still due after them:
        # path -> (iteration, the breaks the file lists as indices in
        # self.breaks).
        self._snapshots_with_pending: dict[Path, tuple[int, list[int]]] = {}
        # (iteration, indices in self.breaks) of the coffee breaks due at
        # that iteration that have not finished: those of a solve() that an
        # error or Ctrl-C stopped, or those a resumed snapshot lists (for a
        # snapshot of an older version, those due after the Snapshot break
        # that wrote it). The next solve() runs them before its first update.
        self._pending_breaks = None
        self._resumed_from = None
        # Whether this solver's solve() is running, so that a coffee break
        # cannot call it again.
        self._running = False
        # The number of solve() calls that passed the checks, and whether the
        # last of them returned, for the report of exit_on_ctrl_c.
        self._solve_calls = 0
        self._last_solve_returned = False
        # Set when a coffee break trained another net that shares this
        # solver's parameters (solve()).
        self._params_changed = False
        self.breaks: list[tuple[object, int | None, int | None]] = []
        self.lounge = CoffeeLounge()

    def add_coffee_break(self, coffee_break, every_n_iter=None, every_n_epoch=None):
        """Schedule a coffee break every ``every_n_iter`` iterations or epochs."""
        if isinstance(coffee_break, type):
            raise ConfigError(
                f"add_coffee_break: got the class {coffee_break.__name__}; pass an "
                f"instance, e.g. {coffee_break.__name__}()"
            )
        if not callable(getattr(coffee_break, "enjoy", None)):
            raise ConfigError(
                f"add_coffee_break: {describe(coffee_break)} has no enjoy(solver, "
                "net) method; "
                "pass a coffee break such as TrainingSummary(), or an instance of "
                "a CoffeeBreak subclass that defines enjoy"
            )
        check_enjoy_signature(coffee_break)
        if (every_n_iter is None) == (every_n_epoch is None):
            raise ConfigError(
                f"add_coffee_break({type(coffee_break).__name__}): give exactly one of "
                "every_n_iter and every_n_epoch"
            )
        intervals = []
        for value in (every_n_iter, every_n_epoch):
            interval = as_int(value)
            if value is not None and (interval is None or interval < 1):
                raise ConfigError(
                    f"add_coffee_break({type(coffee_break).__name__}): invalid interval "
                    f"{value!r}; expected an int >= 1"
                )
            intervals.append(interval)
        self.breaks.append((coffee_break, *intervals))
        self.state.coffee_breaks.append(describe_break(coffee_break, *intervals))

    @property
    def coffee_lounge(self) -> CoffeeLounge:
        """The coffee lounge, under the name of Mocha's solver field."""
        return self.lounge

    def setup_coffee_lounge(self, save_into=None, every_n_iter=1, file_exists="merge"):
        """Keep statistics in a CoffeeLounge saved to ``save_into`` (HDF5)."""
        self.lounge = CoffeeLounge(save_into, every_n_iter, file_exists)

    # --- the loop -------------------------------------------------------------

    def _due(self, iteration: int, last_epoch: int, epoch: int) -> list[int]:
        """Return the indices in ``breaks`` of the coffee breaks due after
        update ``iteration``.

        ``last_epoch`` and ``epoch`` are the data layers' epoch counts before
        and after loading the batch whose gradients this update applies.
        """
        return [
            index
            for index, (_, every_n_iter, every_n_epoch) in enumerate(self.breaks)
            if (every_n_iter is not None and iteration % every_n_iter == 0)
            or (
                every_n_epoch is not None
                and epoch != last_epoch
                and epoch % every_n_epoch == 0
            )
        ]

    def _epoch(self, net) -> int:
        return min((source.epoch for source in net.sources.values()), default=0)

    def solve(self, net):
        """Train ``net`` until ``max_iter`` iterations; return the solver state.

        A coffee break may call solve() of another solver on another net.
        Raises ConfigError when this solver's solve() is running already,
        or when another solve() is training ``net``: the running solve()
        keeps its iteration count, pending coffee breaks and the net's
        resume point across its breaks, which a second one would change.
        """
        check_net(net, "solve", "to train")
        # Before the checks of the net's layers, whose warnings would
        # describe a destroyed net's empty views.
        net._check_alive()
        if self._running:
            raise ConfigError(
                f"solve(net '{net.name}'): this solver's solve() is already "
                "running, and one of its coffee breaks (or another thread) called "
                "it again; a coffee break may train another net with another "
                "Solver, or call solve() again after the running one returns"
            )
        if net in _NETS_IN_TRAINING:
            raise ConfigError(
                f"solve(net '{net.name}'): net '{net.name}' is being trained by "
                "another solve(), one whose coffee break made this call or one in "
                "another thread; a coffee break may train only other nets"
            )
        try:
            self._running = True
            self._solve_calls += 1
            self._last_solve_returned = False
            _NETS_IN_TRAINING[net] = self
            state = self._solve(net)
            self._last_solve_returned = True
            return state
        finally:
            self._running = False
            _NETS_IN_TRAINING.pop(net, None)
            # A solve() inside a coffee break that trained parameters shared
            # with a net in training: the gradients that wait for that net's
            # next update belong to the old values.
            for outer_net, outer in list(_NETS_IN_TRAINING.items()):
                if shares_parameters(outer_net, net):
                    outer._params_changed = True

    def _solve(self, net):
        params = self.params
        if not any(info.layer.has_loss for info in net.ir.layers):
            raise ConfigError(
                f"net '{net.name}' has no loss layer, so the solver has nothing to "
                "minimize; add one such as SoftmaxLossLayer"
            )
        self._check_value_range(net.backend.dtype)
        warn_batches_larger_than_data(net)
        if net.params and not any(True for _ in trainable_groups(net)):
            logger.warning(
                "net '%s': every layer with parameters is frozen, so solve() "
                "changes no parameter; call unfreeze(net, ...) on the layers to train",
                net.name,
            )
        check_solver = getattr(params["lr_policy"], "check_solver", None)
        if check_solver is not None:
            check_solver(self)
        # The locks go before the resume, so that no run resumes from a
        # folder that another training writes into.
        with training_locks(self, net):
            return self._resume_and_train(net)

    def _resume_and_train(self, net):
        """Resume from load_from, if it names a snapshot, and train; return
        the solver state."""
        params = self.params
        # Listeners such as LRPolicy.DecayOnValidation reach the net here.
        self.net = net
        snapshot_resume.restore(self, net)
        state = self.state
        # The iteration this call started from, after any resume.
        self.start_iter = state.iter
        warn_of_later_files(self)
        warn_of_shared_statistics(self)
        # The breaks a stopped run left at this iteration, which run even when
        # max_iter is reached.
        pending = self._pending_breaks
        if pending is not None and pending[0] != state.iter:
            pending = None
        if pending is None and self._resumed_from is not None and state.iter == 0:
            # No break of iteration 0 is still due after the snapshot
            # (snapshot_resume.restore), so the resume runs none of them
            # again, like the uninterrupted run.
            pending = (0, [])
        if state.iter > 0 and state.iter >= params["max_iter"] and pending is None:
            logger.info(
                "net '%s' is already at iteration %d, max_iter=%d; nothing to train "
                "(raise max_iter to train on)",
                net.name,
                state.iter,
                params["max_iter"],
            )
            self.lounge.maybe_save(state.iter, force=True)
            return state
        regu_coef = float(params["regu_coef"])

        # Mocha's order: obj_val at iteration k is the loss after k updates,
        # on the batch whose gradients update k + 1 applies. So forward and
        # backward run once first, and each iteration then updates and runs
        # them on the next batch (Net.solver_step).
        self.resume_point = resume_point.capture(net)
        counted = self._counted_batches.pop(net, None)
        recount = counted is not None and resume_point.same(
            net, counted, self.resume_point
        )
        try:
            with StepInterrupts(net.name) as interrupts:
                self._train(net, regu_coef, interrupts, recount, pending)
        except BaseException:
            # A batch whose forward pass failed was not counted.
            if self._rewind_quietly(net) and self._resume_batch_counted:
                self._counted_batches[net] = self.resume_point
            raise
        # The last forward pass loaded a batch that no update used; the next
        # solve, or a resume from the final snapshot, loads it again.
        resume_point.restore(net, self.resume_point)
        self._counted_batches[net] = self.resume_point
        self.lounge.maybe_save(state.iter, force=True)
        return state

    def _train(
        self,
        net,
        regu_coef: float,
        interrupts: StepInterrupts,
        recount: bool,
        pending: tuple | None,
    ) -> None:
        """Run the first forward and backward passes, then the iterations up
        to max_iter with their coffee breaks. ``self.resume_point`` is always
        the data position and random streams from before the last batch
        loaded. A Ctrl-C waits for the end of the step it arrives in
        (``interrupts``). With ``recount``, the first batch is one that the
        previous solve() counted, and its pass counts nothing
        (Net.uncounted). ``pending`` is (iteration, indices) of the breaks a
        stopped run left at the current iteration, or None."""
        state, max_iter = self.state, self.params["max_iter"]
        dtype = net.backend.dtype
        # The epoch breaks due after update k are those for an epoch that
        # loading batch k completed. The epoch counts are read just before and
        # after the step that loads each batch, so a coffee break that moves
        # the training net's data (such as a validation of the training net
        # itself) completes no epoch.
        with interrupts.step():
            before = self._epoch(net)
            # Whether the forward pass of the batch after self.resume_point
            # completed, so that its statistics and outputs count it. A batch
            # the last solve() counted stays counted if this pass fails.
            self._resume_batch_counted = recount
            with net.uncounted() if recount else contextlib.nullcontext():
                state.obj_val = self._run_step(
                    lambda: net.forward_backward(self.method, regu_coef), regu_coef
                )
            self._resume_batch_counted = True
            loaded_epochs = (before, self._epoch(net))
        # The net is back at the batch that was waiting when the pending
        # breaks were due.
        if state.iter == 0:
            self._apply_policies(state, dtype)
            self._enjoy(self._due(0, -1, -1) if pending is None else pending[1], net)
            self.lounge.maybe_save(state.iter, force=True)
        elif pending is not None:
            self._enjoy(pending[1], net)
            self.lounge.maybe_save(state.iter)
        self._pending_breaks = None

        constraints = net_constraints(net)
        # The bar closes when training stops by an error or a Ctrl-C too, so
        # the messages after it start on a line of their own.
        with self._progress_bar(state.iter, max_iter) as bar:
            while state.iter < max_iter:
                with interrupts.step():
                    due, loaded_epochs = self._step(
                        net, regu_coef, constraints, loaded_epochs
                    )
                    # A Ctrl-C held back until the end of this step leaves them.
                    self._pending_breaks = (state.iter, due)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(obj_val=f"{state.obj_val:.4f}", refresh=False)
                    if state.iter == max_iter:
                        # Each forward pass checks the losses, but a parameter
                        # that no loss depends on can still turn NaN. This check
                        # runs before the last coffee breaks, so no snapshot
                        # saves it. The gradients are those of the pass after
                        # the update, so they cannot tell where the values came
                        # from.
                        check_parameters(self, net, regu_coef, grads_applied=False)
                self._enjoy(due, net)
                self.lounge.maybe_save(state.iter)

    def _step(self, net, regu_coef: float, constraints, loaded_epochs) -> tuple:
        """Run the next iteration's update and the forward and backward passes
        after it. Return the indices of the coffee breaks due after it, and
        the epoch counts before and after its batch."""
        state = self.state
        iteration = state.iter + 1
        due = self._due(iteration, *loaded_epochs)
        self._apply_policies(state, net.backend.dtype)
        previous, self.resume_point = self.resume_point, resume_point.capture(net)
        before = self._epoch(net)
        net.step_updated = False
        self._resume_batch_counted = False
        try:
            state.obj_val = self._iterate(net, iteration, regu_coef, constraints)
        except BaseException:
            if not net.step_updated:
                # Loading the batch failed before the update ran, so the
                # gradients of the batch loaded before, which its forward
                # pass counted, still wait.
                state.iter = iteration - 1
                self.resume_point = previous
                self._resume_batch_counted = True
            else:
                # The update ran and the pass after it failed, so the
                # breaks of this iteration wait for the next solve().
                self._pending_breaks = (iteration, due)
            raise
        self._resume_batch_counted = True
        return due, (before, self._epoch(net))

    def _rewind_quietly(self, net) -> bool:
        """Move the net back before the batch that no update used, as a
        finished solve does, while an error propagates; return whether that
        worked.

        A failure here is logged, so that it does not hide that error.
        """
        try:
            resume_point.restore(net, self.resume_point)
            return True
        except Exception as error:  # noqa: BLE001 - the first error matters more
            logger.warning(
                "net '%s': could not move the data layers back before the batch "
                "loaded last (%s: %s); a later solve() skips that batch",
                net.name,
                type(error).__name__,
                error,
            )
            return False

    def _iterate(self, net, iteration: int, regu_coef: float, constraints) -> float:
        """Run update ``iteration``, the norm constraints due after it (of
        ``constraints``, net_constraints' list), then forward and backward on
        the next batch; return the objective."""
        state, method = self.state, self.method
        values = (state.learning_rate, state.momentum, regu_coef, state.iter)
        # From here on the parameters are those after update ``iteration``,
        # which errors of the forward pass report.
        state.iter = iteration
        if not any(constraint.is_due(iteration) for constraint in constraints):
            return self._run_step(
                lambda: net.solver_step(method, *values), regu_coef, after_update=True
            )
        # Constraints act on the updated parameters before the forward pass,
        # so the update and the pass run as two calls.
        net.apply_update(method, *values)
        apply_constraints(net, iteration)
        return self._run_step(
            lambda: net.forward_backward(method, regu_coef),
            regu_coef,
            after_update=True,
        )

    def _run_step(self, step, regu_coef: float, after_update: bool = False) -> float:
        """Return step(), adding the solver's iteration to a NumericalError.

        With ``after_update`` (the step's update ran before its forward
        pass), the error also gives the update's settings, and a parameter
        that the update made NaN or infinite is reported in place of the
        loss it spoiled.
        """
        state = self.state
        try:
            return step()
        except NumericalError as error:
            if not after_update:
                # No update ran in this step, so no learning rate or momentum
                # of the solver state explains the error.
                raise NumericalError(
                    f"{error}. The solver was at iteration {state.iter}, and no "
                    "update ran in this step"
                ) from error
            check_parameters(self, self.net, regu_coef)
            raise NumericalError(
                f"{error}. Solver settings at iteration {state.iter}: learning "
                f"rate {state.learning_rate:g}, momentum {state.momentum:g}, "
                f"regu_coef {regu_coef:g}; a large regu_coef or large class "
                "weights in a loss layer can also make a loss NaN or infinite"
            ) from error

    def save_snapshot(self, path) -> None:
        """Save the running net's parameters and this solver's state to
        ``path``, as a coffee break does (Snapshot, DecayOnValidation).

        The coffee lounge's file is saved first. A resume from the snapshot
        runs only the breaks that come after this save, so the file must
        already hold the values that the breaks before it reported.
        """
        path = Path(path)
        self.lounge.maybe_save(self.state.iter, force=True)
        save_snapshot(path, self.net, self.state, buffers=self.method.buffers)
        if self.state.pending_breaks:
            listed = list(self.state.pending_breaks)
            self._snapshots_with_pending[path] = (self.state.iter, listed)
        else:
            self._snapshots_with_pending.pop(path, None)

    def saves_again_after_breaks(self, path) -> bool:
        """Return whether the solver saves the snapshot ``path`` again after
        the running coffee break, once the breaks due after it have finished
        or one of them has stopped.

        Such a file lists the running break as still due, so a break that
        changes what the file contains (DecayOnValidation) need not save it:
        until the solver does, a resume from the file runs that break again.
        """
        entry = self._snapshots_with_pending.get(Path(path))
        return (
            entry is not None
            and entry[0] == self.state.iter
            and bool(self.state.pending_breaks)
        )

    def _settle_snapshots(self) -> None:
        """Save again the snapshots of this iteration that list coffee breaks
        still due, once every break of the iteration has finished, so that a
        resume from them runs none of those breaks again.

        The solver's pending breaks and the net's resume point must be
        those after the breaks (_enjoy). A snapshot that cannot be written
        again keeps its list, with a warning. Entries of earlier iterations
        are dropped, because their breaks did not finish in this solver.

        NOTE: a snapshot followed by other breaks at its iteration is thus
        written twice. Saving it only here would lose the snapshot of the
        iteration when those breaks fill the disk or the process dies during
        them (SIGKILL, a SIGTERM without a handler, the OOM killer, a crash
        in native code). Training would then resume from the snapshot
        before, and a break after the Snapshot break could not read the
        file. The first save lists the later breaks, so a resume from it
        runs them again and continues the run exactly. A Snapshot break
        added after the other breaks of its iteration writes its file once.
        """
        iteration = self.state.iter
        saved = self._snapshots_listing_breaks()
        self._snapshots_with_pending = {
            path: entry
            for path, entry in self._snapshots_with_pending.items()
            if entry[0] >= iteration
        }
        # Each save drops its entry, so entries that a Ctrl-C during these
        # saves leaves are saved again by _save_unfinished_breaks.
        for path in saved:
            try:
                self.save_snapshot(path)
            except SnapshotError as error:
                self._snapshots_with_pending.pop(path, None)
                logger.warning(
                    "could not save %s again without the coffee breaks that "
                    "finished after it at iteration %d (%s); a resume from it "
                    "runs those breaks again",
                    path,
                    iteration,
                    error,
                )

    def _save_unfinished_breaks(self) -> None:
        """Save again, after an exception in the coffee breaks of this
        iteration, the snapshots whose list of breaks still due differs from
        the unfinished breaks (self._pending_breaks). A resume from them then
        runs the same breaks as a solve() called again in this process.

        A failed save is logged, because the propagating exception matters
        more, and leaves the file as it was. Its list is then longer than
        the unfinished breaks, never shorter, so a resume runs them all and
        some finished ones again. A Ctrl-C or a Terminated (SIGTERM under
        sigterm.exit_on_sigterm) during a save is raised once every snapshot
        has been saved.
        """
        state = self.state
        pending = self._pending_breaks
        unfinished = []
        if pending is not None and pending[0] == state.iter:
            unfinished = list(pending[1])
        state.pending_breaks = unfinished
        interrupt = None
        for path in self._snapshots_listing_breaks():
            if self._snapshots_with_pending[path][1] == unfinished:
                continue
            try:
                self.save_snapshot(path)
            except (KeyboardInterrupt, Terminated) as stop:
                # Stopping here would leave the later snapshots listing
                # breaks that finished, so the first stop waits.
                if interrupt is None:
                    interrupt = stop
            except Exception as error:  # noqa: BLE001 - the break's error matters more
                logger.warning(
                    "could not save %s again after the coffee breaks of iteration "
                    "%d stopped (%s: %s); a resume from it runs again the breaks "
                    "that finished after the snapshot",
                    path,
                    state.iter,
                    type(error).__name__,
                    error,
                )
        if interrupt is not None:
            raise interrupt

    def _snapshots_listing_breaks(self) -> list[Path]:
        """Return the existing snapshots saved at this iteration that list
        coffee breaks still due."""
        return [
            path
            for path, (saved_at, _) in self._snapshots_with_pending.items()
            if saved_at == self.state.iter and path.exists()
        ]

    def recompute_gradients(self) -> None:
        """Run forward and backward again on the batch loaded last, for a
        coffee break that changed the parameters (DecayOnValidation's
        reload) or unfroze layers, so that the next update applies gradients
        of the current parameters. Sets obj_val to the new loss.

        The batch was counted when it was loaded, so this pass adds nothing to
        the statistics or the output layers (Net.uncounted).
        """
        net = self.net
        if net is None or net.resume_point is None:
            raise ConfigError(
                "Solver.recompute_gradients: called outside a coffee break of a "
                "running solve; call it from a coffee break's enjoy()"
            )
        regu_coef = float(self.params["regu_coef"])
        resume_point.restore(net, net.resume_point)
        # A data source whose arrays a break replaced skipped that restore
        # and reads the new arrays from where they stand, so the point before
        # this batch is captured again for snapshots and the end of solve().
        point = resume_point.capture(net)
        if net.resume_point is self.resume_point:
            self.resume_point = point
        net.resume_point = point
        with net.uncounted():
            self.state.obj_val = self._run_step(
                lambda: net.forward_backward(self.method, regu_coef), regu_coef
            )

    def _enjoy(self, due: list[int], net) -> None:
        """Run the coffee breaks ``due`` (indices in ``breaks``) with the net's
        resume point set, then recompute the gradients when a break unfroze a
        layer, moved the net's data or trained another net sharing its
        parameters.

        A break that raises is left pending with those after it, so that the
        next solve() runs them. While a break runs, the solver state lists
        the breaks after it, which a snapshot saved then records. Once all
        have run, such snapshots are saved again without them
        (_settle_snapshots). When a break raises, including a Ctrl-C, they
        are saved again listing it and those after it
        (_save_unfinished_breaks), and the exception propagates unchanged.
        """
        if not due:
            return
        frozen = frozen_layers(net)
        loaded = resume_point.capture(net)
        net.resume_point = self.resume_point
        state = self.state
        self._params_changed = False
        try:
            for position, index in enumerate(due):
                self._pending_breaks = (state.iter, due[position:])
                state.pending_breaks = list(due[position + 1 :])
                self.breaks[index][0].enjoy(self, net)
            self._pending_breaks = None
            state.pending_breaks = []
            if self._params_changed:
                # A break trained a net that shares parameters with this one.
                self._params_changed = False
                self.recompute_gradients()
            elif frozen - frozen_layers(net):
                # The last backward pass skipped the layers frozen then, so
                # their gradients are stale or zero, and the next update
                # would apply them.
                self.recompute_gradients()
            elif not resume_point.same(net, loaded, resume_point.capture(net)):
                # A break ran the training net itself (a validation of it,
                # net.forward()). Training goes on from the resume point that
                # its snapshots store, so a resume repeats it exactly.
                self.recompute_gradients()
            self._settle_snapshots()
        except BaseException:
            self._save_unfinished_breaks()
            raise
        finally:
            # A snapshot saved outside a break lists no pending breaks.
            state.pending_breaks = []
            net.resume_point = None

    def _check_value_range(self, dtype) -> None:
        """Raise ConfigError for a solver parameter that overflows ``dtype``.

        make_solver_parameters checks the values in Python floats, but the
        updates compute in the net's dtype, where 1e39 is infinite in float32.
        """
        limit = float(np.finfo(dtype).max)
        for key in ("regu_coef", *self.method.parameter_names):
            value = as_real(self.params[key])
            if value is not None and abs(value) > limit:
                raise ConfigError(
                    f"Solver({self.method.name}): {key}={self.params[key]!r} is "
                    f"infinite in the net's {np.dtype(dtype).name} (whose max is "
                    f"{limit:g}); use a smaller value"
                )

    def _apply_policies(self, state: SolverState, dtype) -> None:
        """Set the state's learning rate and momentum from the policies, or
        raise naming the policy that gave an invalid value."""
        state.learning_rate = self._policy_value("lr_policy", state, dtype)
        if "mom_policy" in self.params:
            state.momentum = self._policy_value("mom_policy", state, dtype)
        else:
            # Adam has no momentum, so its state reports 0.
            state.momentum = 0.0

    def _policy_value(self, key: str, state: SolverState, dtype) -> float:
        policy = self.params[key]
        value = policy(state)
        # Policies return Python floats; as_real's checks cost microseconds
        # per iteration and serve the other types.
        number = value if type(value) is float else as_real(value)
        if number is None:
            raise ConfigError(
                f"{key} {describe(policy)} returned {value!r} at iteration "
                f"{state.iter}; a policy must return a number, as "
                f"{POLICY_EXAMPLES[key]} does"
            )
        if not math.isfinite(number) or abs(number) > float(np.finfo(dtype).max):
            raise NumericalError(
                f"{key} {describe(policy)} returned {number:g} at iteration "
                f"{state.iter}, which is not a finite {np.dtype(dtype).name}; check "
                "the policy's parameters"
            )
        # A negative rate climbs the loss, and a momentum of 1 or more lets
        # the steps grow without bound.
        if key == "lr_policy" and number < 0:
            raise ConfigError(
                f"lr_policy {describe(policy)} returned {number:g} at iteration "
                f"{state.iter}; a learning rate must be >= 0"
            )
        if key == "mom_policy" and not 0 <= number < 1:
            raise ConfigError(
                f"mom_policy {describe(policy)} returned {number:g} at iteration "
                f"{state.iter}; a momentum must be in [0, 1)"
            )
        return float(number)

    def _progress_bar(self, start: int, end: int):
        """Return a tqdm bar over the remaining iterations, or a context
        manager that gives None when the bar is off."""
        show = self.progress if self.progress is not None else sys.stderr.isatty()
        if not show or start >= end:
            return contextlib.nullcontext()
        from tqdm import tqdm

        return tqdm(total=end, initial=start, unit="it", desc="training")


def shares_parameters(net, other) -> bool:
    """Return whether ``net`` and ``other`` share a parameter array."""
    own = {id(array) for arrays in net.params.values() for array in arrays.values()}
    return any(
        id(array) in own
        for arrays in other.params.values()
        for array in arrays.values()
    )
