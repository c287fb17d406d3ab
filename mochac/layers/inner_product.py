"""InnerProductLayer: a dense linear map y = W x + b per sample."""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

from mochac.constraints import Constraint, NoCons
from mochac.initializers import ConstantInitializer, Initializer, XavierInitializer
from mochac.layers._checks import check_instance, check_int, check_param_fields
from mochac.layers.base import Layer, ParamSpec
from mochac.neurons import Identity, Neuron
from mochac.regularizers import L2Regu, NoRegu, Regularizer


@dataclass(frozen=True, kw_only=True, eq=False)
class InnerProductLayer(Layer):
    """Dense layer: each sample's features, flattened, times the weights plus bias.

    Fields (Mocha's defaults):
        param_key: key for sharing parameters; "" uses the layer name.
        output_dim: number of outputs (required).
        neuron: activation, default Neurons.Identity().
        weight_init: default XavierInitializer(); bias_init: default
            ConstantInitializer(0).
        weight_regu: default L2Regu(1); bias_regu: default NoRegu().
        weight_cons: norm constraint, default NoCons(); bias_cons: default
            NoCons().
        weight_lr: default 1; bias_lr: default 2.

    Parameters: ``weight`` of shape (output_dim, features) and ``bias`` of shape
    (output_dim,). Bottoms may differ in batch size but not in features per
    sample; each top is (N, output_dim).
    """

    param_key: str = ""
    output_dim: int = 0
    neuron: Neuron = field(default_factory=Identity)
    weight_init: Initializer = field(default_factory=XavierInitializer)
    bias_init: Initializer = field(default_factory=ConstantInitializer)
    weight_regu: Regularizer = field(default_factory=lambda: L2Regu(1.0))
    bias_regu: Regularizer = field(default_factory=NoRegu)
    weight_cons: Constraint = field(default_factory=NoCons)
    bias_cons: Constraint = field(default_factory=NoCons)
    weight_lr: float = 1.0
    bias_lr: float = 2.0

    has_param = True
    has_neuron = True
    can_do_bp = True

    def backward_reads_top_data(self):
        # The neuron's derivative is computed from the output.
        return not self.neuron.is_identity

    def validate(self):
        check_int(self, "output_dim")
        check_param_fields(self, "weight")
        for name in ("weight_cons", "bias_cons"):
            check_instance(
                self, name, Constraint, "a norm constraint such as L2Cons(1.0)"
            )

    def infer_shapes(self, bottom_shapes):
        features = [prod(shape[1:]) for shape in bottom_shapes]
        for index, count in enumerate(features):
            if count != features[0]:
                raise self.shape_error(
                    f"bottom '{self.bottoms[index]}' has {count} features per sample "
                    f"but '{self.bottoms[0]}' has {features[0]}; all bottoms need the "
                    "same number"
                )
        return [(shape[0], self.output_dim) for shape in bottom_shapes]

    def param_specs(self, bottom_shapes):
        features = prod(bottom_shapes[0][1:])
        return [
            ParamSpec(
                "weight",
                (self.output_dim, features),
                self.weight_init,
                self.weight_regu,
                self.weight_lr,
                self.weight_cons,
            ),
            ParamSpec(
                "bias",
                (self.output_dim,),
                self.bias_init,
                self.bias_regu,
                self.bias_lr,
                self.bias_cons,
            ),
        ]
