"""The same net in PyTorch, built from a compiled mochac net, as a timing peer.

Each layer of the net's IR maps to its PyTorch module with the same
geometry, and the parameters are copied from the mochac net, so both start
from the same initialization. SGD uses torch.optim.SGD with the same
momentum and per-parameter learning-rate factors.

NOTE: PyTorch's momentum form (v = m v + g; w -= lr v) equals Mocha's
(v = m v - lr g; w += v) only while the learning rate is fixed, which is how
the benchmark runs.
"""

from __future__ import annotations

import numpy as np

from mochac.errors import ConfigError
from mochac.layers import (
    ConvolutionLayer,
    InnerProductLayer,
    PoolingLayer,
    SoftmaxLossLayer,
)
from mochac.layers.normalization import LRNLayer, WithinChannelLRN
from mochac.layers.pooling import MaxPooling


def _within_channel_lrn(torch, layer):
    """Return a module for LRN over the k x k positions around each value."""

    class WithinChannelLRN(torch.nn.Module):
        def forward(self, x):
            # The mean of x**2 over the window, padding counted, is the sum / n.
            mean = torch.nn.functional.avg_pool2d(
                x * x, layer.kernel, stride=1, padding=layer.kernel // 2
            )
            return x * (layer.shift + layer.scale * mean) ** (-layer.power)

    return WithinChannelLRN()


def _host_copy(array) -> np.ndarray:
    """Return ``array`` as a NumPy array, copied to the host when it is a
    CuPy array (a GPUNet's parameter), which torch.from_numpy rejects."""
    get = getattr(array, "get", None)
    return array if get is None else get()


# The set_to_none argument of train_step's zero_grad(). True is
# Optimizer.zero_grad's default (read in PyTorch 2.13), so backward writes
# fresh gradient tensors instead of adding into zeroed ones, as a plain
# PyTorch training loop does.
ZERO_GRAD_SET_TO_NONE = True

# Ends the errors of layers the peer cannot mirror.
NO_PEER_HINT = "; time mochac alone with --no-peer"


def _activation(torch, neuron):
    """Return the PyTorch module of a mochac neuron, None for Identity."""
    name = type(neuron).__name__
    if name == "Identity":
        return None
    if name == "ReLU":
        if neuron.epsilon == 0:
            return torch.nn.ReLU()
        # max(epsilon, x): x above the threshold, epsilon elsewhere.
        return torch.nn.Threshold(neuron.epsilon, neuron.epsilon)
    if name == "LReLU":
        return torch.nn.LeakyReLU(neuron.SLOPE)
    if name == "Sigmoid":
        return torch.nn.Sigmoid()
    if name == "Tanh":
        return torch.nn.Tanh()
    if name == "Exponential":

        class Exponential(torch.nn.Module):
            def forward(self, x):
                return torch.exp(x)

        return Exponential()
    raise ConfigError(
        f"the PyTorch peer has no equivalent of neuron {name}{NO_PEER_HINT}"
    )


