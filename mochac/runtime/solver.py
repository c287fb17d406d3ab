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
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
import sys
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
import numpy as np

from mochac.caffe import load_model_file
from mochac.constraints import apply_constraints, net_constraints
from mochac.errors import ConfigError, NumericalError, SnapshotError
from mochac.runtime import resume_point
from mochac.runtime.coffee_breaks import Snapshot, ValidationPerformance
from mochac.runtime.coffee_lounge import CoffeeLounge
from mochac.runtime.data_sources import warn_batches_larger_than_data
from mochac.runtime.freeze import frozen_layers, trainable_groups
from mochac.runtime.interrupts import StepInterrupts
from mochac.runtime.mom_policy import MomPolicy
from mochac.runtime.pending_breaks import describe_break, match_pending_breaks
from mochac.runtime.snapshot import (
    COFFEE_BREAKS,
    FROZEN_LAYERS,
    PENDING_BREAKS,
    apply_solver_state,
    check_param_shapes,
    latest_snapshot,
    load_params,
    open_model,
    read_solver_attributes,
    read_solver_state,
    save_snapshot,
    snapshot_iterations,
)
from mochac.runtime.solvers import (
    SGD,
    Adam,
    Nesterov,
    SolverMethod,
    summed_gradients,
)
from mochac.values import as_int, as_real

__all__ = [
    "SGD",
    "Adam",
    "Nesterov",
    "Solver",
    "SolverState",
    "make_solver_parameters",
    "summed_gradients",
]

logger = logging.getLogger(__name__)

# Net -> the solver whose solve() trains it now. A coffee break cannot start
# a second solve() on such a net. A nested solve() of a net sharing its
# parameters makes that solver recompute its gradients.
_NETS_IN_TRAINING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def describe(value) -> str:
    """Return how messages name ``value``: the repr of a function or bound
    method shows its address, so those are named by their qualified name."""
    if inspect.isfunction(value):
        return f"function {value.__qualname__}"
    if inspect.ismethod(value):
        return f"method {value.__qualname__}"
    return repr(value)


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


# A load_from path with one of these suffixes names a file; any other path
# that does not exist yet is a snapshot folder to be created.
MODEL_SUFFIXES = (".h5", ".hdf5", ".jld")

# Keys every method accepts; each method adds its own parameter_names.
SOLVER_KEYS = ("max_iter", "regu_coef", "lr_policy", "load_from")


class SolverParameters(dict):
    """The dict that make_solver_parameters returns, whose keys also read as
    attributes, as Mocha's scripts write them: ``params.lr_policy``.

    ``copy(**changes)`` returns a copy with some values replaced, Mocha's
    ``copy(params, load_from=folder)``; it raises ConfigError for a key the
    parameters lack. Assigning an attribute writes its key, which must exist.
    """

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(
                f"solver parameters have no {name!r}; keys: {', '.join(self)}"
            ) from None

    def __setattr__(self, name, value):
        # Without this, ``params.max_iter = n`` would set an instance
        # attribute that reads back as n while Solver reads the old key.
        if name not in self:
            raise AttributeError(
                f"solver parameters have no {name!r}; keys: {', '.join(self)}"
            )
        self[name] = value

    def copy(self, **changes) -> SolverParameters:
        unknown = sorted(set(changes) - set(self))
        if unknown:
            raise ConfigError(
                f"solver parameters copy: unknown key(s) {', '.join(unknown)}; "
                f"keys: {', '.join(self)}"
            )
        changed = check_solver_values({**self, **changes}, "solver parameters copy")
        return SolverParameters(changed)


