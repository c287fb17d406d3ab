"""Lowering of the loss layers and the statistics layers.

Each function returns the plain values its template prints. Every loss
writes two float64 state values: its weighted value over the whole batch,
and the part of that value that comes from the first n_valid samples (the
rest wrapped around to the start of the data in a validation epoch's last
batch). Every statistics layer adds (right, count) to a state slot. Layers that check a bottom's values at run time
also return which bottom, how many elements make one sample and what is
valid, so that Net can name them in its DataError.
"""

from __future__ import annotations

from math import prod

import numpy as np

from mochac.codegen.lowering import (
    accumulates,
    blob_slots,
    class_split,
    label_context,
    register_lowering,
    valid_unit,
)
from mochac.layers.elementwise_loss import (
    BinaryCrossEntropyLossLayer,
    GaussianKLLossLayer,
    HingeLossLayer,
)
from mochac.layers.loss import (
    LOG_THRESHOLD,
    MultinomialLogisticLossLayer,
    SoftlabelSoftmaxLossLayer,
    SoftmaxLossLayer,
    SquareLossLayer,
    class_weight_table,
)
from mochac.layers.statistics import AccuracyLayer, BinaryAccuracyLayer


def class_weight_values(info):
    """Return the class weights as the smallest table that still contains them.

    The table is indexed by class ("class"), by element within a sample
    ("point", when every sample has the same weights) or by element
    ("element"); None when the layer has no weights.
    """
    # NOTE: the table is printed into the generated C, so weights given per
    # element of a large prediction make the source and compile time grow.
    pred_shape = info.bottom_shapes[0]
    table = class_weight_table(info.layer, pred_shape)
    if table is None:
        return None
    outer, classes, inner = class_split(info.layer, pred_shape)
    by_class = table.reshape(outer, classes, inner)
    if np.all(by_class == by_class[:1, :, :1]):
        values, index = by_class[0, :, 0], "class"
    elif np.all(table == table[:1]):
        values, index = table[0].reshape(-1), "point"
    else:
        values, index = table.reshape(-1), "element"
    return {
        "values": [repr(float(value)) for value in values],
        "index": index,
        "point": prod(pred_shape[1:]),
    }


def loss_state(info, slots):
    """Add the loss's state slot: (batch value, value of the valid samples)."""
    return slots.add("state", info.name, "loss", np.float64, (2,)).index


def class_loss_context(info, ir, slots):
    return dict(
        state=loss_state(info, slots),
        weight=float(info.layer.weight),
        log_threshold=repr(LOG_THRESHOLD),
        class_weights=class_weight_values(info),
        **label_context(info, ir, slots),
    )


@register_lowering(SoftmaxLossLayer, "softmax_loss")
def lower_softmax_loss(info, ir, slots):
    return class_loss_context(info, ir, slots)


@register_lowering(MultinomialLogisticLossLayer, "multinomial_logistic_loss")
def lower_multinomial_logistic_loss(info, ir, slots):
    context = class_loss_context(info, ir, slots)
    # The kernel reports a label at its position and the probability the
    # label picks at that position plus the number of positions.
    positions = context["outer"] * context["inner"]
    context["checked_bottoms"] = [
        {"start": 0, "position": 1},
        {
            "start": positions,
            "position": 0,
            "role": "prediction",
            "rule": "probabilities in [0, 1]",
            "hint": (
                "; give this layer a SoftmaxLayer's output, or give the scores to a "
                "SoftmaxLossLayer instead"
            ),
        },
    ]
    return context


@register_lowering(SoftlabelSoftmaxLossLayer, "softlabel_softmax_loss")
def lower_softlabel_softmax_loss(info, ir, slots):
    layer = info.layer
    outer, classes, inner = class_split(layer, info.bottom_shapes[0])
    x, dx = blob_slots(slots, layer.bottoms[0])
    return {
        "state": loss_state(info, slots),
        "weight": float(layer.weight),
        "outer": outer,
        "C": classes,
        "inner": inner,
        "x": x,
        "dx": dx if info.propagate_down[0] else None,
        "acc": accumulates(info, 0),
        "label": slots.get("data", layer.bottoms[1]).index,
        "per_sample": prod(info.bottom_shapes[1][1:]),
        "valid_unit": valid_unit(ir, info.bottom_shapes[0][0], outer * inner),
        "layer_index": info.index,
        "valid_values": "probabilities in [0, 1]",
    }


