"""Mocha's free functions, so that training scripts read like Mocha's tutorials.

Each one calls the method of the same name on its first argument.
"""

from __future__ import annotations

import logging

from mochac.runtime.freeze import freeze, freeze_all, unfreeze
from mochac.runtime.snapshot import load_snapshot


def init(backend):
    """Prepare ``backend`` (Mocha's ``init(backend)``)."""
    backend.init()


def shutdown(backend):
    """Release ``backend``'s shared parameters."""
    backend.shutdown()


def destroy(net):
    """Drop ``net``'s buffers; kept for Mocha's ``destroy(net)``."""
    net.destroy()


def forward(net):
    """Run one forward pass of ``net``; return its objective."""
    return net.forward()


def backward(net):
    """Back-propagate through ``net`` from its last forward pass."""
    net.backward()


def add_coffee_break(solver, coffee_break, every_n_iter=None, every_n_epoch=None):
    """Schedule ``coffee_break`` on ``solver``."""
    solver.add_coffee_break(
        coffee_break, every_n_iter=every_n_iter, every_n_epoch=every_n_epoch
    )


def setup_coffee_lounge(solver, save_into=None, every_n_iter=1, file_exists="merge"):
    """Save ``solver``'s statistics to ``save_into`` every ``every_n_iter`` iterations."""
    solver.setup_coffee_lounge(save_into, every_n_iter, file_exists)


def solve(solver, net):
    """Train ``net`` with ``solver``; return the final solver state."""
    return solver.solve(net)


def setup(policy, validation, solver):
    """Register ``policy`` (LRPolicy.DecayOnValidation) as a listener of ``validation``.

    ``validation`` is the solver's ValidationPerformance coffee break.
    """
    policy.setup(validation, solver)


def log_to_console(level=logging.INFO):
    """Show mochac's log (training summaries, validation) on stderr.

    The library itself never configures logging; this is the one call a
    training script makes to see Mocha-style progress lines.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s:%(levelname)s:%(name)s:%(message)s", "%d-%b %H:%M:%S"
        )
    )
    root = logging.getLogger("mochac")
    root.addHandler(handler)
    root.setLevel(level)
    return handler


__all__ = [
    "add_coffee_break",
    "backward",
    "destroy",
    "forward",
    "freeze",
    "freeze_all",
    "init",
    "load_snapshot",
    "log_to_console",
    "setup",
    "setup_coffee_lounge",
    "shutdown",
    "solve",
    "unfreeze",
]
