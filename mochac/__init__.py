"""mochac: Mocha.jl's nets, compiled to native code.

Define layers as in Mocha, build a Net on a backend, train it with a Solver:

    from mochac import *
    backend = CPUBackend()
    net = Net("train", backend, [data, conv, pool, ip, loss])
"""

# mochac leaves OMP_WAIT_POLICY to the user: it is read by every OpenMP
# runtime in the process, PyTorch's included.

from mochac import neurons as Neurons
from mochac.caffe import load_caffe_hdf5, load_network
from mochac.constraints import L2Cons, NoCons
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
    NullInitializer,
    OrthogonalInitializer,
    XavierInitializer,
)
from mochac.layers import (
    AccuracyLayer,
    ArgmaxLayer,
    AsyncHDF5DataLayer,
    BinaryAccuracyLayer,
    BinaryCrossEntropyLossLayer,
    ChannelPoolingLayer,
    ConcatLayer,
    ConvolutionLayer,
    CropLayer,
    DropoutLayer,
    ElementWiseFunctors,
    ElementWiseLayer,
    GaussianKLLossLayer,
    HDF5DataLayer,
    HDF5OutputLayer,
    HingeLossLayer,
    IdentityLayer,
    Index2OnehotLayer,
    InnerProductLayer,
    LRNLayer,
    LRNMode,
    MemoryDataLayer,
    MemoryOutputLayer,
    MultinomialLogisticLossLayer,
    Pooling,
    PoolingLayer,
    PowerLayer,
    RandomMaskLayer,
    RandomNormalLayer,
    ReshapeLayer,
    SoftlabelSoftmaxLossLayer,
    SoftmaxLayer,
    SoftmaxLossLayer,
    SplitLayer,
    SquareLossLayer,
    TiedInnerProductLayer,
)
from mochac.mocha_api import (
    add_coffee_break,
    backward,
    destroy,
    forward,
    freeze,
    freeze_all,
    init,
    load_snapshot,
    log_to_console,
    setup,
    setup_coffee_lounge,
    shutdown,
    solve,
    unfreeze,
)
from mochac.regularizers import L1Regu, L2Regu, NoRegu
from mochac.runtime.backend import CPUBackend
from mochac.runtime.coffee_breaks import (
    Snapshot,
    TrainingSummary,
    ValidationPerformance,
)
from mochac.runtime.gpu_backend import GPUBackend
from mochac.runtime.lr_policy import LRPolicy
from mochac.runtime.mom_policy import MomPolicy
from mochac.runtime.net import Net
from mochac.runtime.solver import SGD, Adam, Nesterov, Solver, make_solver_parameters
from mochac.transformers import DataTransformers
from mochac.version import __version__

__all__ = [
    "SGD",
    "AccuracyLayer",
    "Adam",
    "ArgmaxLayer",
    "AsyncHDF5DataLayer",
    "BinaryAccuracyLayer",
    "BinaryCrossEntropyLossLayer",
    "CPUBackend",
    "ChannelPoolingLayer",
    "CompileError",
    "ConcatLayer",
    "ConfigError",
    "ConstantInitializer",
    "ConvolutionLayer",
    "CropLayer",
    "DataError",
    "DataTransformers",
    "DropoutLayer",
    "ElementWiseFunctors",
    "ElementWiseLayer",
    "GPUBackend",
    "GaussianInitializer",
    "GaussianKLLossLayer",
    "HDF5DataLayer",
    "HDF5OutputLayer",
    "HingeLossLayer",
    "IdentityLayer",
    "Index2OnehotLayer",
    "InnerProductLayer",
    "L1Regu",
    "L2Cons",
    "L2Regu",
    "LRNLayer",
    "LRNMode",
    "LRPolicy",
    "MemoryDataLayer",
    "MemoryOutputLayer",
    "MochacError",
    "MomPolicy",
    "MultinomialLogisticLossLayer",
    "Nesterov",
    "Net",
    "Neurons",
    "NoCons",
    "NoRegu",
    "NullInitializer",
    "NumericalError",
    "OrthogonalInitializer",
    "Pooling",
    "PoolingLayer",
    "PowerLayer",
    "RandomMaskLayer",
    "RandomNormalLayer",
    "ReshapeLayer",
    "ShapeError",
    "Snapshot",
    "SnapshotError",
    "SoftlabelSoftmaxLossLayer",
    "SoftmaxLayer",
    "SoftmaxLossLayer",
    "Solver",
    "SplitLayer",
    "SquareLossLayer",
    "TiedInnerProductLayer",
    "TopologyError",
    "TrainingSummary",
    "ValidationPerformance",
    "XavierInitializer",
    "__version__",
    "add_coffee_break",
    "backward",
    "destroy",
    "forward",
    "freeze",
    "freeze_all",
    "init",
    "load_caffe_hdf5",
    "load_network",
    "load_snapshot",
    "log_to_console",
    "make_solver_parameters",
    "setup",
    "setup_coffee_lounge",
    "shutdown",
    "solve",
    "unfreeze",
]
