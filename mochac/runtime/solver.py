"""The solver loop; the methods (SGD, Nesterov, Adam) are in mochac.runtime.solvers.

    method = SGD()
    params = make_solver_parameters(method, max_iter=10000, regu_coef=0.0005,
                                    mom_policy=MomPolicy.Fixed(0.9),
                                    lr_policy=LRPolicy.Inv(0.01, 0.0001, 0.75),
                                    load_from="snapshots")
    solver = Solver(method, params)
    solver.add_coffee_break(TrainingSummary(), every_n_iter=100)
    solver.solve(net)

Each iteration runs forward (on the next batch), backward, the update and the
norm constraints due (mochac.constraints), in that order, then the coffee
breaks due at the new iteration count.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from mochac.constraints import apply_constraints
from mochac.errors import ConfigError, NumericalError, SnapshotError
from mochac.runtime.coffee_lounge import CoffeeLounge
from mochac.runtime.mom_policy import MomPolicy
from mochac.runtime.snapshot import (
    latest_snapshot,
    load_params,
    load_solver_state,
    open_model,
)
from mochac.runtime.solvers import SGD, Adam, Nesterov, summed_gradients

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


@dataclass
class SolverState:
    """Training progress: the iteration count and the last step's values."""

    iter: int = 0
    obj_val: float = math.nan
    learning_rate: float = 0.0
    momentum: float = 0.0
    method: str = ""

    def to_attrs(self) -> dict:
        return {
            "method": self.method,
            "iter": self.iter,
            "obj_val": self.obj_val,
            "learning_rate": self.learning_rate,
            "momentum": self.momentum,
        }


# A load_from path with one of these suffixes names a file; any other path
# that does not exist yet is a snapshot folder to be created.
MODEL_SUFFIXES = (".h5", ".hdf5", ".jld")

# Keys every method accepts; each method adds its own parameter_names.
SOLVER_KEYS = ("max_iter", "regu_coef", "lr_policy", "load_from")


def make_solver_parameters(method, **kwargs) -> dict:
    """Return the solver parameters: the method's defaults overridden by ``kwargs``.

    Keys for every method: max_iter (required), regu_coef (default 0.0005),
    lr_policy, load_from (a snapshot folder or file, default None). SGD and
    Nesterov add mom_policy (default MomPolicy.Fixed(0.0)), and accept
    ``momentum=m`` for mom_policy=MomPolicy.Fixed(m), as Mocha's CIFAR-10
    tutorial writes it. Adam adds beta1 (0.9), beta2 (0.999) and epsilon
    (1e-8). Raises ConfigError naming an unknown or invalid key.
    """
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
    max_iter = params.get("max_iter")
    if not isinstance(max_iter, int) or isinstance(max_iter, bool) or max_iter < 0:
        raise ConfigError(
            f"make_solver_parameters: invalid max_iter={max_iter!r}; expected an int >= 0"
        )
    regu = params["regu_coef"]
    if not isinstance(regu, (int, float)) or isinstance(regu, bool) or regu < 0:
        raise ConfigError(
            f"make_solver_parameters: invalid regu_coef={regu!r}; expected a number >= 0"
        )
    examples = {
        "lr_policy": "LRPolicy.Fixed(0.01)",
        "mom_policy": "MomPolicy.Fixed(0.9)",
    }
    for key, example in examples.items():
        if key in params and not callable(params[key]):
            raise ConfigError(
                f"make_solver_parameters: invalid {key}={params[key]!r}; expected a "
                f"policy such as {example}"
            )
    method.check_parameters(params)
    return params


