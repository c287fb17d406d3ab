"""Learning-rate policies: the global learning rate as a function of the iteration.

Use them as Mocha does: ``LRPolicy.Inv(0.01, 0.0001, 0.75)``. Each policy is
called with the solver state and returns the rate for the coming update.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass

from mochac.errors import ConfigError, NumericalError
from mochac.runtime.coffee_breaks import Snapshot
from mochac.runtime.interrupts import held_signals
from mochac.runtime.snapshot import (
    load_params,
    open_model,
    read_solver_attributes,
    read_solver_buffers,
    snapshot_iterations,
    snapshot_path,
)
from mochac.values import as_int, as_real

logger = logging.getLogger(__name__)


def _check(policy, field, value, minimum=None, integer=False):
    """Check a policy parameter; return it as a Python int or float."""
    number = as_int(value) if integer else as_real(value)
    if number is None:
        raise ConfigError(
            f"LRPolicy.{type(policy).__name__}: invalid {field}={value!r}; expected "
            f"{'an int' if integer else 'a number'}"
        )
    if not math.isfinite(number):
        raise ConfigError(
            f"LRPolicy.{type(policy).__name__}: invalid {field}={value!r}; expected a "
            "finite number"
        )
    if minimum is not None and number < minimum:
        raise ConfigError(
            f"LRPolicy.{type(policy).__name__}: invalid {field}={value!r}; expected a "
            f"value >= {minimum}"
        )
    return number


def _check_fields(policy, **rules) -> None:
    """Check each field of a frozen policy and store it as a Python int or float.

    ``rules`` maps a field name to the keyword arguments of ``_check``. A
    field that is not an integer becomes a float, so that ``gamma ** n``
    overflows with OverflowError instead of building a huge int.
    """
    for field, rule in rules.items():
        number = _check(policy, field, getattr(policy, field), **rule)
        if not rule.get("integer"):
            number = float(number)
        object.__setattr__(policy, field, number)


def _overflow(policy, iteration, term) -> NumericalError:
    """Return the error for a learning rate whose ``term`` overflowed a float."""
    return NumericalError(
        f"LRPolicy.{policy!r}: at iteration {iteration} the learning rate is "
        f"infinite, because {term} exceeds the largest float ({sys.float_info.max:g}); "
        "choose parameters that keep the rate finite up to max_iter"
    )


@dataclass(frozen=True)
class Fixed:
    """lr = base_lr."""

    base_lr: float

    def __post_init__(self):
        _check_fields(self, base_lr={"minimum": 0})

    def __call__(self, state) -> float:
        return float(self.base_lr)


@dataclass(frozen=True)
class Step:
    """lr = base_lr * gamma ** floor(iter / stepsize)."""

    base_lr: float
    gamma: float
    stepsize: int

    def __post_init__(self):
        _check_fields(
            self,
            base_lr={"minimum": 0},
            gamma={"minimum": 0},
            stepsize={"minimum": 1, "integer": True},
        )

    def __call__(self, state) -> float:
        steps = state.iter // self.stepsize
        try:
            return self.base_lr * self.gamma**steps
        except OverflowError:
            raise _overflow(self, state.iter, f"{self.gamma:g} ** {steps}") from None


@dataclass(frozen=True)
class Exp:
    """lr = base_lr * gamma ** iter."""

    base_lr: float
    gamma: float

    def __post_init__(self):
        _check_fields(self, base_lr={"minimum": 0}, gamma={"minimum": 0})

    def __call__(self, state) -> float:
        try:
            return self.base_lr * self.gamma**state.iter
        except OverflowError:
            raise _overflow(
                self, state.iter, f"{self.gamma:g} ** {state.iter}"
            ) from None


@dataclass(frozen=True)
class Inv:
    """lr = base_lr * (1 + gamma * iter) ** (-power)."""

    base_lr: float
    gamma: float
    power: float

    def __post_init__(self):
        _check_fields(self, base_lr={"minimum": 0}, gamma={"minimum": 0}, power={})

    def __call__(self, state) -> float:
        base = 1.0 + self.gamma * state.iter
        try:
            return self.base_lr * math.pow(base, -self.power)
        except OverflowError:
            raise _overflow(
                self,
                state.iter,
                f"(1 + {self.gamma:g} * {state.iter}) ** {-self.power:g}",
            ) from None


class Staged:
    """Other policies in turn, each for a number of iterations.

    ``Staged((5000, Fixed(0.1)), (3000, Fixed(0.01)), ...)``: the first policy
    serves 5000 updates (iterations 0 to 4999, as the solver's first update
    uses iteration 0), the next the 3000 after that, and the last one every
    iteration past the end. Each policy receives the global iteration.
    """

    namespace = "LRPolicy"
    # The module of the policies of the other kind, which a stage rejects.
    other_kind = "mochac.runtime.mom_policy"

    def __init__(self, *stages):
        if not stages:
            raise ConfigError(
                f"{self.namespace}.Staged: give at least one (n_iter, policy) stage"
            )
        checked = []
        for stage in stages:
            pair = isinstance(stage, tuple) and len(stage) == 2
            n_iter = as_int(stage[0]) if pair else None
            if n_iter is None or n_iter < 1 or not callable(stage[1]):
                raise ConfigError(
                    f"{self.namespace}.Staged: invalid stage {stage!r}; expected "
                    "(n_iter >= 1, policy)"
                )
            if type(stage[1]).__module__ == self.other_kind:
                raise ConfigError(
                    f"{self.namespace}.Staged: invalid stage {stage!r}; its policy "
                    f"belongs to another kind, so use {self.namespace}'s policies "
                    "in every stage"
                )
            # Imported here: solver_parameters imports the policy modules.
            from mochac.runtime.solver_parameters import check_policy_signature

            example = "Fixed(0.01)" if self.namespace == "LRPolicy" else "Fixed(0.9)"
            check_policy_signature(
                stage[1],
                "policy",
                f"{self.namespace}.{example}",
                f"{self.namespace}.Staged stage {stage!r}",
            )
            checked.append((n_iter, stage[1]))
        self.stages = tuple(checked)

    def __call__(self, state) -> float:
        end = 0
        for n_iter, policy in self.stages:
            end += n_iter
            if state.iter < end:
                return policy(state)
        return self.stages[-1][1](state)

    def __repr__(self):
        return f"{self.namespace}.Staged{self.stages!r}"


class DecayOnValidation:
    """A rate that decays each time the validation statistic gets worse.

    ``DecayOnValidation(base_lr, key, ratio=0.5, min_lr=1e-8,
    higher_better=True)`` starts at ``base_lr``. After ``setup(policy,
    validation, solver)`` it listens to a ValidationPerformance coffee
    break. Each time the statistic ``key`` (for example
    "accuracy-accuracy") is worse than the best value so far, the rate is
    multiplied by ``ratio``. The parameters and solver buffers are then
    reloaded from the newest snapshot that the solver's Snapshot coffee
    break saved no later than the best validation. A value equal to the best
    is not worse. Once the rate is below ``min_lr``, a worse value changes
    nothing. The defaults of ``ratio`` and ``min_lr`` are Mocha.jl's
    (src/solvers/policies.jl).

    Mocha compares each value with the previous one and reloads the newest
    snapshot. Comparing with the best instead means that after a decay, a
    value between the rejected one and the best still counts as worse, and
    that the reload never picks the snapshot of the rejected parameters.

    By default a higher statistic is better (``higher_better=True``), as for
    accuracy. Pass ``higher_better=False`` for a loss. Mocha's documentation
    contradicts itself on this default: it calls a lower statistic better,
    yet offers ``higher_better=false`` to change that.

    A snapshot that the solver saved at the iteration of a decay, before
    the validation ran, contains the rejected parameters. The decay rewrites
    it with the reloaded parameters and the decayed rate. A snapshot saved
    after the validation gets both anyway. So a run resumed from either one
    continues with the decayed rate and the good parameters.

    Snapshots also store the best value and its iteration, so a resumed run
    decays where the uninterrupted run would.

    NOTE: the reload restores parameters and solver buffers only. The
    iteration count, the data position and random streams go on, so a decay
    never repeats iterations.
    """

    def __init__(self, base_lr, key, ratio=0.5, min_lr=1e-8, *, higher_better=True):
        base_lr = _check(self, "base_lr", base_lr, 0)
        if isinstance(min_lr, bool):
            raise ConfigError(
                f"LRPolicy.DecayOnValidation: invalid min_lr={min_lr!r}; pass the "
                f"direction by keyword, higher_better={min_lr!r}"
            )
        min_lr = _check(self, "min_lr", min_lr, 0)
        if not isinstance(key, str) or not key:
            raise ConfigError(
                f"LRPolicy.DecayOnValidation: invalid key={key!r}; expected the name "
                "of a validation statistic such as 'accuracy-accuracy'"
            )
        ratio = _check(self, "ratio", ratio, 0)
        if ratio >= 1:
            raise ConfigError(
                f"LRPolicy.DecayOnValidation: invalid ratio={ratio!r}; expected a "
                "number in [0, 1)"
            )
        if not isinstance(higher_better, bool):
            raise ConfigError(
                "LRPolicy.DecayOnValidation: invalid "
                f"higher_better={higher_better!r}; expected True or False"
            )
        self.base_lr = base_lr
        self.key = key
        self.ratio = ratio
        self.min_lr = min_lr
        self.higher_better = higher_better
        self.learning_rate = float(base_lr)
        self.best = None
        self.best_iter = None
        # The iteration of the last validation decided on (on_validation).
        self.decided_at = None

    def __call__(self, state) -> float:
        return self.learning_rate

    # Names of the /solver attributes that keep the best validation.
    BEST_ATTRIBUTES = ("decay_on_validation_best", "decay_on_validation_best_iter")

    def restore(self, attrs) -> None:
        """Continue from the rate and the best validation stored in a snapshot's
        solver attributes.

        A snapshot saved before the first validation, or by an older version,
        has no best, so the policy then starts with none as a fresh one would.
        """
        # The snapshot predates any decision made since it was saved.
        self.decided_at = None
        self.learning_rate = float(attrs["learning_rate"])
        best_key, iter_key = self.BEST_ATTRIBUTES
        best, best_iter = as_real(attrs.get(best_key)), as_int(attrs.get(iter_key))
        if best is not None and best_iter is not None and math.isfinite(best):
            self.best, self.best_iter = float(best), best_iter
        else:
            # A best kept in memory may come from an iteration after the
            # snapshot's, of a solve() that ran before this one.
            self.best, self.best_iter = None, None

    def state_attrs(self) -> dict:
        """Return the /solver attributes that keep the best validation, or an
        empty dict before the first one."""
        if self.best is None:
            return {}
        best_key, iter_key = self.BEST_ATTRIBUTES
        return {best_key: self.best, iter_key: self.best_iter}

    def _record_best(self, solver) -> None:
        """Put the best validation into the solver state that snapshots store."""
        solver.state.policy_attrs = self.state_attrs()

    def setup(self, validation, solver) -> None:
        """Listen to ``validation`` (a ValidationPerformance) during ``solver``'s run.

        A second call with the same validation changes nothing, so the policy
        hears each validation once. Raises ConfigError when ``validation`` has
        no ``listeners`` list, as ValidationPerformance has, or ``solver`` is
        not a Solver.
        """
        if not isinstance(getattr(validation, "listeners", None), list):
            raise ConfigError(
                f"LRPolicy.DecayOnValidation: setup got {validation!r} as the "
                "validation; pass the ValidationPerformance coffee break of the "
                "solver: setup(policy, validation, solver)"
            )
        if not hasattr(solver, "breaks"):
            raise ConfigError(
                f"LRPolicy.DecayOnValidation: setup got {solver!r} as the solver; "
                "pass the Solver that runs the validation: "
                "setup(policy, validation, solver)"
            )
        # Bound methods of one object compare equal, so this finds the
        # listener that an earlier call added.
        if self.on_validation not in validation.listeners:
            validation.listeners.append(self.on_validation)

    def check_solver(self, solver) -> None:
        """Raise ConfigError unless ``solver`` validates for this policy and
        snapshots for it to reload; the solver calls this before training."""
        listening = [
            coffee_break
            for coffee_break, _, _ in solver.breaks
            if self.on_validation in getattr(coffee_break, "listeners", ())
        ]
        if not listening:
            raise ConfigError(
                "LRPolicy.DecayOnValidation: no coffee break of the solver reports "
                "to it, so it would never decay; add a ValidationPerformance "
                "coffee break and call setup(policy, validation, solver)"
            )
        for validation in listening:
            names = getattr(validation, "statistic_names", None)
            if names is None:
                continue
            values = sorted(name for name in names if not name.endswith("-count"))
            if self.key not in names:
                raise ConfigError(
                    f"LRPolicy.DecayOnValidation: the validation net reports no "
                    f"statistic {self.key!r}; available: {', '.join(values) or 'none'}"
                )
            if self.key not in values:
                # The count of validation samples never changes, so the rate
                # would never decay.
                raise ConfigError(
                    f"LRPolicy.DecayOnValidation: {self.key!r} counts the "
                    "validation samples and never changes; follow a measure of "
                    f"the net instead: {', '.join(values) or 'none'}"
                )
        if not self.snapshot_folders(solver):
            raise ConfigError(
                "LRPolicy.DecayOnValidation: the solver has no Snapshot coffee break "
                "to reload from; add one with add_coffee_break(solver, "
                "Snapshot(folder), ...)"
            )

    def is_worse(self, value: float) -> bool:
        if self.best is None:
            return False
        return value < self.best if self.higher_better else value > self.best

    def on_validation(self, solver, statistics) -> None:
        """Record the statistic, or decay the rate and reload the good snapshot."""
        if self.key not in statistics:
            raise ConfigError(
                f"LRPolicy.DecayOnValidation: the validation net reports no statistic "
                f"{self.key!r}; available: "
                f"{', '.join(sorted(k for k in statistics if not k.endswith('-count')))}"
            )
        value = float(statistics[self.key])
        iteration = solver.state.iter
        if iteration == self.decided_at:
            # A solve() stopped after this iteration's decision and runs the
            # validation again, whose value must not decay the rate twice.
            logger.info(
                "%s at iteration %d was decided on already; kept the rate %g",
                self.key,
                iteration,
                self.learning_rate,
            )
            return
        # The decision, with its reload and snapshot rewrites, completes
        # before a Ctrl-C takes effect.
        with held_signals():
            self._decide(solver, value, iteration)
            self.decided_at = iteration

    def _decide(self, solver, value: float, iteration: int) -> None:
        """Record ``value`` as the best, or decay the rate and reload."""
        if not self.is_worse(value):
            self.best, self.best_iter = value, iteration
            self._record_best(solver)
            # A snapshot saved at this iteration before the validation must
            # carry the new best too.
            self.rewrite_current_snapshots(solver)
            return
        if self.learning_rate < self.min_lr:
            logger.info(
                "%s = %g at iteration %d is worse than %g at iteration %d, but the "
                "learning rate %g is below min_lr=%g, so it stays",
                self.key,
                value,
                iteration,
                self.best,
                self.best_iter,
                self.learning_rate,
                self.min_lr,
            )
            return
        decayed = self.learning_rate * self.ratio
        logger.info(
            "%s = %g at iteration %d is worse than %g at iteration %d; learning "
            "rate decays to %g",
            self.key,
            value,
            iteration,
            self.best,
            self.best_iter,
            decayed,
        )
        # The rate decays only once the reload has worked, so an error in it
        # leaves the policy as it was.
        self.reload_best_snapshot(solver)
        self.learning_rate = decayed
        # Snapshots store the state's rate; the next update would set it too.
        solver.state.learning_rate = decayed
        self._record_best(solver)
        self.rewrite_current_snapshots(solver)

    def snapshot_folders(self, solver) -> list:
        return [
            coffee_break.folder
            for coffee_break, _, _ in solver.breaks
            if isinstance(coffee_break, Snapshot)
        ]

    def rewrite_current_snapshots(self, solver) -> None:
        """Save again the snapshots written at this iteration before the
        validation, so they hold its outcome: the best value, and after a decay
        the reloaded parameters and the decayed rate.

        A snapshot that the solver saves again after the breaks due after
        this validation is left to that save. Until then it lists this
        validation as still due, so a resume from it decides again from the
        state before the decision.
        """
        iteration = solver.state.iter
        for folder in self.snapshot_folders(solver):
            path = snapshot_path(folder, iteration)
            if solver.saves_again_after_breaks(path):
                logger.debug("%s is saved again after the coffee breaks", path)
            elif path.exists():
                solver.save_snapshot(path)
                logger.info("rewrote %s with the outcome of the validation", path)

    def reload_best_snapshot(self, solver) -> None:
        folders = self.snapshot_folders(solver)
        if not folders:
            raise ConfigError(
                "LRPolicy.DecayOnValidation: the solver has no Snapshot coffee break "
                "to reload from; add one with add_coffee_break(solver, "
                "Snapshot(folder), ...)"
            )
        candidates = [
            (iteration, path)
            for folder in folders
            for iteration, path in snapshot_iterations(folder)
            if iteration <= self.best_iter
        ]
        if not candidates:
            logger.warning(
                "no snapshot saved by iteration %d in %s; kept the current parameters",
                self.best_iter,
                ", ".join(str(folder) for folder in folders),
            )
            return
        _, path = max(candidates)
        net = solver.net
        buffers = None
        with open_model(path) as handle:
            # The buffers are checked before load_params changes the net, so a
            # damaged buffer leaves both the parameters and the buffers as
            # they were.
            if read_solver_attributes(handle, path) is not None:
                buffers = read_solver_buffers(handle["solver"], path, net.params)
            load_params(handle, net, path)
        if buffers is not None:
            solver.method.load_buffers(buffers, net.backend)
        logger.info("reloaded parameters and solver state from %s", path)
        # The gradients waiting for the next update came from the parameters
        # just replaced.
        solver.recompute_gradients()


class LRPolicy:
    """Mocha's namespace of learning-rate policies."""

    Fixed = Fixed
    Step = Step
    Exp = Exp
    Inv = Inv
    Staged = Staged
    DecayOnValidation = DecayOnValidation
