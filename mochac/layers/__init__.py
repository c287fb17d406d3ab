"""Layer configs with Mocha's names, fields and defaults, one module per family."""

from mochac.layers.argmax import ArgmaxLayer
from mochac.layers.base import Layer, ParamSpec
from mochac.layers.channel_pooling import ChannelPoolingLayer
from mochac.layers.concat import ConcatLayer
from mochac.layers.convolution import ConvolutionLayer
from mochac.layers.crop import CropLayer
from mochac.layers.data import AsyncHDF5DataLayer, HDF5DataLayer, MemoryDataLayer
from mochac.layers.dropout import DropoutLayer, RandomMaskLayer
from mochac.layers.elementwise import ElementWiseFunctors, ElementWiseLayer
from mochac.layers.elementwise_loss import (
    BinaryCrossEntropyLossLayer,
    GaussianKLLossLayer,
    HingeLossLayer,
)
from mochac.layers.index2onehot import Index2OnehotLayer
from mochac.layers.inner_product import InnerProductLayer
from mochac.layers.loss import (
    MultinomialLogisticLossLayer,
    SoftlabelSoftmaxLossLayer,
    SoftmaxLossLayer,
    SquareLossLayer,
)
from mochac.layers.normalization import LRNLayer, LRNMode
from mochac.layers.output import HDF5OutputLayer, MemoryOutputLayer
from mochac.layers.pooling import Pooling, PoolingLayer
from mochac.layers.power import PowerLayer
from mochac.layers.random_normal import RandomNormalLayer
from mochac.layers.softmax import SoftmaxLayer
from mochac.layers.statistics import AccuracyLayer, BinaryAccuracyLayer
from mochac.layers.tied_inner_product import TiedInnerProductLayer
from mochac.layers.utility import IdentityLayer, ReshapeLayer, SplitLayer

__all__ = [
    "AccuracyLayer",
    "ArgmaxLayer",
    "AsyncHDF5DataLayer",
    "BinaryAccuracyLayer",
    "BinaryCrossEntropyLossLayer",
    "ChannelPoolingLayer",
    "ConcatLayer",
    "ConvolutionLayer",
    "CropLayer",
    "DropoutLayer",
    "ElementWiseFunctors",
    "ElementWiseLayer",
    "GaussianKLLossLayer",
    "HDF5DataLayer",
    "HDF5OutputLayer",
    "HingeLossLayer",
    "IdentityLayer",
    "Index2OnehotLayer",
    "InnerProductLayer",
    "LRNLayer",
    "LRNMode",
    "Layer",
    "MemoryDataLayer",
    "MemoryOutputLayer",
    "MultinomialLogisticLossLayer",
    "ParamSpec",
    "Pooling",
    "PoolingLayer",
    "PowerLayer",
    "RandomMaskLayer",
    "RandomNormalLayer",
    "ReshapeLayer",
    "SoftlabelSoftmaxLossLayer",
    "SoftmaxLayer",
    "SoftmaxLossLayer",
    "SplitLayer",
    "SquareLossLayer",
    "TiedInnerProductLayer",
]
