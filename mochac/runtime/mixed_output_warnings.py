"""Warnings that solve() logs before training when its files or statistics
would mix with those of another run, or with each other."""

from __future__ import annotations

import logging

from mochac.runtime.coffee_breaks import Snapshot, ValidationPerformance
from mochac.runtime.snapshot import snapshot_iterations

# The solver's messages keep the solver module's logger name, so that a
# level or filter set on it also covers these warnings.
logger = logging.getLogger("mochac.runtime.solver")


def warn_of_later_files(solver) -> None:
    """Warn when this run would mix its files with those of another run,
    or with its own files from before a rollback."""
    _warn_of_later_snapshots(solver)
    _warn_of_merged_statistics(solver)


def _warn_of_later_snapshots(solver) -> None:
    """Warn for each Snapshot folder that contains snapshots past this
    run's first iteration."""
    start = solver.start_iter
    resumed = solver._resumed_from
    # Keyed by resolved path, so that one folder named two ways warns once.
    folders = {
        coffee_break.folder.resolve(): coffee_break.folder
        for coffee_break, *_ in solver.breaks
        if isinstance(coffee_break, Snapshot)
    }
    for folder in sorted(folders.values()):
        later = [i for i, _ in snapshot_iterations(folder) if i > start]
        if not later:
            continue

        if resumed is not None and resumed.parent.resolve() == folder.resolve():
            logger.warning(
                "Snapshot folder %s contains snapshots up to iteration %d, "
                "past iteration %d of %s, which this run resumed from. This "
                "run overwrites those of the iterations it reaches, and a "
                "resume from the folder takes the newest file, which may be "
                "from before this rollback. Snapshot into an empty folder to "
                "keep the two apart",
                folder,
                max(later),
                start,
                resumed.name,
            )
        else:
            logger.warning(
                "Snapshot folder %s contains snapshots up to iteration %d, "
                "past this run's start at iteration %d, so another run wrote "
                "them. This run overwrites those of the iterations it "
                "reaches, and a resume from the folder takes the newest "
                "file, which may be the other run's. Resume with "
                "load_from=%r, or snapshot into an empty folder",
                folder,
                max(later),
                start,
                str(folder),
            )


def _warn_of_merged_statistics(solver) -> None:
    """Warn when a run that resumed no snapshot merges into a statistics
    file with values past iteration 0."""
    lounge = solver.lounge
    if solver._resumed_from is not None or solver.start_iter != 0:
        return
    if lounge.save_into is None:
        return
    reported = [i for series in lounge.statistics.values() for i in series]
    if max(reported, default=0):
        logger.warning(
            "the statistics file %s contains values up to iteration %d from "
            "another run, and this run starts from scratch, so under "
            "file_exists='merge' the two runs' curves mix. Pass "
            "file_exists='overwrite' to setup_coffee_lounge for a new run, or "
            "resume the other run with load_from",
            lounge.save_into,
            max(reported),
        )


def warn_of_shared_statistics(solver) -> None:
    """Warn when ValidationPerformance breaks of different test nets
    report a statistic of the same name, whose values would then share one
    series of the coffee lounge."""
    reporters: dict[str, str] = {}
    for coffee_break, *_ in solver.breaks:
        if not isinstance(coffee_break, ValidationPerformance):
            continue
        name = coffee_break.test_net.name
        for key in coffee_break.statistic_names:
            other = reporters.setdefault(key, name)
            if other != name:
                logger.warning(
                    "the validation nets '%s' and '%s' both report '%s', so "
                    "the coffee lounge keeps one series for both. Give their "
                    "accuracy and loss layers different names",
                    other,
                    name,
                    key,
                )
                reporters[key] = name
