"""Stochastic gradient descent with momentum, Mocha's update rule."""

from __future__ import annotations

from mochac.runtime.lr_policy import LRPolicy
from mochac.runtime.mom_policy import MomPolicy
from mochac.runtime.solvers.base import SolverMethod, summed_gradients


class SGD(SolverMethod):
    """Stochastic gradient descent with momentum.

    For each parameter W with gradient g (regularization included) and local
    learning-rate factor f: history = momentum * history - lr * f * g, then
    W += history. ``history`` is saved in snapshots.
    """

    name = "SGD"
    buffer_names = ("history",)
    parameter_names = ("mom_policy",)
    native_code = 0

    @property
    def history(self):
        return self.buffers["history"]

    @history.setter
    def history(self, value):
        self.buffers["history"] = value

    def default_parameters(self) -> dict:
        return {"lr_policy": LRPolicy.Fixed(0.01), "mom_policy": MomPolicy.Fixed(0.0)}

    def numpy_update(self, net, learning_rate, momentum, regu_coef, iteration=None):
        """Update the parameters in NumPy. ``iteration`` is unused, and the
        gradient arrays receive the regularization term."""
        for info, spec, param, grad in summed_gradients(net):
            spec.regularizer.add_gradient(param, grad, regu_coef)
            history = self.buffer("history", (info.name, spec.name), param)
            history *= param.dtype.type(momentum)
            history -= param.dtype.type(learning_rate * spec.lr) * grad
            param += history
