"""Solver parameters: make_solver_parameters, SolverParameters and their checks.

Solver checks the parameters again when it is built, with the same
functions, because the dict may have changed since it was made.
"""

from __future__ import annotations

import inspect
import math
import os

from mochac.errors import ConfigError
from mochac.runtime.mom_policy import MomPolicy
from mochac.runtime.solvers import SolverMethod
from mochac.values import as_int, as_real

# Keys every method accepts; each method adds its own parameter_names.
SOLVER_KEYS = ("max_iter", "regu_coef", "lr_policy", "load_from")

# A valid policy for each policy key, which messages show as the fix.
POLICY_EXAMPLES = {
    "lr_policy": "LRPolicy.Fixed(0.01)",
    "mom_policy": "MomPolicy.Fixed(0.9)",
}


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
    # A policy of the other kind returns numbers too, so only its module
    # shows that a momentum policy was given as the learning rate's.
    other_kind = {
        "lr_policy": "mochac.runtime.mom_policy",
        "mom_policy": "mochac.runtime.lr_policy",
    }
    for key, example in POLICY_EXAMPLES.items():
        if key not in params:
            continue
        policy = params[key]
        if not callable(policy) or type(policy).__module__ == other_kind[key]:
            raise ConfigError(
                f"{caller}: invalid {key}={policy!r}; expected a "
                f"policy such as {example}"
            )
        check_policy_signature(policy, key, example, caller)
    return params


def check_policy_signature(policy, key: str, example: str, caller: str) -> None:
    """Raise ConfigError unless ``policy`` is an object that the solver can
    call as policy(state), so the error comes before training starts."""
    if isinstance(policy, type):
        raise ConfigError(
            f"{caller}: {key} is the class {policy.__qualname__}; pass an "
            f"instance with its parameters, such as {example}"
        )
    try:
        signature = inspect.signature(policy)
    except (TypeError, ValueError):
        # Builtins and some C callables have no signature to check.
        return
    try:
        signature.bind(None)
    except TypeError:
        raise ConfigError(
            f"{caller}: invalid {key}={policy!r}: its signature {signature} "
            "does not accept the one argument that the solver passes, the solver "
            "state; define it as def policy(state) returning a number"
        ) from None


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
