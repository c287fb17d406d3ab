"""Argument checks shared by the functions that take a net."""

from __future__ import annotations

import inspect

from mochac.errors import ConfigError, name_not_found


def describe(value) -> str:
    """Return how messages name ``value``: the repr of a function or bound
    method shows its address, so those are named by their qualified name."""
    if inspect.isfunction(value):
        return f"function {value.__qualname__}"
    if inspect.ismethod(value):
        return f"method {value.__qualname__}"
    return repr(value)


def check_net(value, caller: str, purpose: str = "") -> None:
    """Raise ConfigError unless ``value`` is a net (a Net or a GPUNet).

    ``purpose`` follows "expected a Net" in the message, as in "to train".
    A package that `mochac compile` wrote gets advice to pass its ``net``.
    """
    if hasattr(value, "ir") and hasattr(value, "forward_backward"):
        return
    if inspect.ismodule(value) and hasattr(value, "net"):
        advice = f"pass the package's net, {value.__name__}.net"
    else:
        advice = (
            "build one with Net(name, backend, layers), or import one "
            "from a package that `mochac compile` wrote"
        )
    expected = f"a Net {purpose}" if purpose else "a Net"
    raise ConfigError(f"{caller}: expected {expected}, got {describe(value)}; {advice}")


def check_step_method(method, caller: str) -> None:
    """Raise ConfigError unless ``method`` is a solver method object such as SGD()."""
    # Imported here because the solver methods import modules that import Net.
    from mochac.runtime.solver_parameters import check_method

    check_method(method, caller)


def check_kept_blobs(net) -> None:
    """Raise NotFoundError when ``net.keep`` names a blob that ``net.ir`` lacks."""
    unknown = sorted(net.keep - set(net.ir.blobs))
    if unknown:
        raise name_not_found(
            f"net '{net.name}': keep= names unknown blob(s) "
            f"{', '.join(map(repr, unknown))}",
            unknown,
            net.ir.blobs,
            "its blobs",
            "keep only the tops of the net's layers",
        )