def check_solver_values(params: dict, caller: str) -> dict:
    """Return a copy of ``params`` with max_iter as an int and regu_coef as a
    float, after checking the values of the keys every method shares.

    Raises ConfigError naming ``caller`` and the first invalid key.
    """
    params = dict(params)
    max_iter = as_int(params.get("max_iter"))
    if max_iter is None or max_iter < 0:
        raise ConfigError(
            f"{caller}: invalid max_iter={params.get('max_iter')!r}; "
            "expected an int >= 0"
        )
    params["max_iter"] = max_iter
    regu = as_real(params["regu_coef"])
    if regu is None or not math.isfinite(regu) or regu < 0:
        raise ConfigError(
            f"{caller}: invalid regu_coef={params['regu_coef']!r}; "
            "expected a finite number >= 0, such as 0.0005"
        )
    params["regu_coef"] = regu
    load_from = params.get("load_from")
    if load_from is not None and not isinstance(load_from, (str, os.PathLike)):
        raise ConfigError(
            f"{caller}: invalid load_from={load_from!r}; expected "
            "the path of a snapshot folder or file (a str or Path), or None"
        )
    examples = {
        "lr_policy": "LRPolicy.Fixed(0.01)",
        "mom_policy": "MomPolicy.Fixed(0.9)",
    }
    # A policy of the other kind returns numbers too, so only its module
    # shows that a momentum policy was given as the learning rate's.
    other_kind = {
        "lr_policy": "mochac.runtime.mom_policy",
        "mom_policy": "mochac.runtime.lr_policy",
    }
    for key, example in examples.items():
        if key in params and (
            not callable(params[key]) or type(params[key]).__module__ == other_kind[key]
        ):
            raise ConfigError(
                f"{caller}: invalid {key}={params[key]!r}; expected a "
                f"policy such as {example}"
            )
    return params


def make_solver_parameters(method, **kwargs) -> SolverParameters:
    """Return the solver parameters: the method's defaults overridden by ``kwargs``.

    Keys for every method: max_iter (required), regu_coef (default 0.0005),
    lr_policy, load_from (a snapshot folder or file, default None). SGD and
    Nesterov add mom_policy (default MomPolicy.Fixed(0.0)), and accept
    ``momentum=m`` for mom_policy=MomPolicy.Fixed(m), as Mocha's CIFAR-10
    tutorial writes it. Adam adds beta1 (0.9), beta2 (0.999) and epsilon
    (1e-8). Raises ConfigError naming an unknown or invalid key.
    """
    check_method(method, "make_solver_parameters")
    known = SOLVER_KEYS + method.parameter_names
    if "momentum" in kwargs and "mom_policy" in known:
        if "mom_policy" in kwargs:
            raise ConfigError(
                f"make_solver_parameters({method.name}): momentum and mom_policy "
                "both set the momentum; give one of them"
            )
        kwargs["mom_policy"] = MomPolicy.Fixed(kwargs.pop("momentum"))
    unknown = set(kwargs) - set(known)
    if unknown:
        raise ConfigError(
            f"make_solver_parameters({method.name}): unknown parameter(s) "
            f"{', '.join(sorted(unknown))}; known: {', '.join(known)}"
        )
    params = {"regu_coef": 0.0005, "load_from": None, **method.default_parameters()}
    params.update(kwargs)
    params = check_solver_values(params, "make_solver_parameters")
    method.check_parameters(params)
    return SolverParameters(params)


