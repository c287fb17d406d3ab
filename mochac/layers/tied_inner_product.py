"""TiedInnerProductLayer: a decoder y = W^T x + b with an encoder's weight W."""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

from mochac.constraints import Constraint, NoCons
from mochac.initializers import ConstantInitializer, Initializer
from mochac.layers._checks import check_bool, check_instance, check_number
from mochac.layers.base import Layer, ParamSpec
from mochac.neurons import Identity, Neuron
from mochac.regularizers import NoRegu, Regularizer

TIED_WEIGHT = "weight"


@dataclass(frozen=True, kw_only=True, eq=False)
class TiedInnerProductLayer(Layer):
    """Dense layer that uses the transpose of an InnerProductLayer's weight.

    With the encoder's weight W of shape (output_dim, features), each
    sample's x (output_dim values) becomes y = W^T x + b (features values),
    as in tied auto-encoders.

    Fields (Mocha's defaults):
        tied_param_key: the param_key (or, when that is empty, the name) of
            the InnerProductLayer whose weight this layer uses (required). That
            layer must come before this one in the net, or belong to a net
            built earlier on the same backend.
        param_key: key for sharing this layer's own parameter (the bias); ""
            uses the layer name.
        neuron: activation, default Neurons.Identity().
        bias_init: default ConstantInitializer(0); bias_regu: default NoRegu();
            bias_cons: norm constraint, default NoCons(); bias_lr: default 2.
        learn_weights: a mochac extension, default False. With False, as in
            Mocha, backward computes the bias gradient and the bottom diffs
            but no weight gradient, so only the encoder's gradient updates
            the shared weight. True also computes this layer's weight
            gradient, and the solver adds it to the encoder's before the
            single update of the shared array. Their sum is the gradient of
            the objective with respect to the shared weight.

    Parameters: ``weight`` is the encoder's array itself, not a copy, and
    ``bias`` of shape (features,) is this layer's own. Freezing this layer
    freezes its bias, and with learn_weights=True the shared weight too.
    Freezing the encoder freezes the weight in both cases.
    """

    param_key: str = ""
    tied_param_key: str = ""
    neuron: Neuron = field(default_factory=Identity)
    bias_init: Initializer = field(default_factory=ConstantInitializer)
    bias_regu: Regularizer = field(default_factory=NoRegu)
    bias_cons: Constraint = field(default_factory=NoCons)
    bias_lr: float = 2.0
    learn_weights: bool = False

    has_param = True
    has_neuron = True
    can_do_bp = True
    # infer_shapes and param_specs read the shapes of parameters set up
    # before this layer, to find the tied weight.
    reads_param_shapes = True

    def backward_reads_top_data(self):
        # The neuron's derivative is computed from the output.
        return not self.neuron.is_identity

    def validate(self):
        if not isinstance(self.tied_param_key, str) or not self.tied_param_key:
            self._fail(
                "tied_param_key",
                self.tied_param_key,
                "the param_key (or name) of an InnerProductLayer",
            )
        if not isinstance(self.param_key, str):
            self._fail("param_key", self.param_key, "a string")
        check_instance(self, "bias_init", Initializer, "an initializer")
        check_instance(self, "bias_regu", Regularizer, "a regularizer")
        check_number(self, "bias_lr", minimum=0)
        check_instance(
            self, "bias_cons", Constraint, "a norm constraint such as L2Cons(1.0)"
        )
        check_instance(self, "neuron", Neuron, "a neuron such as Neurons.ReLU()")
        check_bool(self, "learn_weights")

    def tied_shape(self, param_shapes) -> tuple[int, int]:
        """Return the (output_dim, features) shape of the encoder's weight."""
        shape = param_shapes.get((self.tied_param_key, TIED_WEIGHT))
        if shape is None:
            raise self.shape_error(
                f"no layer with param_key '{self.tied_param_key}' and a 'weight' "
                "parameter comes before this layer or was built on this backend; "
                "add the InnerProductLayer whose weight this layer uses first"
            )
        return shape

    def infer_shapes(self, bottom_shapes, param_shapes):
        output_dim, features = self.tied_shape(param_shapes)
        tops = []
        for bottom, shape in zip(self.bottoms, bottom_shapes):
            if prod(shape[1:]) != output_dim:
                raise self.shape_error(
                    f"bottom '{bottom}' has {prod(shape[1:])} features per sample, "
                    f"but the weight under '{self.tied_param_key}' has shape "
                    f"{(output_dim, features)}, so it needs {output_dim}"
                )
            tops.append((shape[0], features))
        return tops

    def param_specs(self, bottom_shapes, param_shapes):
        shape = self.tied_shape(param_shapes)
        return [
            # The owner's initializer, regularizer and lr apply to the shared
            # weight. This spec's NoRegu and lr 1 apply only when the owner
            # is in another net and learn_weights is True.
            ParamSpec(
                TIED_WEIGHT,
                shape,
                None,
                NoRegu(),
                1.0,
                key=self.tied_param_key,
                learned=self.learn_weights,
            ),
            ParamSpec(
                "bias",
                (shape[1],),
                self.bias_init,
                self.bias_regu,
                self.bias_lr,
                self.bias_cons,
            ),
        ]