class Solver:
    """Runs a method (SGD, Nesterov, Adam) with its parameters and coffee breaks."""

    def __init__(self, method, params: dict, progress=None):
        """``progress``: show a progress bar on stderr; None (default) shows it
        only when stderr is a terminal."""
        self.progress = progress
        self.method = method
        method.configure(params)
        self.params = params
        self.state = SolverState(method=method.name)
        self.net = None
        self.breaks: list[tuple[object, int | None, int | None]] = []
        self.lounge = CoffeeLounge()

    def add_coffee_break(self, coffee_break, every_n_iter=None, every_n_epoch=None):
        """Schedule a coffee break every ``every_n_iter`` iterations or epochs."""
        if (every_n_iter is None) == (every_n_epoch is None):
            raise ConfigError(
                f"add_coffee_break({type(coffee_break).__name__}): give exactly one of "
                "every_n_iter and every_n_epoch"
            )
        for value in (every_n_iter, every_n_epoch):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(
                    f"add_coffee_break({type(coffee_break).__name__}): invalid interval "
                    f"{value!r}; expected an int >= 1"
                )
        self.breaks.append((coffee_break, every_n_iter, every_n_epoch))

    def setup_coffee_lounge(self, save_into=None, every_n_iter=1, file_exists="merge"):
        """Keep statistics in a CoffeeLounge saved to ``save_into`` (HDF5)."""
        self.lounge = CoffeeLounge(save_into, every_n_iter, file_exists)

    # --- resuming -------------------------------------------------------------

    def _restore(self, net):
        load_from = self.params.get("load_from")
        if not load_from:
            return
        path = Path(load_from)
        if not path.exists() and path.suffix not in MODEL_SUFFIXES:
            # The tutorial's first run names a snapshot folder that the
            # Snapshot coffee break has not created yet.
            logger.info(
                "snapshot folder %s does not exist yet; training from scratch", path
            )
            return
        if path.is_dir():
            found = latest_snapshot(path)
            if found is None:
                logger.info("no snapshot in %s; training from scratch", path)
                return
            path = found
        elif not path.exists():
            raise SnapshotError(
                f"load_from={str(load_from)!r}: file not found; fix the path, or name "
                "a snapshot folder"
            )
        with open_model(path) as handle:
            load_params(handle, net, path)
            restored = load_solver_state(handle, net, path)
        if restored is None:
            logger.info(
                "%s contains no solver state: starting at iteration 0 from its parameters "
                "(fine-tuning)",
                path,
            )
            return
        attrs, buffers = restored
        saved_method = str(attrs.get("method", ""))
        if saved_method != self.method.name:
            raise SnapshotError(
                f"{path} was saved by solver {saved_method}, but this solver is "
                f"{self.method.name}; resume with {saved_method} or load the parameters "
                "alone with load_snapshot"
            )
        self.method.load_buffers(buffers, net.backend)
        restore_policy = getattr(self.params["lr_policy"], "restore", None)
        if restore_policy is not None:
            restore_policy(attrs)
        self.state.iter = int(attrs["iter"])
        self.state.obj_val = float(attrs["obj_val"])
        logger.info("resumed from %s at iteration %d", path, self.state.iter)

    # --- the loop -------------------------------------------------------------

    def _due(self, last_epoch: int, epoch: int):
        for coffee_break, every_n_iter, every_n_epoch in self.breaks:
            if (
                every_n_iter is not None
                and self.state.iter % every_n_iter == 0
                or (
                    every_n_epoch is not None
                    and epoch != last_epoch
                    and epoch % every_n_epoch == 0
                )
            ):
                yield coffee_break

    def _epoch(self, net) -> int:
        return min((source.epoch for source in net.sources.values()), default=0)

    def solve(self, net):
        """Train ``net`` until ``max_iter`` iterations; return the solver state."""
        params = self.params
        if not any(info.layer.has_loss for info in net.ir.layers):
            raise ConfigError(
                f"net '{net.name}' has no loss layer, so the solver has nothing to "
                "minimize; add one such as SoftmaxLossLayer"
            )
        # Listeners such as LRPolicy.DecayOnValidation reach the net here.
        self.net = net
        self._restore(net)
        state = self.state
        # The iteration this call started from, after any resume.
        self.start_iter = state.iter
        if state.iter > 0 and state.iter >= params["max_iter"]:
            logger.info(
                "net '%s' is already at iteration %d, max_iter=%d; nothing to train "
                "(raise max_iter to train on)",
                net.name,
                state.iter,
                params["max_iter"],
            )
        lr_policy = params["lr_policy"]
        # Adam has no momentum, so its state reports 0.
        mom_policy = params.get("mom_policy", lambda state: 0.0)
        regu_coef = float(params["regu_coef"])

        if state.iter == 0:
            # Report the initial objective without using up a training batch.
            saved = {i: s.state_dict() for i, s in net.sources.items()}
            state.obj_val = net.forward()
            for index, source in net.sources.items():
                source.load_state_dict(saved[index])
            state.learning_rate = lr_policy(state)
            state.momentum = mom_policy(state)
            for coffee_break in self._due(-1, -1):
                coffee_break.enjoy(self, net)
            self.lounge.maybe_save(state.iter, force=True)

        bar = self._progress_bar(state.iter, params["max_iter"])
        while state.iter < params["max_iter"]:
            last_epoch = self._epoch(net)
            state.learning_rate = lr_policy(state)
            state.momentum = mom_policy(state)
            if not (
                math.isfinite(state.learning_rate) and math.isfinite(state.momentum)
            ):
                raise NumericalError(
                    f"iteration {state.iter}: the policies gave learning rate "
                    f"{state.learning_rate} and momentum {state.momentum}; check "
                    "lr_policy and mom_policy"
                )
            state.obj_val = net.train_step(
                self.method,
                state.learning_rate,
                state.momentum,
                regu_coef,
                iteration=state.iter,
            )
            state.iter += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(obj_val=f"{state.obj_val:.4f}", refresh=False)
            apply_constraints(net, state.iter)
            for coffee_break in self._due(last_epoch, self._epoch(net)):
                coffee_break.enjoy(self, net)
            self.lounge.maybe_save(state.iter)
        if bar is not None:
            bar.close()
        self.lounge.maybe_save(state.iter, force=True)
        return state

    def _progress_bar(self, start: int, end: int):
        """Return a tqdm bar over the remaining iterations, or None when off."""
        show = self.progress if self.progress is not None else sys.stderr.isatty()
        if not show or start >= end:
            return None
        from tqdm import tqdm

        return tqdm(total=end, initial=start, unit="it", desc="training")