def check_method(method, caller: str) -> None:
    """Raise ConfigError unless ``method`` is a solver method object such as SGD()."""
    if isinstance(method, SolverMethod):
        return
    if isinstance(method, type) and issubclass(method, SolverMethod):
        raise ConfigError(
            f"{caller}: got the class {method.__name__}; pass an instance, "
            f"{method.__name__}()"
        )
    raise ConfigError(
        f"{caller}: invalid method {method!r}; expected a solver method such as "
        "SGD(), Nesterov() or Adam()"
    )


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
        # path -> iteration (save_snapshot).
        self._snapshots_with_pending: dict[Path, int] = {}
        # (iteration, indices in self.breaks) of the coffee breaks due at
        # that iteration that have not finished: those of a solve() that an
        # error or Ctrl-C stopped, or those a resumed snapshot lists. The
        # next solve() runs them before its first update.
        self._pending_breaks = None
        self._resumed_from = None
        # Whether this solver's solve() is running, so that a coffee break
        # cannot call it again.
        self._running = False
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
        # A NumPy integer becomes an int here; CoffeeLounge checks the value.
        interval = as_int(every_n_iter)
        if interval is not None:
            every_n_iter = interval
        self.lounge = CoffeeLounge(save_into, every_n_iter, file_exists)

    # --- resuming -------------------------------------------------------------

    def _warn_of_later_files(self) -> None:
        """Warn when this run would mix its files with those of another run,
        or with its own files from before a rollback."""
        self._warn_of_later_snapshots()
        self._warn_of_merged_statistics()

    def _warn_of_later_snapshots(self) -> None:
        """Warn for each Snapshot folder that contains snapshots past this
        run's first iteration."""
        start = self.start_iter
        resumed = self._resumed_from
        # Keyed by resolved path, so that one folder named two ways warns once.
        folders = {
            coffee_break.folder.resolve(): coffee_break.folder
            for coffee_break, *_ in self.breaks
            if isinstance(coffee_break, Snapshot)
        }
        for folder in sorted(folders.values()):
            later = [i for i, _ in snapshot_iterations(folder) if i > start]
            if not later:
                continue

            if resumed is not None and resumed.parent.resolve() == folder.resolve():
                logger.warning(
                    "Snapshot folder %s contains snapshots up to iteration %d, "
                    "past iteration %d of %s, which this run resumed from. This "
                    "run overwrites those of the iterations it reaches, and a "
                    "resume from the folder takes the newest file, which may be "
                    "from before this rollback. Snapshot into an empty folder to "
                    "keep the two apart",
                    folder,
                    max(later),
                    start,
                    resumed.name,
                )
            else:
                logger.warning(
                    "Snapshot folder %s contains snapshots up to iteration %d, "
                    "past this run's start at iteration %d, so another run wrote "
                    "them. This run overwrites those of the iterations it "
                    "reaches, and a resume from the folder takes the newest "
                    "file, which may be the other run's. Resume with "
                    "load_from=%r, or snapshot into an empty folder",
                    folder,
                    max(later),
                    start,
                    str(folder),
                )

    def _warn_of_merged_statistics(self) -> None:
        """Warn when a run that resumed no snapshot merges into a statistics
        file with values past iteration 0."""
        lounge = self.lounge
        if self._resumed_from is not None or self.start_iter != 0:
            return
        if lounge.save_into is None:
            return
        reported = [i for series in lounge.statistics.values() for i in series]
        if max(reported, default=0):
            logger.warning(
                "the statistics file %s contains values up to iteration %d from "
                "another run, and this run starts from scratch, so under "
                "file_exists='merge' the two runs' curves mix. Pass "
                "file_exists='overwrite' to setup_coffee_lounge for a new run, or "
                "resume the other run with load_from",
                lounge.save_into,
                max(reported),
            )

    def _warn_of_shared_statistics(self) -> None:
        """Warn when ValidationPerformance breaks of different test nets
        report a statistic of the same name, whose values would then share one
        series of the coffee lounge."""
        reporters: dict[str, str] = {}
        for coffee_break, *_ in self.breaks:
            if not isinstance(coffee_break, ValidationPerformance):
                continue
            name = coffee_break.test_net.name
            for key in coffee_break.statistic_names:
                other = reporters.setdefault(key, name)
                if other != name:
                    logger.warning(
                        "the validation nets '%s' and '%s' both report '%s', so "
                        "the coffee lounge keeps one series for both. Give their "
                        "accuracy and loss layers different names",
                        other,
                        name,
                        key,
                    )
                    reporters[key] = name

    def _restore(self, net):
        # The snapshot this solve() resumed from, if any (_warn_of_later_files).
        self._resumed_from = None
        load_from = self.params.get("load_from")
        if not load_from:
            return
        path = Path(load_from)
        # A solve() called again after an error goes on from this solver's
        # own iteration when there is no snapshot to resume.
        if self.state.iter == 0:
            start = "training from scratch"
        else:
            start = f"going on from iteration {self.state.iter}"
        if not path.exists() and path.suffix not in MODEL_SUFFIXES:
            # The tutorial's first run names a snapshot folder that the
            # Snapshot coffee break has not created yet.
            logger.info("snapshot folder %s does not exist yet; %s", path, start)
            return
        if path.is_dir():
            found = latest_snapshot(path)
            if found is None:
                logger.info("no snapshot in %s; %s", path, start)
                return
            path = found
        elif not path.exists():
            h5 = path.with_suffix(".h5")
            # Mocha's snapshots end in .jld; a ported script may still name one.
            advice = (
                f"mochac's snapshots are HDF5 files: name {h5}"
                if path.suffix == ".jld" and h5.exists()
                else "fix the path, or name a snapshot folder"
            )
            raise SnapshotError(
                f"load_from={str(load_from)!r}: file not found; {advice}"
            )
        restore_policy = getattr(self.params["lr_policy"], "restore", None)
        iteration = 0
        with open_model(path) as handle:
            # Every part of the snapshot is read and checked before anything
            # reaches the net, so a snapshot this solver cannot resume leaves
            # it unchanged.
            attrs = read_solver_attributes(handle, path)
            if attrs is not None:
                iteration = self._check_solver_attrs(
                    attrs, path, restore_policy is not None
                )
            check_param_shapes(handle, net, path)
            stored = read_solver_state(handle, net, path)
            if stored is None:
                # A model file, perhaps exported from Caffe without biases,
                # loads as load_network loads it.
                load_model_file(handle, net, path)
            else:
                load_params(handle, net, path)
                apply_solver_state(net, stored, path)
        if stored is None:
            logger.info(
                "%s contains no solver state: starting at iteration 0 from its parameters "
                "(fine-tuning)",
                path,
            )
            return
        attrs, buffers = stored.attrs, stored.buffers
        if iteration > 0:
            self._warn_missing_buffers(
                net, buffers, path, attrs.get(FROZEN_LAYERS, frozenset())
            )
        self._warn_frozen_change(net, attrs, path)
        self._pending_breaks = self._stored_pending_breaks(attrs, iteration, path)
        self.method.load_buffers(buffers, net.backend)
        if restore_policy is not None:
            restore_policy(attrs)
        self.state.iter = iteration
        obj_val = as_real(attrs.get("obj_val"))
        self.state.obj_val = math.nan if obj_val is None else float(obj_val)
        self._resumed_from = path
        logger.info("resumed from %s at iteration %d", path, self.state.iter)

    def _stored_pending_breaks(self, attrs: dict, iteration: int, path):
        """Return (iteration, indices) of the coffee breaks a snapshot lists as
        not yet run at its iteration, or None when it lists none.

        The Snapshot break that saved it ran, and so did those before it. A
        break after it may have finished too, before a later stop, but the
        file cannot tell, so the resume runs it again. When the snapshot
        describes the saving solver's breaks and they differ from this
        solver's, each pending break runs where it is now, or is skipped
        (match_pending_breaks), with a warning.
        """
        pending = attrs.get(PENDING_BREAKS) or []
        saved = attrs.get(COFFEE_BREAKS)
        if saved is not None:
            if pending and saved != self.state.coffee_breaks:
                pending = self._match_changed_breaks(pending, saved, iteration, path)
            return (iteration, pending) if pending else None
        # Snapshots of older versions name the breaks by index alone.
        unknown = [index for index in pending if index >= len(self.breaks)]
        if unknown:
            logger.warning(
                "%s lists %d coffee breaks still to run at iteration %d, but this "
                "solver has only %d; add the coffee breaks in the order of the "
                "run that saved it. Skipped the missing ones",
                path,
                len(pending),
                iteration,
                len(self.breaks),
            )
            pending = [index for index in pending if index < len(self.breaks)]
        return (iteration, pending) if pending else None

    def _match_changed_breaks(
        self, pending: list[int], saved: list[str], iteration: int, path
    ) -> list[int]:
        """Return the indices in this solver's breaks of a snapshot's
        ``pending`` breaks, and log a warning that names the breaks run and
        skipped. ``saved`` describes the saving solver's breaks, which differ
        from this solver's."""
        matches = match_pending_breaks(pending, saved, self.state.coffee_breaks)
        ran = [
            f"{match.description} (index {match.saved_index}, now {match.index})"
            for match in matches
            if match.index is not None
        ]
        skipped = [
            f"{match.description} (index {match.saved_index})"
            for match in matches
            if match.index is None
        ]
        if skipped:
            advice = (
                "; to run them all, add the same coffee breaks as the run that "
                "saved it (in its order where breaks share a description)"
            )
        else:
            advice = ""
        logger.warning(
            "%s lists %d coffee breaks still to run at iteration %d, but it was "
            "saved with the coffee breaks [%s] and this solver has [%s]. The "
            "resume runs %s and skips %s%s",
            path,
            len(pending),
            iteration,
            ", ".join(saved),
            ", ".join(self.state.coffee_breaks),
            ", ".join(ran) or "none",
            ", ".join(skipped) or "none",
            advice,
        )
        return [match.index for match in matches if match.index is not None]

    def _warn_frozen_change(self, net, attrs: dict, path) -> None:
        """Log a warning when the net's frozen layers differ from those at the
        snapshot's save; snapshots of older versions record none."""
        saved = attrs.get(FROZEN_LAYERS)
        if saved is None:
            return
        # Freezing a layer without parameters changes nothing, so freeze_all
        # and freeze() of the same parameter layers compare equal.
        with_params = set(net.params)
        saved = saved & with_params
        current = frozen_layers(net) & with_params
        if saved == current:
            return

        def listed(names) -> str:
            return ", ".join(sorted(names)) or "none"

        logger.warning(
            "net '%s': %s was saved with frozen layers %s, but now %s are frozen; "
            "training goes on with the current setting. Call freeze(net, ...) or "
            "unfreeze(net, ...) before solve() to train as the saved run did",
            net.name,
            path,
            listed(saved),
            listed(current),
        )

    def _warn_missing_buffers(
        self, net, buffers: dict, path, saved_frozen: frozenset
    ) -> None:
        """Log a warning for each trainable parameter whose method buffer
        (momentum history, Adam's moments) the snapshot lacks: the resumed
        run starts it from zeros, so it differs from an uninterrupted one.

        A parameter of a layer frozen at the save has no buffer in the
        uninterrupted run either, so it gets no warning.
        """
        for members in trainable_groups(net):
            if any(member[0].name in saved_frozen for member in members):
                continue
            info, spec = members[0][:2]
            key = (info.name, spec.name)
            for name in self.method.buffer_names:
                if key not in buffers.get(name, {}):
                    logger.warning(
                        "%s has no solver buffer '%s' for layer '%s', parameter "
                        "'%s'; it starts from zeros, so the resumed run differs "
                        "from an uninterrupted one",
                        path,
                        name,
                        info.name,
                        spec.name,
                    )

    def _check_solver_attrs(self, attrs: dict, path, needs_rate: bool) -> int:
        """Return the iteration a snapshot's solver attributes record.

        Raises SnapshotError when another method saved the snapshot or an
        attribute the resume reads is missing or invalid. ``needs_rate``:
        the learning-rate policy restores its rate from the snapshot.
        """
        saved_method = str(attrs.get("method", ""))
        if saved_method != self.method.name:
            raise SnapshotError(
                f"{path} was saved by solver {saved_method}, but this solver is "
                f"{self.method.name}; resume with {saved_method} or load the parameters "
                "alone with load_snapshot"
            )
        if "iter" not in attrs:
            raise SnapshotError(
                f"{path}: the solver state has no 'iter' attribute, so the iteration "
                "to resume from is unknown; resume from another snapshot or load the "
                "parameters alone with load_snapshot"
            )
        iteration = as_int(attrs["iter"])
        if iteration is None or iteration < 0:
            stored = attrs["iter"]
            if isinstance(stored, np.generic):
                stored = stored.item()
            raise SnapshotError(
                f"{path}: the solver state's 'iter' attribute is {stored!r}, "
                "not an int >= 0; resume from another snapshot or load the "
                "parameters alone with load_snapshot"
            )
        rate = as_real(attrs.get("learning_rate"))
        if needs_rate and (rate is None or not math.isfinite(rate) or rate < 0):
            raise SnapshotError(
                f"{path}: the solver state's 'learning_rate' attribute is "
                f"{attrs.get('learning_rate')!r}, not a finite number >= 0, and "
                f"lr_policy {self.params['lr_policy']!r} restores its rate from it; "
                "resume from another snapshot"
            )
        return iteration

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
        if not hasattr(net, "ir") or not hasattr(net, "forward_backward"):
            if inspect.ismodule(net) and hasattr(net, "net"):
                advice = f"pass the package's net, {net.__name__}.net"
            else:
                advice = (
                    "build one with Net(name, backend, layers), or import one "
                    "from a package that `mochac compile` wrote"
                )
            raise ConfigError(
                f"solve: expected a Net to train, got {describe(net)}; {advice}"
            )
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
            _NETS_IN_TRAINING[net] = self
            return self._solve(net)
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
        # Listeners such as LRPolicy.DecayOnValidation reach the net here.
        self.net = net
        self._restore(net)
        state = self.state
        # The iteration this call started from, after any resume.
        self.start_iter = state.iter
        self._warn_of_later_files()
        self._warn_of_shared_statistics()
        # The breaks a stopped run left at this iteration, which run even when
        # max_iter is reached.
        pending = self._pending_breaks
        if pending is not None and pending[0] != state.iter:
            pending = None
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
                self._settle_final_snapshots(net)
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
        bar = self._progress_bar(state.iter, max_iter)
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
                    self._check_parameters(net, regu_coef, grads_applied=False)
            self._enjoy(due, net)
            self.lounge.maybe_save(state.iter)
        if bar is not None:
            bar.close()

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
            self._check_parameters(self.net, regu_coef)
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
            self._snapshots_with_pending[path] = self.state.iter
        else:
            self._snapshots_with_pending.pop(path, None)

    def _settle_final_snapshots(self, net) -> None:
        """Save again the snapshots of the final iteration that list coffee
        breaks still due: those breaks have finished now, so a resume from
        them must not run them again."""
        final = [
            path
            for path, iteration in self._snapshots_with_pending.items()
            if iteration == self.state.iter and path.exists()
        ]
        self._snapshots_with_pending.clear()
        net.resume_point = self.resume_point
        try:
            for path in final:
                self.save_snapshot(path)
        finally:
            net.resume_point = None

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
        the breaks after it, which a snapshot saved then records.
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
                "LRPolicy.Fixed(0.01) does"
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

    def _check_parameters(
        self, net, regu_coef: float, grads_applied: bool = True
    ) -> None:
        """Raise NumericalError naming the first parameter with a NaN or
        infinite value.

        With ``grads_applied`` (the net's gradients are still those the
        update applied), the message also states whether they or the
        update's step made the values.
        """
        state = self.state
        for layer, arrays in net.params.items():
            for name, array in arrays.items():
                values = net.backend.to_host(array)
                bad = int(np.count_nonzero(~np.isfinite(values)))
                if bad == 0:
                    continue
                origin = gradient_origin(net, layer, name) if grads_applied else ""
                raise NumericalError(
                    f"net '{net.name}': after the last update (iteration "
                    f"{state.iter}), parameter '{name}' of layer '{layer}' has "
                    f"{bad} NaN or infinite values of {values.size}. The update "
                    f"used learning rate {state.learning_rate:g}, momentum "
                    f"{state.momentum:g} and regu_coef {regu_coef:g}"
                    f"{origin}; lower the "
                    "learning rate or regu_coef, "
                    "check the loss layers' class weights and the input data, and "
                    "train again from an earlier snapshot"
                )

    def _progress_bar(self, start: int, end: int):
        """Return a tqdm bar over the remaining iterations, or None when off."""
        show = self.progress if self.progress is not None else sys.stderr.isatty()
        if not show or start >= end:
            return None
        from tqdm import tqdm

        return tqdm(total=end, initial=start, unit="it", desc="training")


