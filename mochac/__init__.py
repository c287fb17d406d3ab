"""mochac: Mocha.jl's nets, compiled to native code.

Define layers as in Mocha, build a Net on a backend, train it with a Solver:

    from mochac import *
    backend = CPUBackend()
    net = Net("train", backend, [data, conv, pool, ip, loss])
"""

import os

# OpenMP threads that spin after a parallel region steal the core OpenBLAS's
# own threads need next; waiting passively keeps the two pools from fighting.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from mochac import neurons as Neurons
from mochac.errors import (
    CompileError,
    ConfigError,
    DataError,
    MochacError,
    NumericalError,
    ShapeError,
    SnapshotError,
    TopologyError,
)
from mochac.initializers import (
    ConstantInitializer,
    GaussianInitializer,
    XavierInitializer,
)
from mochac.layers import (
    AccuracyLayer,
    ConvolutionLayer,
    HDF5DataLayer,
    IdentityLayer,
    InnerProductLayer,
    MemoryDataLayer,
    Pooling,
    PoolingLayer,
    ReshapeLayer,
    SoftmaxLayer,
    SoftmaxLossLayer,
    SplitLayer,
    SquareLossLayer,
)
from mochac.mocha_api import (
    add_coffee_break,
    backward,
    destroy,
    forward,
    init,
    load_snapshot,
    log_to_console,
    setup_coffee_lounge,
    shutdown,
    solve,
)
from mochac.regularizers import L2Regu, NoRegu
from mochac.runtime.backend import CPUBackend
from mochac.runtime.coffee_breaks import (
    Snapshot,
    TrainingSummary,
    ValidationPerformance,
)
from mochac.runtime.lr_policy import LRPolicy
from mochac.runtime.mom_policy import MomPolicy
from mochac.runtime.net import Net
from mochac.runtime.solver import SGD, Solver, make_solver_parameters
from mochac.version import __version__

__all__ = [
    "SGD",
    "AccuracyLayer",
    "CPUBackend",
    "CompileError",
    "ConfigError",
    "ConstantInitializer",
    "ConvolutionLayer",
    "DataError",
    "GaussianInitializer",
    "HDF5DataLayer",
    "IdentityLayer",
    "InnerProductLayer",
    "L2Regu",
    "LRPolicy",
    "MemoryDataLayer",
    "MochacError",
    "MomPolicy",
    "Net",
    "Neurons",
    "NoRegu",
    "NumericalError",
    "Pooling",
    "PoolingLayer",
    "ReshapeLayer",
    "ShapeError",
    "Snapshot",
    "SnapshotError",
    "SoftmaxLayer",
    "SoftmaxLossLayer",
    "Solver",
    "SplitLayer",
    "SquareLossLayer",
    "TopologyError",
    "TrainingSummary",
    "ValidationPerformance",
    "XavierInitializer",
    "__version__",
    "add_coffee_break",
    "backward",
    "destroy",
    "forward",
    "init",
    "load_snapshot",
    "log_to_console",
    "make_solver_parameters",
    "setup_coffee_lounge",
    "shutdown",
    "solve",
]
