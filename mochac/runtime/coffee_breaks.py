"""Coffee breaks: work the solver does every few iterations or epochs.

TrainingSummary logs the objective, Snapshot saves the state, and
ValidationPerformance runs one epoch of a validation net.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mochac.errors import ConfigError
from mochac.runtime.snapshot import save_snapshot, snapshot_path

logger = logging.getLogger(__name__)


class CoffeeBreak:
    """Base class; ``enjoy`` runs at each scheduled break."""

    def enjoy(self, solver, net):
        raise NotImplementedError


class TrainingSummary(CoffeeBreak):
    """Log the training objective and other solver statistics.

    ``TrainingSummary()`` logs iteration and obj_val; pass names to pick:
    ``TrainingSummary("iter", "obj_val", "learning_rate", "momentum")``.
    Every named statistic is also recorded in the coffee lounge.
    """

    KNOWN = ("iter", "obj_val", "learning_rate", "momentum")

    def __init__(self, *statistic_names):
        names = statistic_names or ("iter", "obj_val")
        for name in names:
            if name not in self.KNOWN:
                raise ConfigError(
                    f"TrainingSummary: unknown statistic {name!r}; expected some of "
                    f"{', '.join(self.KNOWN)}"
                )
        self.statistic_names = names

    def enjoy(self, solver, net):
        state = solver.state
        parts = []
        for name in self.statistic_names:
            if name == "iter":
                continue
            value = getattr(state, name)
            solver.lounge.update(state.iter, name, value)
            parts.append(f"{name.replace('_', '-')} = {value:.8f}")
        prefix = f"{state.iter:06d} :: " if "iter" in self.statistic_names else ""
        logger.info("%sTRAIN %s", prefix, ", ".join(parts))


class Snapshot(CoffeeBreak):
    """Save parameters and solver state to ``<folder>/snapshot-<iter>.h5``."""

    def __init__(self, folder):
        self.folder = Path(folder)

    def enjoy(self, solver, net):
        path = snapshot_path(self.folder, solver.state.iter)
        save_snapshot(path, net, solver.state, buffers=solver.method.buffers)


class ValidationPerformance(CoffeeBreak):
    """Run exactly one epoch of ``test_net`` and report its statistics.

    The test net's data layers start from their first sample at each break,
    and the statistics count each sample once even when the last batch wraps
    around. Results are logged and recorded in the lounge; callables in
    ``listeners`` receive (solver, statistics) afterwards.
    """

    def __init__(self, test_net):
        self.test_net = test_net
        self.listeners = []
        self.last = {}

    def evaluate(self) -> dict[str, float]:
        net = self.test_net
        if not net.sources:
            raise ConfigError(
                f"ValidationPerformance: net '{net.name}' has no data layer, so it has "
                "no epoch to run"
            )
        for source in net.sources.values():
            source.rewind()
        net.reset_statistics()
        while not any(source.epoch for source in net.sources.values()):
            net.forward()
        return net.statistics()

    def enjoy(self, solver, net):
        stats = self.evaluate()
        iteration = solver.state.iter
        logger.info("")
        logger.info("## Performance on Validation Set after %d iterations", iteration)
        logger.info("---------------------------------------------------------")
        for name, value in stats.items():
            if name.endswith("-count"):
                continue
            count = int(stats[name.removesuffix("-accuracy") + "-count"])
            logger.info("  Accuracy (avg over %d) = %.4f%%", count, 100 * value)
            solver.lounge.update(iteration, name, value)
        logger.info("---------------------------------------------------------")
        logger.info("")
        self.last = stats
        for listener in self.listeners:
            listener(solver, stats)
