"""Mocha's free functions, so that training scripts read like Mocha's tutorials.

Most of them call the method of the same name on their first argument.
DefaultBackend, net2dot, log_to_console, freeze, freeze_all, unfreeze,
forward_epoch, show_statistics, dump_statistics and load_snapshot are not such
wrappers, and their docstrings describe them.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import MutableMapping

from mochac.errors import ConfigError
from mochac.report import ir_to_dot
from mochac.runtime.backend import CPUBackend
from mochac.runtime.freeze import freeze, freeze_all, unfreeze
from mochac.runtime.net import statistic_key
from mochac.runtime.net_checks import check_net
from mochac.runtime.snapshot import load_snapshot
from mochac.values import as_int


def DefaultBackend(dtype=None, seed=None):
    """Return a GPUBackend when MOCHA_USE_CUDA is set to true, else a CPUBackend.

    Mocha's scripts write ``backend = DefaultBackend()`` and switch to the GPU
    with the same environment variable ("true" or "1"). ``dtype`` defaults
    to float32.
    """
    kwargs = {"seed": seed}
    if dtype is not None:
        kwargs["dtype"] = dtype
    flag = os.environ.get("MOCHA_USE_CUDA", "").strip().lower()
    if flag in ("true", "1"):
        from mochac.runtime.gpu_backend import GPUBackend

        return GPUBackend(**kwargs)
    if flag not in ("", "false", "0"):
        raise ConfigError(
            f"DefaultBackend: invalid MOCHA_USE_CUDA={flag!r}; expected true, 1, "
            "false, 0 or unset"
        )
    return CPUBackend(**kwargs)


def registry_reset(backend):
    """Forget ``backend``'s shared parameters, so the next net initializes its own."""
    backend.registry_reset()


def net2dot(out, net):
    """Write ``net``'s layers and blobs, as built, to ``out`` in GraphViz's dot format.

    ``out`` is a writable text file or a path. ``dot -Tpng net.dot -o
    net.png`` draws it.
    """
    # A GPUNet keeps only the optimized IR, where eliminated layers are dashed.
    cluster = getattr(net, "dot_before", None) or ir_to_dot(net.ir, "net", net.name)
    lines = ["digraph net {", *cluster, "}", ""]
    text = "\n".join(lines)
    if hasattr(out, "write"):
        out.write(text)
        return
    # open() takes an int as a file descriptor and closes it afterwards, so
    # net2dot(1, net) would close stdout.
    if not isinstance(out, (str, os.PathLike)):
        raise ConfigError(
            f"net2dot: invalid out={out!r}; expected a path or a writable text "
            "file, called as net2dot(out, net)"
        )
    with open(out, "w", encoding="utf-8") as handle:
        handle.write(text)


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


def get_layer(net, name):
    """Return the layer of ``net`` named ``name``.

    Mocha returns the layer's state; mochac returns the layer itself. A
    MemoryDataLayer's ``data`` arrays are those the net reads at each
    forward pass, so ``get_layer(net, "data").data[0][...] = images``
    changes the next batch, as in Mocha's prediction tutorial. A GPU net
    reads the next batch during a training step, so code that keeps the
    layer and writes into it after a step calls ``net.drop_read_ahead()``.
    """
    return net.get_layer(name)


def reset_statistics(net):
    """Zero ``net``'s accuracy counters and loss sums."""
    net.reset_statistics()


def forward_epoch(net):
    """Run forward passes of ``net`` until one of its data layers ends an epoch.

    As in Mocha, the passes start where the data layers are, without
    rewinding them, and add to the statistics. Call reset_statistics first
    to measure the epoch alone, or use ``ValidationPerformance(net).evaluate()``,
    which rewinds and resets. Returns the objective of the last pass.
    """
    sources = list(net.sources.values())
    if not sources:
        raise ConfigError(
            f"forward_epoch: net '{net.name}' has no data layer, so it has no "
            "epoch to run; call forward(net) instead"
        )
    start = [source.epoch for source in sources]
    objective = net.forward()
    while all(source.epoch == epoch for source, epoch in zip(sources, start)):
        objective = net.forward()
    return objective


