"""Coffee breaks: work the solver does every few iterations or epochs.

TrainingSummary logs the objective, Snapshot saves the state, and
ValidationPerformance runs one epoch of a validation net.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from mochac.durable_files import special_file_kind
from mochac.errors import ConfigError
from mochac.runtime.net import statistic_key
from mochac.runtime.net_checks import check_net
from mochac.runtime.snapshot import snapshot_path

logger = logging.getLogger(__name__)


class CoffeeBreak:
    """Base class; ``enjoy`` runs at each scheduled break."""

    def enjoy(self, solver, net):
        raise NotImplementedError

    def identity(self) -> str:
        """Return a string that distinguishes this break from other breaks of
        its class with the same interval, or "" when none does.

        Snapshots store it with the breaks still due, so that a resume runs
        the right ones.
        """
        return ""


class TrainingSummary(CoffeeBreak):
    """Log the training objective and other solver statistics.

    ``TrainingSummary()`` logs iteration and obj_val; pass names to pick:
    ``TrainingSummary("iter", "obj_val", "learning_rate", "momentum")``, or
    as the keyword of Mocha's documentation,
    ``TrainingSummary(statistic_names=["iter", "obj_val"])``.
    Every named statistic but "iter" is also recorded in the coffee lounge.
    """

    KNOWN = ("iter", "obj_val", "learning_rate", "momentum")

    def __init__(self, *names, statistic_names=None):
        if statistic_names is not None:
            if names:
                raise ConfigError(
                    "TrainingSummary: statistic names given both as arguments and "
                    "as statistic_names; pass them one way"
                )
            if isinstance(statistic_names, str):
                raise ConfigError(
                    f"TrainingSummary: invalid statistic_names={statistic_names!r}; "
                    "expected a list of names such as ['iter', 'obj_val']"
                )
            names = tuple(statistic_names)
        names = names or ("iter", "obj_val")
        for name in names:
            if name not in self.KNOWN:
                raise ConfigError(
                    f"TrainingSummary: unknown statistic {name!r}; expected some of "
                    f"{', '.join(self.KNOWN)}"
                )
        self.statistic_names = names

    def identity(self) -> str:
        return ",".join(self.statistic_names)

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
        if not isinstance(folder, (str, os.PathLike)):
            raise ConfigError(
                f"Snapshot: invalid folder={folder!r}; expected the path of the "
                "folder to save snapshots into (a str or Path), such as "
                "Snapshot('snapshots')"
            )
        self.folder = Path(folder)
        check_snapshot_folder(self.folder)

    def identity(self) -> str:
        # The folder's name only, so that a run moved elsewhere still matches.
        return self.folder.name

    def enjoy(self, solver, net):
        solver.save_snapshot(snapshot_path(self.folder, solver.state.iter))


def check_snapshot_folder(folder: Path) -> None:
    """Raise ConfigError when ``folder`` exists and is not a folder, so that
    a Snapshot break could write no snapshot into it."""
    if not os.path.lexists(folder) or folder.is_dir():
        return
    if not folder.exists():
        kind = "a symbolic link to a missing path"
    else:
        kind = special_file_kind(folder) or "a file"
    raise ConfigError(
        f"Snapshot folder {folder} is {kind}, not a folder; pass a folder path, "
        "such as Snapshot('snapshots'), which solve() creates if missing"
    )


class ValidationPerformance(CoffeeBreak):
    """Run exactly one epoch of ``test_net`` and report its statistics.

    The test net's data layers start from their first sample at each break,
    and accuracies count each sample once even when the last batch wraps
    around. Accuracy and loss layers report statistics (Net.statistics).
    Results are logged and recorded in the lounge; callables in
    ``listeners`` receive (solver, statistics) afterwards.

    A net with a loss layer is built in the "train" phase unless it is
    built with ``phase="test"``. When such a net also has a layer that acts only in training
    (dropout, a random mask, a random crop), validating with it raises
    ConfigError, because validation would see dropped activations.
    """

    def __init__(self, test_net):
        check_net(test_net, "ValidationPerformance", "to validate")
        check_test_phase(test_net)
        if not any(
            info.layer.has_stats or info.layer.has_loss for info in test_net.ir.layers
        ):
            logger.warning(
                "ValidationPerformance: net '%s' has no accuracy or loss layer, so "
                "its validations report nothing; add an AccuracyLayer",
                test_net.name,
            )
        self.test_net = test_net
        # The statistics evaluate() reports, known before any validation runs.
        reporting = [
            info.name
            for info in test_net.ir.layers
            if info.layer.has_stats or info.layer.has_loss
        ]
        self.statistic_names = [
            *(statistic_key(test_net.ir.layer(name)) for name in reporting),
            *(f"{name}-count" for name in reporting),
        ]
        self.listeners = []
        self.last = {}
        self.checked_sharing = False

    def identity(self) -> str:
        return self.test_net.name

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
        if not self.checked_sharing:
            warn_unshared(self.test_net, net)
            self.checked_sharing = True
        stats = self.evaluate()
        iteration = solver.state.iter
        logger.info("")
        logger.info("## Performance on Validation Set after %d iterations", iteration)
        logger.info("---------------------------------------------------------")
        for info in self.test_net.ir.layers:
            layer = info.layer
            if not (layer.has_stats or layer.has_loss):
                continue
            key = statistic_key(info)
            value = stats[key]
            count = int(stats[f"{info.name}-count"])
            if layer.has_stats:
                logger.info("  Accuracy (avg over %d) = %.4f%%", count, 100 * value)
            else:
                kind = key.removeprefix(f"{info.name}-").replace("-", " ")
                logger.info(
                    "  %s '%s' (avg over %d) = %.6f",
                    kind.capitalize(),
                    info.name,
                    count,
                    value,
                )
            solver.lounge.update(iteration, key, value)
        logger.info("---------------------------------------------------------")
        logger.info("")
        self.last = stats
        for listener in self.listeners:
            listener(solver, stats)


def check_test_phase(net):
    """Raise ConfigError when ``net`` would validate with training-only behaviour."""
    if net.phase != "train":
        return
    acting = [info for info in net.ir.layers if info.layer.depends_on_phase()]
    if not acting:
        return
    losses = [info.name for info in net.ir.layers if info.layer.has_loss]
    reason = f"it has loss layer '{losses[0]}'" if losses else "it was built that way"
    names = ", ".join(f"{type(info.layer).__name__} '{info.name}'" for info in acting)
    raise ConfigError(
        f"ValidationPerformance: net '{net.name}' is in the \"train\" phase "
        f"({reason}), so {names} would act as in training during validation; "
        f"build it with phase=\"test\", e.g. Net('{net.name}', backend, layers, "
        'phase="test")'
    )


def warn_unshared(test_net, net):
    """Log a warning when ``test_net`` shares no parameter array with ``net``.

    Nets share parameters when they are built on one backend from the same
    layer objects (or param_keys). A validation net on another backend
    tests its own initial parameters forever.
    """
    trained = {id(array) for params in net.params.values() for array in params.values()}
    tested = [array for params in test_net.params.values() for array in params.values()]
    if tested and not any(id(array) in trained for array in tested):
        logger.warning(
            "ValidationPerformance: net '%s' shares no parameter with net '%s', so "
            "validation tests parameters that training never changes; build both "
            "nets on one backend from the same layer objects",
            test_net.name,
            net.name,
        )
