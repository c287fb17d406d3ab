"""The interface every solver method follows, and the gradient sum they share."""

from __future__ import annotations

import numpy as np

from mochac.errors import ConfigError, SnapshotError
from mochac.runtime import native_update
from mochac.runtime.freeze import trainable_groups
from mochac.runtime.lr_policy import LRPolicy
from mochac.values import as_real


class SolverMethod:
    """Base class of the solver methods (SGD, Nesterov, Adam).

    A method keeps its per-parameter state in named buffers, each a dict from
    (layer, param) to an array shaped like the parameter. ``buffers`` is what
    snapshots save under /solver/<buffer name>/<layer>___<param>.
    """

    name = ""
    # Names of the buffers, in the order they are created.
    buffer_names: tuple[str, ...] = ()
    # make_solver_parameters keys that only this method accepts, besides the
    # keys every method accepts.
    parameter_names: tuple[str, ...] = ()
    # Whether update() needs the iteration count (Adam's bias correction).
    requires_iteration = False

    def __init__(self):
        self.buffers: dict[str, dict[tuple[str, str], np.ndarray]] = {
            name: {} for name in self.buffer_names
        }

    def reset_buffers(self) -> None:
        """Drop the state buffers, so the next update starts from zeros."""
        self.buffers = {name: {} for name in self.buffer_names}

    def default_parameters(self) -> dict:
        return {"lr_policy": LRPolicy.Fixed(0.01)}

    def check_parameters(self, params: dict) -> None:
        """Raise ConfigError for an invalid method-specific parameter."""

    def configure(self, params: dict) -> None:
        """Read the method-specific solver parameters before training."""

    def buffer(self, name: str, key: tuple[str, str], param: np.ndarray):
        """Return the buffer ``name`` of parameter ``key``, created as zeros.

        Raises SnapshotError when a loaded buffer does not match the
        parameter's shape and dtype: the compiled update reads and writes
        ``param.size`` elements of the parameter's type through its pointer.
        """
        store = self.buffers[name]
        array = store.get(key)
        if array is None:
            array = store[key] = np.zeros_like(param)
        elif array.shape != param.shape or array.dtype != param.dtype:
            layer, param_name = key
            raise SnapshotError(
                f"{self.name}: solver buffer '{name}' of layer '{layer}', parameter "
                f"'{param_name}' has shape {array.shape} and dtype {array.dtype}, but "
                f"the parameter has shape {param.shape} and dtype {param.dtype}: the "
                "buffers belong to another net, loaded from its snapshot or left by "
                "updating it with this method object; resume from a snapshot of this "
                "net, or use a new method object for each net"
            )
        return array

    def load_buffers(self, buffers: dict, backend) -> None:
        """Replace the state buffers with ``buffers`` read from a snapshot, as
        arrays of ``backend`` (on the device for a GPU backend)."""
        for name in self.buffer_names:
            self.buffers[name] = {
                key: backend.to_device(value)
                for key, value in buffers.get(name, {}).items()
            }

    def update(self, net, learning_rate, momentum, regu_coef, iteration=None):
        """Update every trainable parameter of ``net`` in place from its gradient.

        Runs in the net's compiled code when the method and every regularizer
        have a native form (mochac.runtime.native_update), otherwise in
        NumPy; both give the same values. ``iteration`` is the number of
        updates done before this one.
        """
        if not native_update.update(
            net, self, learning_rate, momentum, regu_coef, iteration
        ):
            self.numpy_update(net, learning_rate, momentum, regu_coef, iteration)

    def numpy_update(self, net, learning_rate, momentum, regu_coef, iteration=None):
        """Update the parameters in NumPy, the reference for the compiled update."""
        raise NotImplementedError


def check_fraction(method: str, key: str, value) -> None:
    """Raise ConfigError unless ``value`` is a number in [0, 1)."""
    real = as_real(value)
    if real is None or not 0 <= real < 1:
        raise ConfigError(
            f"make_solver_parameters({method}): invalid {key}={value!r}; expected a "
            "number in [0, 1)"
        )


def summed_gradients(net):
    """Yield (layer info, spec, parameter, gradient) once per trainable array.

    Layers that share one array (TiedInnerProductLayer uses its encoder's
    weight) each write a gradient of their own. The first user's gradient
    array receives the sum of all of them, so the array is updated once.
    The owner comes first when it is in the net, so its regularizer, lr and
    solver buffers apply. Arrays of frozen layers are left out.
    """
    for members in trainable_groups(net):
        info, spec, param, grad = members[0]
        for *_, other in members[1:]:
            grad += other
        yield info, spec, param, grad