def show_statistics(net, title="Network Statistics", file=None):
    """Print ``net``'s statistics since the last reset; return them.

    Prints one line per accuracy or loss layer, with its sample count, to
    ``file`` (stdout by default). The dict is that of ``net.statistics()``.
    """
    if file is not None and not hasattr(file, "write"):
        raise ConfigError(
            f"show_statistics: invalid file={file!r}; expected a writable text "
            "file such as sys.stderr, or None for stdout"
        )
    stats = net.statistics()
    rule = "-" * 57
    lines = [f"## {title}", rule]
    for info in net.ir.layers:
        if not (info.layer.has_stats or info.layer.has_loss):
            continue
        key = statistic_key(info)
        count = stats[f"{info.name}-count"]
        if info.layer.has_stats:
            lines.append(f"  {key} (avg over {count}) = {100 * stats[key]:.4f}%")
        else:
            lines.append(f"  {key} (avg over {count}) = {stats[key]:.6f}")
    lines.append(rule)
    print("\n".join(lines), file=file)
    return stats


def dump_statistics(storage, net, show=False, iteration=None):
    """Record ``net``'s statistics since the last reset in ``storage``; return them.

    ``storage`` is a solver (its coffee lounge, at its current iteration), a
    CoffeeLounge (at ``iteration``, which is then required) or a dict, which
    receives each statistic's value under its name. The names are those
    ValidationPerformance records: one per accuracy or loss layer, without
    the sample counts. ``show=True`` also prints them as show_statistics does.
    """
    from mochac.runtime.coffee_lounge import CoffeeLounge
    from mochac.runtime.solver import Solver

    check_net(net, "dump_statistics", "to read statistics from")
    if iteration is not None and (as_int(iteration) is None or iteration < 0):
        raise ConfigError(
            f"dump_statistics: invalid iteration={iteration!r}; expected an int "
            ">= 0, or None for a solver's current iteration"
        )
    if isinstance(storage, Solver):
        if iteration is None:
            iteration = storage.state.iter
        storage = storage.lounge
    if isinstance(storage, CoffeeLounge):
        if iteration is None:
            raise ConfigError(
                "dump_statistics: missing iteration for a CoffeeLounge, which "
                "records each value at an iteration; pass iteration=N or the solver"
            )
        record = functools.partial(storage.update, iteration)
    elif isinstance(storage, MutableMapping):
        record = storage.__setitem__
    else:
        raise ConfigError(
            f"dump_statistics: invalid storage type {type(storage).__name__}; "
            "pass a solver, its coffee lounge or a dict"
        )
    stats = net.statistics()
    for info in net.ir.layers:
        if info.layer.has_stats or info.layer.has_loss:
            key = statistic_key(info)
            record(key, stats[key])
    if show:
        show_statistics(net)
    return stats


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
    Raises ConfigError for a policy that does not follow validations.
    """
    if not callable(getattr(policy, "setup", None)):
        raise ConfigError(
            f"setup: invalid policy {policy!r}; only LRPolicy.DecayOnValidation "
            "follows a validation, so pass one of those"
        )
    policy.setup(validation, solver)


class ConsoleHandler(logging.StreamHandler):
    """A stream handler that clears tqdm's progress bars while it writes.

    The solver draws its bar on stderr without ending the line, so a record
    written as it is would continue the bar's line, and the bar would redraw
    behind it.
    """

    def emit(self, record):
        from tqdm import tqdm

        with tqdm.external_write_mode(file=self.stream):
            super().emit(record)


def log_to_console(level=logging.INFO):
    """Show mochac's log (training summaries, validation) on stderr.

    The library itself never configures logging; this is the one call a
    training script makes to see Mocha-style progress lines.
    """
    root = logging.getLogger("mochac")
    # A second call replaces the first one's handler instead of printing
    # every line twice.
    for old in list(root.handlers):
        if getattr(old, "mochac_console", False):
            root.removeHandler(old)
    handler = ConsoleHandler()
    handler.mochac_console = True
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s:%(levelname)s:%(name)s:%(message)s", "%d-%b %H:%M:%S"
        )
    )
    root.addHandler(handler)
    root.setLevel(level)
    return handler


__all__ = [
    "DefaultBackend",
    "add_coffee_break",
    "backward",
    "destroy",
    "forward",
    "forward_epoch",
    "freeze",
    "freeze_all",
    "get_layer",
    "init",
    "load_snapshot",
    "log_to_console",
    "net2dot",
    "registry_reset",
    "reset_statistics",
    "setup",
    "setup_coffee_lounge",
    "show_statistics",
    "shutdown",
    "solve",
    "unfreeze",
]
