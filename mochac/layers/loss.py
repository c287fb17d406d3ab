"""Loss layers: SoftmaxLossLayer and SquareLossLayer.

A loss layer has no tops. Its value, times its ``weight``, joins the net's
objective, and back-propagation starts from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from mochac.layers._checks import check_number
from mochac.layers.base import Layer, channel_axis


def split_class_axis(layer, pred_shape, label_shape, dim):
    """Return (outer, classes, inner) of a prediction; check the label against it.

    The label must hold one class index per (outer, inner) position: the same
    batch size and outer * inner elements in all.
    """
    axis = channel_axis(layer, dim, len(pred_shape))
    outer = prod(pred_shape[:axis])
    inner = prod(pred_shape[axis + 1 :])
    if label_shape[0] != pred_shape[0] or prod(label_shape) != outer * inner:
        raise layer.shape_error(
            f"label '{layer.bottoms[1]}' has shape {label_shape} but prediction "
            f"'{layer.bottoms[0]}' of shape {pred_shape} needs one label per sample "
            f"and position ({outer * inner} in all, e.g. shape "
            f"{pred_shape[:axis] + (1,) + pred_shape[axis + 1 :]})"
        )
    return outer, pred_shape[axis], inner


@dataclass(frozen=True, kw_only=True, eq=False)
class SoftmaxLossLayer(Layer):
    """Softmax followed by the multinomial logistic loss, averaged over samples.

    Bottoms: [prediction, label]. The label holds class indices 0..C-1 stored
    as floats; any other value raises DataError naming layer, blob and sample.

    Fields:
        dim: Mocha's class dimension; -2 (default) is the channel axis.
        weight: factor of this loss in the objective, default 1.

    The loss is -log(softmax(x)[label]) averaged over the batch and spatial
    positions; its gradient is weight * (softmax(x) - onehot(label)) / count.
    """

    dim: int = -2
    weight: float = 1.0

    n_bottoms = (2, 2)
    n_tops = (0, 0)
    tops_match_bottoms = False
    has_loss = True
    can_do_bp = True
    is_sink = True

    def backward_reads_top_data(self):
        return False

    def validate(self):
        if not isinstance(self.dim, int) or isinstance(self.dim, bool):
            self._fail("dim", self.dim, "an int")
        check_number(self, "weight", minimum=0)

    def infer_shapes(self, bottom_shapes):
        split_class_axis(self, bottom_shapes[0], bottom_shapes[1], self.dim)
        return []

    def bottom_takes_grad(self, index):
        return index == 0


@dataclass(frozen=True, kw_only=True, eq=False)
class SquareLossLayer(Layer):
    """Half the squared distance between prediction and label, over the batch size.

    Bottoms: [prediction, label]; both need the same batch size and number of
    elements per sample, though their shapes may differ. Loss is
    weight * sum((pred - label)^2) / (2 N).

    Fields:
        weight: factor of this loss in the objective, default 1.
    """

    weight: float = 1.0

    n_bottoms = (2, 2)
    n_tops = (0, 0)
    tops_match_bottoms = False
    has_loss = True
    can_do_bp = True
    is_sink = True

    def backward_reads_top_data(self):
        return False

    def validate(self):
        check_number(self, "weight", minimum=0)

    def infer_shapes(self, bottom_shapes):
        pred, label = bottom_shapes
        if pred[0] != label[0] or prod(pred) != prod(label):
            raise self.shape_error(
                f"prediction '{self.bottoms[0]}' has shape {pred} and label "
                f"'{self.bottoms[1]}' has shape {label}; they need the same batch "
                "size and the same number of elements per sample"
            )
        return []
