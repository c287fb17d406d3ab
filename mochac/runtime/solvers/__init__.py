"""Solver methods: how one iteration's gradients change the parameters.

Each method lives in its own module (sgd, nesterov, adam) and follows the
interface of ``SolverMethod`` in base.py.
"""

from mochac.runtime.solvers.adam import Adam
from mochac.runtime.solvers.base import SolverMethod, summed_gradients
from mochac.runtime.solvers.nesterov import Nesterov
from mochac.runtime.solvers.sgd import SGD

__all__ = ["SGD", "Adam", "Nesterov", "SolverMethod", "summed_gradients"]
