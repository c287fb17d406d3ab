"""Layer lists to JSON and back, for compiled modules.

Every config object (layer, neuron, initializer, regularizer, pooling
function) is a dataclass, stored as {"class": name, "fields": {...}}.
MemoryDataLayer's ``data`` arrays are stored by shape and dtype only and
come back as zero arrays for the caller to fill; any other array (a mean
image, say) is stored with its values.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil

import numpy as np

from mochac import initializers, layers, neurons, regularizers
from mochac.errors import ConfigError


@functools.cache
def _known_classes() -> dict[str, type]:
    """Return mochac's config dataclasses by name: every layer module's, and the
    neurons, initializers, regularizers and constraints."""
    modules = [neurons, initializers, regularizers]
    for name in ("mochac.constraints", "mochac.transformers"):
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            pass
    for info in pkgutil.iter_modules(layers.__path__):
        modules.append(importlib.import_module(f"{layers.__name__}.{info.name}"))
    classes = {}
    for module in modules:
        for value in vars(module).values():
            if isinstance(value, type) and dataclasses.is_dataclass(value):
                classes[value.__name__] = value
    return classes


def to_json(value, shape_only=False):
    """Return a JSON-ready form of a config value.

    With ``shape_only``, arrays keep their shape and dtype but not their values.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = type(value).__name__
        if _known_classes().get(name) is not type(value):
            raise ConfigError(
                f"cannot store {name} in a compiled module: only mochac's own layers, "
                "neurons, initializers and regularizers can be stored"
            )
        fields = {
            field.name: to_json(
                getattr(value, field.name),
                shape_only=field.name == "data" and name == "MemoryDataLayer",
            )
            for field in dataclasses.fields(value)
        }
        return {"class": name, "fields": fields}
    if isinstance(value, np.ndarray):
        spec = {"shape": list(value.shape), "dtype": value.dtype.str}
        if not shape_only:
            spec["values"] = value.ravel().tolist()
        return {"array": spec}
    if isinstance(value, (list, tuple)):
        return [to_json(item, shape_only) for item in value]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, type) and issubclass(value, np.generic):
        # A NumPy scalar type such as RandomNormalLayer's eltype.
        return {"dtype": np.dtype(value).str}
    return value


def from_json(value):
    """Rebuild a config value stored by ``to_json``."""
    if isinstance(value, dict) and "class" in value:
        cls = _known_classes()[value["class"]]
        fields = {name: from_json(item) for name, item in value["fields"].items()}
        return cls(**fields)
    if isinstance(value, dict) and "array" in value:
        spec = value["array"]
        dtype = np.dtype(spec["dtype"])
        if "values" in spec:
            return np.array(spec["values"], dtype=dtype).reshape(spec["shape"])
        return np.zeros(spec["shape"], dtype=dtype)
    if isinstance(value, dict) and "dtype" in value:
        return np.dtype(value["dtype"]).type
    if isinstance(value, list):
        return tuple(from_json(item) for item in value)
    return value
