"""Statistics layers: AccuracyLayer and BinaryAccuracyLayer."""

from __future__ import annotations

from dataclasses import dataclass

from mochac.layers._checks import check_int, check_number
from mochac.layers.base import Layer
from mochac.layers.loss import check_same_size, split_class_axis


@dataclass(frozen=True, kw_only=True, eq=False)
class AccuracyLayer(Layer):
    """Classification accuracy, accumulated over batches until reset.

    Bottoms: [prediction, label]. A sample counts as right when the largest
    prediction along ``dim`` (first one on ties) is at the label's index. Only
    the valid samples of a batch count, so that one validation epoch averages
    over exactly the data set's samples. Its statistic is "<name>-accuracy".

    Fields:
        dim: Mocha's class dimension; -2 (default) is the channel axis.
    """

    dim: int = -2

    n_bottoms = (2, 2)
    n_tops = (0, 0)
    tops_match_bottoms = False
    has_stats = True
    statistic_name = "accuracy"
    is_sink = True

    def validate(self):
        check_int(self, "dim", minimum=None)

    def infer_shapes(self, bottom_shapes):
        split_class_axis(self, bottom_shapes[0], bottom_shapes[1], self.dim)
        return []


@dataclass(frozen=True, kw_only=True, eq=False)
class BinaryAccuracyLayer(Layer):
    """Binary classification accuracy, accumulated over batches until reset.

    Bottoms: [prediction, label] with the same batch size and number of
    elements per sample. Labels are 0/1 or -1/+1; any other value raises
    DataError naming layer, blob and sample. An element counts as right when
    ``prediction > threshold`` agrees with ``label == 1``. Only the elements
    of the first n_valid samples of a batch count, as for AccuracyLayer. Its
    statistic is "<name>-accuracy".

    Fields:
        threshold: the prediction is positive above it, default 0, for
            scores such as a hinge loss trains; use 0.5 for probabilities.
            Mocha's documentation does not list this field, but Mocha.jl's
            source has it with default 0.
    """

    # NOTE: Mocha compares the label with the threshold too. Comparing it
    # with 1 gives the same result for every threshold in [0, 1), and stays
    # right outside it, where Mocha would call every 0/1 label negative.
    threshold: float = 0.0

    n_bottoms = (2, 2)
    n_tops = (0, 0)
    tops_match_bottoms = False
    has_stats = True
    statistic_name = "accuracy"
    is_sink = True

    def validate(self):
        check_number(self, "threshold")

    def infer_shapes(self, bottom_shapes):
        check_same_size(self, *bottom_shapes, "prediction", "label")
        return []
