"""Layer configs with Mocha's names, fields and defaults, one module per family."""

from mochac.layers.base import Layer, ParamSpec
from mochac.layers.convolution import ConvolutionLayer
from mochac.layers.data import HDF5DataLayer, MemoryDataLayer
from mochac.layers.inner_product import InnerProductLayer
from mochac.layers.loss import SoftmaxLossLayer, SquareLossLayer
from mochac.layers.pooling import Pooling, PoolingLayer
from mochac.layers.softmax import SoftmaxLayer
from mochac.layers.statistics import AccuracyLayer
from mochac.layers.utility import IdentityLayer, ReshapeLayer, SplitLayer

__all__ = [
    "AccuracyLayer",
    "ConvolutionLayer",
    "HDF5DataLayer",
    "IdentityLayer",
    "InnerProductLayer",
    "Layer",
    "MemoryDataLayer",
    "ParamSpec",
    "Pooling",
    "PoolingLayer",
    "ReshapeLayer",
    "SoftmaxLayer",
    "SoftmaxLossLayer",
    "SplitLayer",
    "SquareLossLayer",
]