def gradient_origin(net, layer: str, name: str) -> str:
    """Return why parameter ``name`` of ``layer`` went NaN or infinite in
    an update, for the solver's error, from the gradients the update
    applied.

    When the parameter's own gradient is finite, the update's step made the
    values. Otherwise the culprit is the layer nearest the losses, among
    ``layer`` and the layers after it, whose gradients hold NaN or infinite
    values, or a layer between that one and the losses. Returns "" when the
    net's gradients no longer are those the update applied (a GPU step
    whose loss check failed still runs its backward pass).
    """
    own = net.grads.get(layer, {}).get(name)
    if own is None or getattr(net, "grads_overwritten", False):
        return ""
    if np.isfinite(net.backend.to_host(own)).all():
        return (
            ". Its gradient from the last backward pass is finite, so the "
            "update's step made the values"
        )
    after = layers_after(net.ir, net.ir.layer(layer).index)
    for index in net.ir.backward_order:
        if index not in after:
            continue
        owner = net.ir.layers[index].name
        for grad_name, grad in net.grads.get(owner, {}).items():
            if not np.isfinite(net.backend.to_host(grad)).all():
                return (
                    f". Gradient '{grad_name}' of layer '{owner}' has NaN or "
                    "infinite values, the nearest the losses to have them: "
                    "its backward pass or that of a layer between it and the "
                    "losses made them (or the regularization term the update "
                    "adds, with a huge regu_coef)"
                )
    return ""


def shares_parameters(net, other) -> bool:
    """Return whether ``net`` and ``other`` share a parameter array."""
    own = {id(array) for arrays in net.params.values() for array in arrays.values()}
    return any(
        id(array) in own
        for arrays in other.params.values()
        for array in arrays.values()
    )


def layers_after(ir, index: int) -> set[int]:
    """Return ``index`` and the indices of the layers that read its tops,
    directly or through other layers."""
    reached = nx.descendants(ir.graph, ("layer", index))
    return {index} | {node[1] for node in reached if node[0] == "layer"}
