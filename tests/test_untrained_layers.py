"""Layers whose parameters no gradient reaches: a warning when the net is
built, and net.grads explains the missing entry."""

import logging

import numpy as np
import pytest

from mochac import (
    ArgmaxLayer,
    ConvolutionLayer,
    CPUBackend,
    CropLayer,
    InnerProductLayer,
    MemoryDataLayer,
    Net,
    SoftmaxLossLayer,
    SquareLossLayer,
    TiedInnerProductLayer,
)


def images():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 1, 6, 6))
    y = rng.integers(0, 2, (4, 1)).astype(float)
    return MemoryDataLayer(name="d", batch_size=2, data=[x, y])


def build(name, layers):
    return Net(name, CPUBackend(dtype=np.float64, seed=1), layers)


def test_layer_below_crop_warns(caplog):
    layers = [
        images(),
        ConvolutionLayer(
            name="conv", n_filter=2, kernel=(3, 3), bottoms=["data"], tops=["c"]
        ),
        CropLayer(name="crop", crop_size=(2, 2), bottoms=["c"], tops=["cc"]),
        InnerProductLayer(name="ip", output_dim=2, bottoms=["cc"], tops=["ip"]),
        SoftmaxLossLayer(name="loss", bottoms=["ip", "label"]),
    ]
    with caplog.at_level(logging.WARNING, logger="mochac"):
        net = build("crop-mid", layers)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "parameters of layer 'conv'" in warnings[0]
    assert "'crop' (CropLayer)" in warnings[0]
    with pytest.raises(KeyError, match="layer 'conv' has no gradients.*'crop'"):
        net.grads["conv"]
    assert "ip" in net.grads


def test_layer_below_argmax_and_crop_names_both(caplog):
    """Two branches from one inner product, each stopped by another layer."""
    layers = [
        images(),
        InnerProductLayer(name="ip1", output_dim=4, bottoms=["data"], tops=["h"]),
        ArgmaxLayer(name="argmax", bottoms=["h"], tops=["class"]),
        InnerProductLayer(name="ip2", output_dim=2, bottoms=["class"], tops=["a"]),
        SoftmaxLossLayer(name="loss", bottoms=["a", "label"]),
    ]
    with caplog.at_level(logging.WARNING, logger="mochac"):
        build("argmax-mid", layers)
    assert "'argmax' (ArgmaxLayer)" in caplog.text
    assert "layer 'ip1'" in caplog.text
    assert "layer 'ip2'" not in caplog.text


def test_label_branch_warns_with_loss(caplog):
    """An inner product that only feeds a loss's label gets no gradient."""
    rng = np.random.default_rng(1)
    x, t = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    layers = [
        MemoryDataLayer(name="d", batch_size=2, data=[x, t], tops=["data", "t"]),
        InnerProductLayer(name="ip", output_dim=2, bottoms=["data"], tops=["out"]),
        InnerProductLayer(name="target", output_dim=1, bottoms=["t"], tops=["lab"]),
        SoftmaxLossLayer(name="loss", bottoms=["out", "lab"]),
    ]
    with caplog.at_level(logging.WARNING, logger="mochac"):
        build("label-branch", layers)
    assert "layer 'target'" in caplog.text
    assert "'loss' (SoftmaxLossLayer)" in caplog.text


def test_shared_parameters_trained_elsewhere_do_not_warn(caplog):
    """The second user of ip's parameters sits below a crop, but the first
    trains them, so nothing is left untrained."""
    layers = [
        images(),
        CropLayer(name="crop", crop_size=(2, 2), bottoms=["data"], tops=["cd"]),
        InnerProductLayer(name="ip", output_dim=4, bottoms=["cd"], tops=["h"]),
        InnerProductLayer(
            name="ip-copy", param_key="ip", output_dim=4, bottoms=["cd"], tops=["g"]
        ),
        ArgmaxLayer(name="argmax", bottoms=["g"], tops=["class"]),
        SoftmaxLossLayer(name="loss", bottoms=["h", "label"]),
    ]
    with caplog.at_level(logging.WARNING, logger="mochac"):
        build("shared", layers)
    assert "no gradient reaches" not in caplog.text


def test_tied_decoder_below_argmax_warns(caplog):
    """The encoder trains the weight that the decoder reads, but only the
    decoder learns its bias, and no gradient reaches it."""
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((4, 3)), rng.standard_normal((4, 1))
    layers = [
        MemoryDataLayer(name="d", batch_size=2, data=[x, y], tops=["data", "y"]),
        InnerProductLayer(name="encoder", output_dim=3, bottoms=["data"], tops=["h"]),
        SquareLossLayer(name="loss", bottoms=["h", "data"]),
        TiedInnerProductLayer(
            name="decoder", tied_param_key="encoder", bottoms=["h"], tops=["recon"]
        ),
        ArgmaxLayer(name="argmax", bottoms=["recon"], tops=["class"]),
        SquareLossLayer(name="class-loss", bottoms=["class", "y"]),
    ]
    with caplog.at_level(logging.WARNING, logger="mochac"):
        net = build("tied-argmax", layers)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "parameters of layer 'decoder'" in warnings[0]
    assert "'argmax' (ArgmaxLayer)" in warnings[0]
    assert "encoder" in net.grads


def test_test_net_does_not_warn(caplog):
    layers = [
        images(),
        ConvolutionLayer(
            name="conv", n_filter=2, kernel=(3, 3), bottoms=["data"], tops=["c"]
        ),
        CropLayer(name="crop", crop_size=(2, 2), bottoms=["c"], tops=["cc"]),
    ]
    with caplog.at_level(logging.WARNING, logger="mochac"):
        net = build("features", layers)
    assert "no gradient reaches" not in caplog.text
    # The net runs no backward pass at all, and the message names that cause.
    with pytest.raises(KeyError, match="has no loss layer, so it runs no backward"):
        net.grads["conv"]


def test_missing_entries_listed():
    layers = [
        images(),
        InnerProductLayer(name="ip", output_dim=2, bottoms=["data"], tops=["ip"]),
        SoftmaxLossLayer(name="loss", bottoms=["ip", "label"]),
    ]
    net = build("plain", layers)
    with pytest.raises(KeyError, match="net.params has no entry 'ipp'.*'ip'"):
        net.params["ipp"]
    with pytest.raises(KeyError, match=r"net.params\['ip'\] has no entry 'weights'"):
        net.params["ip"]["weights"]
    assert net.params.get("ipp") is None
    assert "ipp" not in net.grads
