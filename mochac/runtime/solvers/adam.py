"""Adam (Kingma and Ba, "Adam: A Method for Stochastic Optimization", 2015)."""

from __future__ import annotations

import math

import numpy as np

from mochac.errors import ConfigError
from mochac.runtime.lr_policy import LRPolicy
from mochac.runtime.solvers.base import SolverMethod, check_fraction, summed_gradients
from mochac.values import as_real


class Adam(SolverMethod):
    """Adam with bias correction, Algorithm 1 of Kingma and Ba.

    At the t-th update (t = solver iteration + 1), for each parameter W with
    gradient g (regularization included):

        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        W -= lr * (m / (1 - beta1**t)) / (sqrt(v / (1 - beta2**t)) + epsilon)

    Solver parameters: lr_policy, beta1 (0.9), beta2 (0.999), epsilon (1e-8).
    As in Mocha, the layers' local learning-rate factors are ignored because
    Adam scales each parameter's step itself. ``first_moment`` (m) and
    ``second_moment`` (v) are saved in snapshots.
    """

    name = "Adam"
    buffer_names = ("first_moment", "second_moment")
    parameter_names = ("beta1", "beta2", "epsilon")
    native_code = 2
    requires_iteration = True

    def __init__(self):
        super().__init__()
        self.beta1, self.beta2, self.epsilon = 0.9, 0.999, 1e-8

    def default_parameters(self) -> dict:
        return {
            "lr_policy": LRPolicy.Fixed(0.001),
            "beta1": 0.9,
            "beta2": 0.999,
            "epsilon": 1e-8,
        }

    def check_parameters(self, params: dict) -> None:
        check_fraction(self.name, "beta1", params["beta1"])
        check_fraction(self.name, "beta2", params["beta2"])
        epsilon = as_real(params["epsilon"])
        # An infinite epsilon makes every step lr * m / inf = 0, so training
        # would silently change nothing.
        if epsilon is None or not math.isfinite(epsilon) or not epsilon > 0:
            raise ConfigError(
                f"make_solver_parameters(Adam): invalid epsilon={params['epsilon']!r}; "
                "expected a finite number > 0, such as 1e-8"
            )

    def configure(self, params: dict) -> None:
        self.beta1 = float(params["beta1"])
        self.beta2 = float(params["beta2"])
        self.epsilon = float(params["epsilon"])

    def numpy_update(self, net, learning_rate, momentum, regu_coef, iteration=None):
        """Update the parameters in NumPy.

        ``iteration`` is the number of updates done before this one, so the
        bias correction stays exact after a resume. ``momentum`` is unused.
        """
        if iteration is None:
            raise ConfigError(
                "Adam.update: missing iteration; pass the number of updates done so far"
            )
        t = iteration + 1
        beta1, beta2 = self.beta1, self.beta2
        # ``step`` carries m's bias correction, and dividing sqrt(v) by
        # ``root_correction`` carries v's.
        step = learning_rate / (1.0 - beta1**t)
        root_correction = math.sqrt(1.0 - beta2**t)
        for info, spec, param, grad in summed_gradients(net):
            spec.regularizer.add_gradient(param, grad, regu_coef)
            key = (info.name, spec.name)
            first = self.buffer("first_moment", key, param)
            second = self.buffer("second_moment", key, param)
            dtype = param.dtype.type
            first *= dtype(beta1)
            first += dtype(1.0 - beta1) * grad
            second *= dtype(beta2)
            second += dtype(1.0 - beta2) * grad * grad
            denominator = np.sqrt(second) / dtype(root_correction) + dtype(self.epsilon)
            param -= dtype(step) * first / denominator