def elementwise_context(info, ir, slots):
    """Slots and sizes of a layer whose two bottoms pair up element by element."""
    layer = info.layer
    first, dfirst = blob_slots(slots, layer.bottoms[0])
    second, dsecond = blob_slots(slots, layer.bottoms[1])
    size = prod(info.bottom_shapes[0])
    return {
        "N": info.bottom_shapes[0][0],
        "size": size,
        "valid_unit": valid_unit(ir, info.bottom_shapes[0][0], size),
        "per_sample": prod(info.bottom_shapes[1][1:]),
        "layer_index": info.index,
        "first": first,
        "second": second,
        "dfirst": dfirst if info.propagate_down[0] else None,
        "dsecond": dsecond if info.propagate_down[1] else None,
        "acc_first": accumulates(info, 0),
        "acc_second": accumulates(info, 1),
    }


@register_lowering(SquareLossLayer, "square_loss")
def lower_square_loss(info, ir, slots):
    context = elementwise_context(info, ir, slots)
    return {
        "state": loss_state(info, slots),
        "weight": float(info.layer.weight),
        "N": context["N"],
        "size": context["size"],
        "valid_unit": context["valid_unit"],
        "pred": context["first"],
        "label": context["second"],
        "dpred": context["dfirst"],
        "dlabel": context["dsecond"],
        "acc_pred": context["acc_first"],
        "acc_label": context["acc_second"],
    }


@register_lowering(HingeLossLayer, "hinge_loss")
def lower_hinge_loss(info, ir, slots):
    return dict(
        state=loss_state(info, slots),
        weight=float(info.layer.weight),
        valid_values="-1 or 1",
        **elementwise_context(info, ir, slots),
    )


@register_lowering(BinaryCrossEntropyLossLayer, "binary_cross_entropy_loss")
def lower_binary_cross_entropy_loss(info, ir, slots):
    context = elementwise_context(info, ir, slots)
    # The kernel reports a prediction at its index and a label at its index
    # plus the size of the predictions.
    context["checked_bottoms"] = [
        {
            "start": 0,
            "position": 0,
            "per_sample": prod(info.bottom_shapes[0][1:]),
            "role": "prediction",
            "hint": "; a Sigmoid neuron on the layer that computes them keeps them there",
        },
        {"start": context["size"], "position": 1},
    ]
    return dict(
        state=loss_state(info, slots),
        weight=float(info.layer.weight),
        log_threshold=repr(LOG_THRESHOLD),
        valid_values="in [0, 1]",
        **context,
    )


@register_lowering(GaussianKLLossLayer, "gaussian_kl_loss")
def lower_gaussian_kl_loss(info, ir, slots):
    return dict(
        state=loss_state(info, slots),
        weight=float(info.layer.weight),
        checked_role="standard deviation",
        valid_values="> 0",
        **elementwise_context(info, ir, slots),
    )


@register_lowering(AccuracyLayer, "accuracy")
def lower_accuracy(info, ir, slots):
    state = slots.add("state", info.name, "accuracy", np.float64, (2,))
    return dict(state=state.index, **label_context(info, ir, slots))


@register_lowering(BinaryAccuracyLayer, "binary_accuracy")
def lower_binary_accuracy(info, ir, slots):
    state = slots.add("state", info.name, "accuracy", np.float64, (2,))
    return dict(
        state=state.index,
        threshold=repr(float(info.layer.threshold)),
        valid_values="-1, 0 or 1 (0/1 or -1/+1 labels)",
        **elementwise_context(info, ir, slots),
    )