class TorchNet:
    """A PyTorch module, optimizer and batch tensors mirroring a mochac net."""

    def __init__(self, net, learning_rate=0.01, momentum=0.9, regu_coef=0.0005):
        import torch

        self.torch = torch
        self.net = net
        modules = {}
        self.steps = []
        groups = []
        for index in net.ir.forward_order:
            info = net.ir.layers[index]
            layer = info.layer
            if layer.is_source:
                continue
            bottom, top = (layer.bottoms[0], layer.tops[0] if layer.tops else None)
            activation = None
            if isinstance(layer, ConvolutionLayer):
                (kh, kw), stride, pad = layer.kernel_hw, layer.stride_hw, layer.pad_hw
                module = torch.nn.Conv2d(
                    info.bottom_shapes[0][1],
                    layer.n_filter,
                    (kh, kw),
                    stride=stride,
                    padding=pad,
                    groups=layer.n_group,
                )
                weights = ("filter", "bias")
                activation = _activation(torch, layer.neuron)
            elif isinstance(layer, InnerProductLayer):
                features = int(np.prod(info.bottom_shapes[0][1:]))
                module = torch.nn.Linear(features, layer.output_dim)
                weights = ("weight", "bias")
                activation = _activation(torch, layer.neuron)
            elif isinstance(layer, PoolingLayer):
                kind = (
                    torch.nn.MaxPool2d
                    if isinstance(layer.pooling, MaxPooling)
                    else torch.nn.AvgPool2d
                )
                module = kind(
                    layer.kernel_hw, layer.stride_hw, layer.pad_hw, ceil_mode=True
                )
                weights = ()
                activation = _activation(torch, layer.neuron)
            elif isinstance(layer, LRNLayer) and layer.kernel % 2 == 1:
                if isinstance(layer.mode, WithinChannelLRN):
                    module = _within_channel_lrn(torch, layer)
                else:
                    module = torch.nn.LocalResponseNorm(
                        layer.kernel, alpha=layer.scale, beta=layer.power, k=layer.shift
                    )
                weights = ()
            elif isinstance(layer, SoftmaxLossLayer):
                module = None
                weights = ()
            else:
                raise ConfigError(
                    f"layer '{info.name}': the PyTorch peer has no equivalent of "
                    f"{type(layer).__name__}{NO_PEER_HINT}"
                )
            if weights:
                with torch.no_grad():
                    module.weight.copy_(
                        torch.from_numpy(_host_copy(net.params[info.name][weights[0]]))
                    )
                    module.bias.copy_(
                        torch.from_numpy(_host_copy(net.params[info.name][weights[1]]))
                    )
                weight_spec, bias_spec = info.params
                for parameter, spec in (
                    (module.weight, weight_spec),
                    (module.bias, bias_spec),
                ):
                    decay = 2 * spec.regularizer.coefficient * regu_coef
                    groups.append(
                        {
                            "params": [parameter],
                            "lr": learning_rate * spec.lr,
                            "weight_decay": decay,
                        }
                    )
            if module is not None:
                modules[info.name.replace(".", "_")] = module
            self.steps.append(
                (info.name.replace(".", "_"), layer, bottom, top, activation)
            )
        self.model = torch.nn.ModuleDict(modules)
        self.optimizer = torch.optim.SGD(groups, lr=learning_rate, momentum=momentum)
        data = next(iter(net.sources.values()))
        # The first top of the data layer carries the images, the second the
        # labels, whatever their names.
        self.input_blob = data.layer.tops[0]
        self.x = torch.from_numpy(
            np.ascontiguousarray(data.arrays[0][: data.batch_size])
        )
        labels = data.arrays[1][: data.batch_size].reshape(-1)
        self.y = torch.from_numpy(labels.astype(np.int64))

    def outputs(self, x):
        """Return the input of the loss layer (the net's scores) for images ``x``."""
        blobs = {self.input_blob: x}
        for name, layer, bottom, top, activation in self.steps:
            value = blobs[bottom]
            if isinstance(layer, SoftmaxLossLayer):
                return value.flatten(1)
            if isinstance(layer, InnerProductLayer):
                value = value.flatten(1)
            value = self.model[name](value)
            if activation is not None:
                value = activation(value)
            blobs[top] = value
        raise ConfigError(
            f"the PyTorch peer needs a SoftmaxLossLayer at the end{NO_PEER_HINT}"
        )

    def loss(self, x, y):
        """Return the objective of one batch, as the mochac net computes it."""
        return self.torch.nn.functional.cross_entropy(self.outputs(x), y)

    def train_step(self, loss_function):
        self.optimizer.zero_grad(set_to_none=ZERO_GRAD_SET_TO_NONE)
        loss = loss_function(self.x, self.y)
        loss.backward()
        self.optimizer.step()
        return loss
