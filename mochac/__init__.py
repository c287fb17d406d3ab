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

from mochac import neurons as Neurons  # noqa: E402
from mochac.errors import (  # noqa: E402
    CompileError,
    ConfigError,
    DataError,
    MochacError,
    NumericalError,
    ShapeError,
    SnapshotError,
    TopologyError,
)
from mochac.initializers import (  # noqa: E402
    ConstantInitializer,
    GaussianInitializer,
    XavierInitializer,
)
from mochac.layers import (  # noqa: E402
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
from mochac.mocha_api import (  # noqa: E402
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
from mochac.regularizers import L2Regu, NoRegu  # noqa: E402
from mochac.runtime.backend import CPUBackend  # noqa: E402
from mochac.runtime.coffee_breaks import (  # noqa: E402
    Snapshot,
    TrainingSummary,
    ValidationPerformance,
)
from mochac.runtime.lr_policy import LRPolicy  # noqa: E402
from mochac.runtime.mom_policy import MomPolicy  # noqa: E402
from mochac.runtime.net import Net  # noqa: E402
from mochac.runtime.solver import SGD, Solver, make_solver_parameters  # noqa: E402
from mochac.version import __version__  # noqa: E402

__all__ = [
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
    "MemoryDataLayer",
    "MochacError",
    "Net",
    "Neurons",
    "NoRegu",
    "NumericalError",
    "Pooling",
    "PoolingLayer",
    "ReshapeLayer",
    "ShapeError",
    "SnapshotError",
    "SoftmaxLayer",
    "SoftmaxLossLayer",
    "SplitLayer",
    "SquareLossLayer",
    "TopologyError",
    "XavierInitializer",
    "__version__",
    "LRPolicy",
    "MomPolicy",
    "SGD",
    "Snapshot",
    "Solver",
    "TrainingSummary",
    "ValidationPerformance",
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
