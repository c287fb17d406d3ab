"""Nesterov's accelerated gradient in Mocha's look-ahead form."""

from __future__ import annotations

from mochac.runtime.solvers.base import summed_gradients
from mochac.runtime.solvers.sgd import SGD


class Nesterov(SGD):
    """Stochastic Nesterov accelerated gradient.

    With momentum mu, step s = lr * f (f: the local learning-rate factor) and
    gradient g taken at the current W (regularization included):

        history_new = mu * history - s * g
        W += mu * history_new - s * g

    This is the look-ahead form of Nesterov's method, the same as
    W += (1 + mu) * history_new - mu * history. Its parameters are those of
    SGD: lr_policy and mom_policy. ``history`` is saved in snapshots.
    """

    name = "Nesterov"
    native_code = 1

    def numpy_update(self, net, learning_rate, momentum, regu_coef, iteration=None):
        """Update the parameters in NumPy. ``iteration`` is unused."""
        for info, spec, param, grad in summed_gradients(net):
            spec.regularizer.add_gradient(param, grad, regu_coef)
            history = self.buffer("history", (info.name, spec.name), param)
            mu = param.dtype.type(momentum)
            step = param.dtype.type(learning_rate * spec.lr) * grad
            history *= mu
            history -= step
            param += mu * history
            param -= step
